# Runs ON MicroPython: heap allocated while chunking frames of different sizes with the node's
# Sender. Prints "<frame bytes> <chunks> <bytes allocated>" per size, then "done".
import gc

from espcam import frames


class Sink:
    # Publishing costs nothing here, so what we measure is the chunking itself.
    def topic(self, leaf):
        return "espcam/t/" + leaf

    def publish_raw(self, topic, msg, qos):
        pass


sender = frames.Sender(4096)
link = Sink()
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
