# Runs ON MicroPython (bench item 1): frames through the node's real publish path (Sender +
# Link + its MQTT client) to a loopback MQTT sink, against the limit: one raw socket.write of
# the same bytes to a second sink, plus reading a 4-byte answer (the size of a PUBACK). The
# "before" rows are the path of 2026-11-24: umqtt.simple 1.3.4 (.deps/node-lib) on a second
# connection to the same sink.
#   micropython bench/mpy/publish.py <mqtt port> <raw port> <reps> <size> [<size> ...]
# Prints one line per measurement: "<what> <size> <median us> <min us> <alloc bytes>",
# then "done".
import gc
import socket
import struct
import sys
import time

from espcam import frames, mqtt, protocol
from espcam.link import Link
from umqtt.simple import MQTTClient

CHUNK = 4096
NODE = "bench-node"
IPPROTO_TCP = 6   # the unix port has no constants for these; the ESP32 port has
TCP_NODELAY = 1   # socket.IPPROTO_TCP and socket.TCP_NODELAY (lwIP)


def connect_raw(port):
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.settimeout(10)
    s.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    return s


class NullLink:
    # The Sender's own work per chunk (header packing): sending costs nothing.
    def publish_from(self, buf, off, end, data, doff, dlen, qos):
        pass


class Tape:
    # A socket that keeps what is written to it, and where each write starts and ends.
    def __init__(self):
        self.stream = bytearray()
        self.writes = []

    def write(self, buf, off, n):
        self.writes.append((len(self.stream), n))
        self.stream.extend(memoryview(buf)[off:off + n])
        return n


class Recorder(mqtt.MQTT):
    # The node's MQTT client writing to a Tape, PUBACKs taken as read: the bytes the node writes
    # for a frame, so that the limit writes exactly the same bytes. Outside the timed region.
    def __init__(self):
        mqtt.MQTT.__init__(self, "recorder", "127.0.0.1")
        self.sock = Tape()

    def _wait(self, want, pid, what):
        pass


def before_send(client, topic, frame, buf, mv):
    # The node's publish path before the fixes of docs/benchmarks.md (as of 2026-11-24): each
    # chunk copied behind its header into one buffer, then umqtt.simple's own publish, which
    # makes 4 writes per QoS 0 chunk and 5 for the QoS 1 one (the loop of that Sender, kept
    # here as the "before" rows).
    total = len(frame.mv)
    cs = CHUNK
    count = protocol.chunk_count(total, cs)
    last = count - 1
    for i in range(count):
        off = protocol.HEADER_LEN
        mlen = 0
        f = 0
        if i == 0 and frame.meta:
            mlen = len(frame.meta)
            buf[off:off + mlen] = frame.meta
            off += mlen
            f = protocol.FLAG_META
        start = i * cs
        size = min(cs, total - start)
        protocol.pack_header(buf, 0, f, frame.id, total, frame.crc, cs, i, count, mlen)
        mv[off:off + size] = frame.mv[start:start + size]
        client.publish(topic, mv[:off + size], False, 1 if i == last else 0)


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def timed(fn):
    # (microseconds, bytes allocated) of one run with the GC off.
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    t = time.ticks_us()
    fn()
    dt = time.ticks_diff(time.ticks_us(), t)
    alloc = gc.mem_alloc() - a
    gc.enable()
    return dt, alloc


def run_size(size, reps, link, old, raw, meta):
    buf = bytearray(size)
    for i in range(0, size, 251):
        buf[i] = i & 0xFF
    t = time.ticks_us()
    frame = frames.Frame(1, buf, meta)
    crc_us = time.ticks_diff(time.ticks_us(), t)
    sender = frames.Sender(CHUNK, link.topic("frame"))
    null = NullLink()
    rec = Recorder()
    sender.send(rec, frame)
    stream = rec.sock.stream
    smv = memoryview(stream)
    writes = rec.sock.writes
    lenb = struct.pack(">I", len(stream))
    old_buf = bytearray(protocol.HEADER_LEN + frames.META_MAX + CHUNK)
    old_mv = memoryview(old_buf)
    answer = bytearray(4)
    topic = link.topic("frame")

    def do_raw():
        raw.write(smv)
        raw.readinto(answer)

    def do_writes():
        for off, n in writes:
            raw.write(stream, off, n)
        raw.readinto(answer)

    def do_node():
        sender.send(link.mq, frame)

    def do_null():
        sender.send(null, frame)

    def do_before():
        before_send(old, topic, frame, old_buf, old_mv)

    def to_raw():
        raw.write(lenb)   # tells the raw sink how much to drain; outside the timed region

    def nagle(sock, on):
        def f():
            sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 0 if on else 1)
        return f

    # (name, prepare, function). Interleaved, so that the limit and the node's path see the
    # same machine state. The node's own socket has TCP_NODELAY (mqtt.py); the "before" rows
    # set umqtt's socket as that node had it.
    variants = (("raw", to_raw, do_raw),
                ("node", nagle(link.mq.sock, False), do_node),
                ("writes", to_raw, do_writes),
                ("chunking", None, do_null),
                ("before_nodelay", nagle(old.sock, False), do_before),
                ("before", nagle(old.sock, True), do_before))
    n = max(5, reps * 61440 // size // 4) if size > 61440 else reps
    res = {}
    allocs = {}
    for _ in range(n):
        for name, prep, fn in variants:
            if prep is not None:
                prep()
            dt, al = timed(fn)
            res.setdefault(name, []).append(dt)
            allocs.setdefault(name, []).append(al)
    nagle(link.mq.sock, False)()
    for name, _, _ in variants:
        print(name, size, median(res[name]), min(res[name]), max(allocs[name]))
    print("crc", size, crc_us, crc_us, 0)
    print("bytes", size, len(stream), len(writes), 0)


def main():
    mport, rport, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4:]]
    cfg = {"broker": {"host": "127.0.0.1", "port": mport}, "node_id": NODE,
           "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
    link = Link(cfg, lambda t, m: None)
    link.connect()
    old = MQTTClient(NODE + "-before", "127.0.0.1", mport)
    old.connect()
    raw = connect_raw(rport)
    meta = frames.meta_json(1763980000.25, 1234, "interval", "VGA", 80, "timer", None)[0]
    for size in sizes:
        run_size(size, reps, link, old, raw, meta)
        gc.collect()
    link.close(goodbye=True)
    old.disconnect()
    raw.close()
    print("done")


main()
