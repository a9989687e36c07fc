# Runs ON MicroPython: heap allocated while chunking frames of different sizes with the node's
# Sender. Prints "<frame bytes> <chunks> <bytes allocated>" per size, then "done".
import gc

from espcam import frames
from mqttsink import PacketLink

sender = frames.Sender(4096, "espcam/t/frame")
link = PacketLink(keep=False)   # publishing costs nothing: we measure the chunking itself
for n in (10240, 61440, 204800):
    frame = frames.Frame(1, bytearray(n), b'{"trigger":"boot"}')
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    chunks = sender.send(link, frame)
    used = gc.mem_alloc() - before
    gc.enable()
    print(n, chunks, used)
    frame = None
print("done")
