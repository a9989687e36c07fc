# Runs ON MicroPython: the chunk count field has 16 bits, so at the smallest chunk size the
# largest frame is 65535 chunks. Prints "sent <chunks>" for the largest frame that fits and
# "refused <reason>" for one byte more, then "done".
from espcam import frames
from mqttsink import MessageSink

sender = frames.Sender(256, "espcam/t/frame")
link = MessageSink(keep=False)
buf = bytearray(65535 * 256 + 1)
mv = memoryview(buf)
print("sent", sender.send(link, frames.Frame(1, mv[:65535 * 256], b"")))
try:
    n = sender.send(link, frames.Frame(2, mv, b""))
    print("sent", n)
except ValueError as e:
    print("refused", e)
print("done")
