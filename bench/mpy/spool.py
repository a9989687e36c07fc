# Runs ON MicroPython (bench item 6): what the spool costs per frame, through the node's real
# Sender, Link and MQTT client to the loopback MQTT sink of bench/sink.py, side by side:
#   smallest    a RAM spool of one frame's budget, the frame confirmed as soon as it is sent:
#               the node as it was before the spool, holding the last frame only
#   ram         a RAM spool holding HELD frames, the oldest confirmed as each new one arrives
#   sd          an SD spool (a folder; on the board the card) holding HELD frames: each new
#               frame written to its file before it is sent, the oldest confirmed (file removed)
#   ram_again   a held frame sent again from the RAM spool
#   sd_again    a held frame sent again from its file, read chunk by chunk
#   micropython bench/mpy/spool.py <mqtt port> <folder> <reps> <size> [<size> ...]
# Prints "<variant> <size> <median us> <min us> <alloc bytes>" per variant and size,
# "heap <variant> <size> <bytes>" (heap the spool holds with HELD frames), then "done".
import gc
import sys
import time

from espcam import frames, sdspool, spool
from espcam.link import Link

CHUNK = 4096
HELD = 8


def quiet(*args):
    pass


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def run_size(size, reps, link, folder, meta):
    sender = frames.Sender(CHUNK, link.topic("frame"))
    # One buffer per frame, made before the timed region: the camera driver's allocation, not
    # the spool's. A RAM spool keeps the frames' buffers; the others let them go.
    pool = []
    for k in range(HELD + 1):
        b = bytearray(size)
        for i in range(0, size, 251):
            b[i] = (i + k) & 0xFF
        pool.append(b)
    small = spool.RamSpool(size, 15, quiet)
    ram = spool.RamSpool(1 << 30, 15, quiet)
    sd = sdspool.SdSpool("%s/%d" % (folder, size), 1 << 30, 15, CHUNK, quiet)
    state = {"fid": 0}

    def frame():
        state["fid"] += 1
        fid = state["fid"]
        return frames.Frame(fid, pool[fid % len(pool)], meta)

    def keep(sp):
        # The oldest frame confirmed once HELD are held: the spool stays at HELD frames.
        if len(sp.ids) > HELD:
            sp.confirm([sp.ids[0]])

    def do_small(f):
        small.add(f)
        sender.send(link.mq, f)
        small.sent(f.id, time.ticks_ms())
        small.confirm([f.id])

    def do_ram(f):
        ram.add(f)
        sender.send(link.mq, f)
        ram.sent(f.id, time.ticks_ms())
        keep(ram)

    def do_sd(f):
        sd.add(f)
        sender.send(link.mq, f)
        sd.sent(f.id, time.ticks_ms())
        keep(sd)

    def do_ram_again(f):
        g = ram.open(ram.ids[0])
        sender.send(link.mq, g, None, None, True)

    def do_sd_again(f):
        g = sd.open(sd.ids[0])
        sender.send(link.mq, g, None, None, True)
        sd.close(g)

    variants = (("smallest", do_small), ("ram", do_ram), ("sd", do_sd),
                ("ram_again", do_ram_again), ("sd_again", do_sd_again))
    # Fill both spools first, outside the timings.
    for _ in range(HELD):
        f = frame()
        do_ram(f)
        do_sd(f)
    times = {}
    allocs = {}
    for _ in range(reps):
        # Interleaved, so that every variant sees the same machine state.
        for name, fn in variants:
            f = frame()
            gc.collect()
            gc.disable()
            a = gc.mem_alloc()
            t = time.ticks_us()
            fn(f)
            dt = time.ticks_diff(time.ticks_us(), t)
            al = gc.mem_alloc() - a
            gc.enable()
            times.setdefault(name, []).append(dt)
            allocs.setdefault(name, []).append(al)
    for name, _ in variants:
        print(name, size, median(times[name]), min(times[name]), max(allocs[name]))
    # The heap each spool holds with HELD frames: the RAM spool its frames' buffers (their
    # frames made by the camera driver, counted here) and index; the SD spool its index and one
    # chunk buffer.
    while ram.ids:
        ram.confirm([ram.ids[0]])
    pool = None
    gc.collect()
    empty = gc.mem_alloc()
    ram2 = spool.RamSpool(1 << 30, 15, quiet)
    for k in range(HELD):
        ram2.add(frames.Frame(10 ** 6 + k, bytearray(size), meta))
    gc.collect()
    print("heap", "ram", size, gc.mem_alloc() - empty)
    ram2 = None
    gc.collect()
    empty = gc.mem_alloc()
    sd2 = sdspool.SdSpool("%s/%d-heap" % (folder, size), 1 << 30, 15, CHUNK, quiet)
    f = frames.Frame(1, bytearray(size), meta)
    for k in range(HELD):
        f.id = 2 * 10 ** 6 + k
        sd2.add(f)
    f = None
    gc.collect()
    print("heap", "sd", size, gc.mem_alloc() - empty)
    print("heap", "smallest", size, 0)


def main():
    mport, folder, reps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4:]]
    cfg = {"broker": {"host": "127.0.0.1", "port": mport}, "node_id": "bench-spool",
           "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
    link = Link(cfg, lambda t, m: None)
    link.connect()
    meta = frames.meta_json(1763980000.25, 1234, "interval", "VGA", 80, "timer", None)[0]
    for size in sizes:
        run_size(size, reps, link, folder, meta)
        gc.collect()
    link.close(goodbye=True)
    print("done")


main()
