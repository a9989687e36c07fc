# Runs ON MicroPython (bench item 1): one frame through the node's real Sender, Link and
# umqtt.simple MQTTClient to a loopback sink, against one raw socket.write of the same bytes.
#   micropython bench/mpy/publish.py <mqtt port> <raw port> <reps> <size> [<size> ...]
# Prints one line per measurement: "<what> <size> <median us> <min us> <alloc bytes>",
# then "done".
import gc
import socket
import struct
import sys
import time

from espcam import frames, protocol
from espcam.link import Link

CHUNK = 4096


IPPROTO_TCP = 6   # the unix port has no constants for these; the ESP32 port has
TCP_NODELAY = 1   # socket.IPPROTO_TCP and socket.TCP_NODELAY (lwIP)


def connect_raw(port):
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.settimeout(10)
    s.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    return s


class NullLink:
    # The chunking alone: publishing costs nothing.
    def topic(self, leaf):
        return "espcam/bench-node/" + leaf

    def publish_raw(self, topic, msg, qos):
        pass


class TwoWriteLink:
    # A candidate fix, measured here only: the MQTT fixed header, topic and packet id of a
    # chunk go out in one write (umqtt.simple makes 4 or 5), then the chunk in a second.
    def __init__(self, link):
        self.link = link
        self.hdr = bytearray(8 + 2 + 64 + 2)
        self.topic_str = self.topic_b = None

    def topic(self, leaf):
        return self.link.topic(leaf)

    def publish_raw(self, topic, msg, qos):
        c = self.link.client
        h = self.hdr
        sz = 2 + len(topic) + len(msg) + (2 if qos else 0)
        h[0] = 0x30 | qos << 1
        i = 1
        while sz > 0x7F:
            h[i] = (sz & 0x7F) | 0x80
            sz >>= 7
            i += 1
        h[i] = sz
        i += 1
        if topic is not self.topic_str:
            self.topic_str, self.topic_b = topic, topic.encode()
        tl = len(self.topic_b)
        h[i] = tl >> 8
        h[i + 1] = tl & 0xFF
        h[i + 2:i + 2 + tl] = self.topic_b
        i += 2 + tl
        if qos:
            c.pid += 1
            pid = c.pid
            h[i] = pid >> 8
            h[i + 1] = pid & 0xFF
            i += 2
        c.sock.write(h, i)
        c.sock.write(msg)
        if qos:
            while True:
                op = c.wait_msg()
                if op == 0x40:
                    c.sock.read(1)
                    r = c.sock.read(2)
                    if (r[0] << 8 | r[1]) == pid:
                        return


class OneWriteSender(frames.Sender):
    # A candidate fix, measured here only: the Sender leaves room in front of its buffer for
    # the MQTT fixed header, topic and packet id, so each chunk is one complete PUBLISH packet
    # written with one sock.write (umqtt.simple makes 4 or 5 writes per publish).
    def __init__(self, chunk_size, link, topic):
        self.link = link
        self.topic_b = topic.encode()
        self.pre = 5 + 2 + len(self.topic_b) + 2
        frames.Sender.__init__(self, chunk_size)
        self.buf = bytearray(self.pre + protocol.HEADER_LEN + frames.META_MAX + chunk_size)
        self.mv = memoryview(self.buf)
        self.body = self.mv[self.pre:]

    def send(self, link, frame, only=None, feed=None):
        total = len(frame.mv)
        cs = self.chunk_size
        count = protocol.chunk_count(total, cs)
        indices = range(count) if only is None else only
        flags = 0 if only is None else protocol.FLAG_RESEND
        buf, mv, body, pre, tb = self.buf, self.mv, self.body, self.pre, self.topic_b
        tl = len(tb)
        c = self.link.client
        last = len(indices) - 1
        for n, i in enumerate(indices):
            f = flags
            off = protocol.HEADER_LEN
            mlen = 0
            if i == 0 and frame.meta:
                mlen = len(frame.meta)
                body[off:off + mlen] = frame.meta
                off += mlen
                f |= protocol.FLAG_META
            start = i * cs
            size = min(cs, total - start)
            protocol.pack_header(body, f, frame.id, total, frame.crc, cs, i, count, mlen)
            body[off:off + size] = frame.mv[start:start + size]
            qos = 1 if n == last else 0
            p = pre
            if qos:
                c.pid += 1
                pid = c.pid
                buf[p - 2] = pid >> 8
                buf[p - 1] = pid & 0xFF
                p -= 2
            buf[p - tl:p] = tb
            p -= tl + 2
            buf[p] = tl >> 8
            buf[p + 1] = tl & 0xFF
            sz = pre + off + size - p
            # remaining length: at most 3 bytes for packets under 2 MB
            if sz < 0x80:
                p -= 1
                buf[p] = sz
            elif sz < 0x4000:
                p -= 2
                buf[p] = (sz & 0x7F) | 0x80
                buf[p + 1] = sz >> 7
            else:
                p -= 3
                buf[p] = (sz & 0x7F) | 0x80
                buf[p + 1] = ((sz >> 7) & 0x7F) | 0x80
                buf[p + 2] = sz >> 14
            p -= 1
            buf[p] = 0x30 | qos << 1
            c.sock.write(mv[p:pre + off + size])
            if qos:
                while True:
                    op = c.wait_msg()
                    if op == 0x40:
                        c.sock.read(1)
                        r = c.sock.read(2)
                        if (r[0] << 8 | r[1]) == pid:
                            break
            if feed is not None:
                feed()
        return len(indices)


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def timed(fn, reps):
    # Returns (median us, min us, bytes allocated by the last run with the GC off).
    ts = []
    alloc = 0
    for _ in range(reps):
        gc.collect()
        gc.disable()
        a = gc.mem_alloc()
        t = time.ticks_us()
        fn()
        dt = time.ticks_diff(time.ticks_us(), t)
        alloc = gc.mem_alloc() - a
        gc.enable()
        ts.append(dt)
    return median(ts), min(ts), alloc


def run_size(size, reps, link, fast, one, raw, sender, null, meta):
    buf = bytearray(size)
    for i in range(0, size, 251):
        buf[i] = i & 0xFF
    t = time.ticks_us()
    frame = frames.Frame(1, buf, meta)
    crc_us = time.ticks_diff(time.ticks_us(), t)
    mv = memoryview(buf)
    lenb = struct.pack(">I", size)

    def do_raw():
        raw.write(mv)
        raw.read(4)

    def do_mqtt():
        sender.send(link, frame)

    def do_fast():
        sender.send(fast, frame)

    def do_one():
        one.send(link, frame)

    def do_null():
        sender.send(null, frame)

    n = max(5, reps * 61440 // size // 4) if size > 61440 else reps
    sock = link.client.sock.sock

    def nagle(on):
        sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 0 if on else 1)

    # (name, function, Nagle on the node's socket). Interleaved, so the limit and the
    # node's path see the same machine state.
    variants = (("raw", do_raw, False), ("mqtt_nagle", do_mqtt, True),
                ("mqtt", do_mqtt, False), ("mqtt2w", do_fast, False),
                ("mqtt1w", do_one, False),
                ("chunking", do_null, False))
    res = {}
    allocs = {}
    for _ in range(n):
        raw.write(lenb)  # tells the sink how much to drain; outside the timed region
        for name, fn, on in variants:
            nagle(on)
            med, mn, al = timed(fn, 1)
            res.setdefault(name, []).append(med)
            allocs[name] = al
    for name, _, _ in variants:
        print(name, size, median(res[name]), min(res[name]), allocs[name])
    print("crc", size, crc_us, crc_us, 0)
    frame = None
    buf = None
    mv = None
    gc.collect()


def main():
    mport, rport, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4:]]
    cfg = {"broker": {"host": "127.0.0.1", "port": mport}, "node_id": "bench-node",
           "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
    link = Link(cfg, lambda t, m: None)
    link.connect()
    fast = TwoWriteLink(link)
    one = OneWriteSender(CHUNK, link, link.topic("frame"))
    raw = connect_raw(rport)
    sender = frames.Sender(CHUNK)
    null = NullLink()
    meta = frames.meta_json(1763980000.25, 1234, "interval", "VGA", 80, "timer", None)
    for size in sizes:
        run_size(size, reps, link, fast, one, raw, sender, null, meta)
        gc.collect()
    link.close(goodbye=True)
    raw.close()
    print("done")


main()
