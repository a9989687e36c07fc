# Runs ON MicroPython (bench item 5): sends <frames> frames of the JPEG at <jpeg path> through
# the node's real Sender, Link and MQTT client to the MQTT sink of bench/sink.py, which counts
# the TCP segments they took. <how>: "node" as shipped, or one of two candidates measured here only:
#   "nagle"  Nagle's algorithm on for the QoS 0 chunks, TCP_NODELAY again for the last chunk
#   "fill"   each chunk's head written together with the first segment's worth of its payload
#   micropython bench/mpy/segments.py <mqtt port> <jpeg path> <chunk size> <frames> <how> <mss>
import sys

from espcam import frames
from espcam.link import Link

IPPROTO_TCP = 6   # the unix port has no constants for these
TCP_NODELAY = 1


class NagleLink:
    # Candidate: with Nagle on, a head waits (while data is in flight) for its payload and
    # leaves in the same segment; TCP_NODELAY before the last chunk, whose PUBACK is awaited,
    # so that its tail is not held back. Two setsockopt calls per frame, no copy.
    def __init__(self, mq):
        self.mq = mq

    def publish_from(self, buf, off, end, data, doff, dlen, qos):
        self.mq.sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1 if qos else 0)
        self.mq.publish_from(buf, off, end, data, doff, dlen, qos)


class FillSock:
    # Candidate: each chunk's head and the first (segment - head) bytes of its payload in one
    # write, the rest straight from the frame buffer: no segment carries only a head. The MQTT
    # client writes a chunk as two writes, head then payload; this socket holds the head back
    # and sends it with the start of the payload. One copy of at most a segment per chunk
    # (made here with slices, which allocate; a node would copy without allocating).
    def __init__(self, sock, seg):
        self.sock = sock
        self.seg = seg
        self.buf = bytearray(seg + 1024)
        self.held = 0

    def write(self, buf, off, n):
        if not self.held:
            self.buf[0:n] = memoryview(buf)[off:off + n]
            self.held = n
            return n
        h = self.held
        self.held = 0
        k = max(0, min(n, self.seg - h))
        self.buf[h:h + k] = memoryview(buf)[off:off + k]
        self._all(self.buf, 0, h + k)
        if n > k:
            self._all(buf, off + k, n - k)
        return n

    def _all(self, buf, off, n):
        while n:
            k = self.sock.write(buf, off, n)
            off += k
            n -= k

    def readinto(self, buf, n):
        return self.sock.readinto(buf, n)


def main():
    port, path, cs, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    how, seg = sys.argv[5], int(sys.argv[6])
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    cfg = {"broker": {"host": "127.0.0.1", "port": port}, "node_id": "cam-a1b2c3",
           "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
    link = Link(cfg, lambda t, m: None)
    link.connect()
    mq = link.mq
    raw = mq.sock
    out = NagleLink(mq) if how == "nagle" else mq
    if how == "fill":
        mq.sock = FillSock(raw, seg)   # the poller still watches the raw socket
    meta = frames.meta_json(1763980000.25, 123456, "interval", "VGA", 80, "timer", None)[0]
    sender = frames.Sender(cs, link.topic("frame"))
    for i in range(n):
        sender.send(out, frames.Frame(42 + i, buf, meta))
    mq.sock = raw
    link.close(goodbye=True)
    print("done")


main()
