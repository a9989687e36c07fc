# Runs ON MicroPython: heap allocated while publishing frames of different sizes through the
# node's real Sender, Link and MQTT client to a real broker (argv: host port). Prints
# "<frame bytes> <chunks> <bytes allocated>" per size, then "done".
import gc
import sys

from espcam import frames
from espcam.link import Link

cfg = {"broker": {"host": sys.argv[1], "port": int(sys.argv[2])}, "node_id": "alloc-check",
       "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
link = Link(cfg, lambda t, m: None)
link.connect()
sender = frames.Sender(4096, link.topic("frame"))
meta = frames.meta_json(1763980000.25, 1234, "interval", "VGA", 80, "timer", None)[0]
fid = 0
for n in (10240, 10240, 204800, 10240, 204800):
    fid += 1
    frame = frames.Frame(fid, bytearray(n), meta)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    chunks = sender.send(link.mq, frame)
    used = gc.mem_alloc() - before
    gc.enable()
    print(n, chunks, used)
    frame = None
link.close(goodbye=True)
print("done")
