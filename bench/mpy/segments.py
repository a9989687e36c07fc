# Runs ON MicroPython (bench item 5): sends <frames> frames of the JPEG at <jpeg path> through
# the node's real Sender and Link to the MQTT sink of bench/sink.py, which counts the TCP
# segments they took. <how>: "node" as shipped, or one of two candidates measured here only:
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
    def __init__(self, link):
        self.link = link
        self.sock = link.client.sock.sock

    def next_pid(self):
        return self.link.next_pid()

    def send_chunk(self, head, hoff, hlen, data, doff, dlen, pid):
        self.sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1 if pid else 0)
        self.link.send_chunk(head, hoff, hlen, data, doff, dlen, pid)


class FillLink:
    # Candidate: the head and the first (segment - head) bytes of the payload in one write,
    # the rest straight from the frame buffer: no segment carries only a head. One copy of at
    # most a segment per chunk (made here with slices, which allocate; a node would keep its
    # head buffers a segment larger and copy without allocating).
    def __init__(self, link, seg):
        self.link = link
        self.seg = seg
        self.buf = bytearray(seg + 1024)

    def next_pid(self):
        return self.link.next_pid()

    def send_chunk(self, head, hoff, hlen, data, doff, dlen, pid):
        k = max(0, min(dlen, self.seg - hlen))
        b = self.buf
        b[0:hlen] = head[hoff:hoff + hlen]
        b[hlen:hlen + k] = data[doff:doff + k]
        s = self.link.client.sock
        self.link.mid = True
        s.write_all(b, 0, hlen + k)
        if dlen > k:
            s.write_all(data, doff + k, dlen - k)
        if pid:
            self.link._puback(pid)
        self.link.mid = False


def main():
    port, path, cs, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    how, seg = sys.argv[5], int(sys.argv[6])
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    cfg = {"broker": {"host": "127.0.0.1", "port": port}, "node_id": "cam-a1b2c3",
           "prefix": "espcam", "socket_timeout": 10, "keepalive": 60}
    link = Link(cfg, lambda t, m: None)
    link.connect()
    out = {"node": link, "nagle": NagleLink(link), "fill": FillLink(link, seg)}[how]
    meta = frames.meta_json(1763980000.25, 123456, "interval", "VGA", 80, "timer", None)
    sender = frames.Sender(cs, link.topic("frame"))
    for i in range(n):
        sender.send(out, frames.Frame(42 + i, buf, meta))
    link.close(goodbye=True)
    print("done")


main()
