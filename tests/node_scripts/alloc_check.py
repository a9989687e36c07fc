# Runs ON MicroPython: heap allocated while publishing frames of different sizes through the
# node's real Sender, Link and MQTT client to a real broker (argv: host port), the spool on, as
# the app does it: a new frame held by a RAM spool and sent, the same frame sent again from the
# RAM spool, and again from an SD spool (a folder "spool" in the cwd), read chunk by chunk.
# Prints "<path> <frame bytes> <chunks> <bytes allocated>" per send, then "done".
import gc
import sys
import time

from espcam import frames, sdspool, spool
from espcam.link import Link

cfg = {"broker": {"host": sys.argv[1], "port": int(sys.argv[2])}, "node_id": "alloc-check",
       "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
link = Link(cfg, lambda t, m: None)
link.connect()
sender = frames.Sender(4096, link.topic("frame"))
ram = spool.RamSpool(1 << 30, 15, print)
sd = sdspool.SdSpool("spool", 1 << 30, 15, 4096, print)
meta = frames.meta_json(1763980000.25, 1234, "interval", "VGA", 80, "timer", None)[0]
fid = 0
for n in (10240, 10240, 204800, 10240, 204800):
    fid += 1
    frame = frames.Frame(fid, bytearray(n), meta)
    ram.add(frame)
    sd.add(frame)

    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    chunks = sender.send(link.mq, frame)
    ram.sent(fid, time.ticks_ms())
    used = gc.mem_alloc() - before
    gc.enable()
    print("new", n, chunks, used)

    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    f = ram.open(fid)
    chunks = sender.send(link.mq, f, None, None, True)
    ram.sent(fid, time.ticks_ms())
    used = gc.mem_alloc() - before
    gc.enable()
    print("ram", n, chunks, used)

    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    f = sd.open(fid)
    chunks = sender.send(link.mq, f, None, None, True)
    sd.close(f)
    sd.sent(fid, time.ticks_ms())
    used = gc.mem_alloc() - before
    gc.enable()
    print("sd", n, chunks, used)

    f = None
    frame = None
    ram.confirm([fid])
    sd.confirm([fid])
link.close(goodbye=True)
print("done")
