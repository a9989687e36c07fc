# Runs ON MicroPython: frame metadata at its limit (frames.META_MAX). Prints, for the longest
# metadata a capture by command can have today (an id of 64 control characters, each escaped
# as \uXXXX), "fits <bytes> <dropped> <id read back>"; for metadata too long with the id,
# "trimmed <bytes> <dropped> <keys>"; for metadata too long without it, "refused <reason>";
# then "done".
import json

from espcam import frames, receiver
from mqttsink import MessageSink

cid = "\x01" * 64
meta, dropped = frames.meta_json(1796393842.096662, 2 ** 30, "interval", "QQVGA", 100, "timer",
                                 cid)
sink = MessageSink()
frames.Sender(4096, "espcam/t/frame").send(sink, frames.Frame(1, bytearray(5000), meta))
back = receiver.unpack_header(sink.msgs[0][0])[8]
print("fits", len(meta), dropped, back["cmd"] == cid)

meta, dropped = frames.meta_json(1796393842.096662, 1234, "command", "VGA", 80, "w" * 400, "c" * 64)
print("trimmed", len(meta), dropped, ",".join(sorted(json.loads(meta))))

try:
    frames.meta_json(1796393842.096662, 1234, "command", "VGA", 80, "w" * 600, "c1")
    print("accepted")
except ValueError as e:
    print("refused", e)
print("done")
