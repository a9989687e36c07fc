"""Loopback TCP sinks for the node publish benchmark (bench item 1), run in their own process.

- MQTT sink: answers CONNECT, SUBSCRIBE, PINGREQ and every QoS 1 PUBLISH (CONNACK, SUBACK,
  PINGRESP, PUBACK) and discards everything else: a broker that costs nothing, so the time
  measured on the node side is the node's own.
- raw sink: reads a 4-byte big-endian length N, drains N bytes, answers 4 bytes (the size of a
  PUBACK), repeatedly: the limit, one socket.write of the frame plus one round trip.

    python -m bench.sink [RATE [MSS]]  prints "<mqtt port> <raw port>" and serves until its
        stdin closes; RATE (bytes/s, 0 = unlimited) throttles reading, a stand-in for a Wi-Fi
        link that is slower than the CPU; MSS clamps the segment size the client may send
        (TCP_MAXSEG), and then each MQTT connection prints, when it ends,
        "segs <data segments received> <bytes received> <largest segment seen>" (TCP_INFO)
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

BUF = 1 << 20
RATE = 0.0  # bytes per second, 0 = as fast as the machine goes
BURST = 1460  # one segment: a fresh connection gets no head start
MSS = 0  # 0: the loopback's own (64 KB)
TCP_INFO = getattr(socket, "TCP_INFO", 11)


class _Throttle:
    def __init__(self) -> None:
        self.next_t = 0.0

    def took(self, n: int) -> None:
        if not RATE:
            return
        now = time.monotonic()
        self.next_t = max(self.next_t, now - BURST / RATE) + n / RATE
        if self.next_t > now:
            time.sleep(self.next_t - now)


def _listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if MSS:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


class _Reader:
    """Buffered reads over a socket with recv_into, so parsing costs little per packet."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = bytearray(BUF)
        self.mv = memoryview(self.buf)
        self.start = self.end = 0
        self.th = _Throttle()

    def fill(self, need: int) -> None:
        while self.end - self.start < need:
            if self.start and self.start == self.end:
                self.start = self.end = 0
            elif self.end > BUF // 2:
                n = self.end - self.start
                self.buf[:n] = self.buf[self.start:self.end]
                self.start, self.end = 0, n
            got = self.conn.recv_into(self.mv[self.end:], BUF - self.end)
            if not got:
                raise EOFError
            self.th.took(got)
            self.end += got

    def take(self, n: int) -> memoryview:
        self.fill(n)
        v = self.mv[self.start:self.start + n]
        self.start += n
        return v

    def skip(self, n: int) -> None:
        while n:
            have = self.end - self.start
            if have == 0:
                self.start = self.end = 0
                got = self.conn.recv_into(self.mv, BUF)
                if not got:
                    raise EOFError
                self.th.took(got)
                self.end = got
                continue
            k = min(n, have)
            self.start += k
            n -= k


def _serve_mqtt(conn: socket.socket) -> None:
    # Parses packets in place in one big buffer: about a microsecond per packet, so the sink
    # keeps ahead of the node and its own cost hardly shows in the node's timings.
    buf = bytearray(BUF)
    mv = memoryview(buf)
    start = end = 0
    th = _Throttle()
    try:
        while True:
            # Need at least a fixed header (up to 5 bytes) and then the whole packet.
            while True:
                avail = end - start
                if avail >= 2:
                    first = buf[start]
                    n, shift, i = 0, 0, start + 1
                    while i < end:
                        b = buf[i]
                        n |= (b & 0x7F) << shift
                        i += 1
                        if not b & 0x80:
                            break
                        shift += 7
                    else:
                        i = -1
                    if i > 0 and (first & 0xF0 == 0x30 and not first & 6 or i + n <= end):
                        break
                if start and (start == end or end > BUF // 2):
                    buf[:avail] = buf[start:end]
                    start, end = 0, avail
                got = conn.recv_into(mv[end:], BUF - end)
                if not got:
                    return
                th.took(got)
                end += got
            kind = first & 0xF0
            if kind == 0x30:
                if first & 6:  # QoS 1: answer with its packet id
                    tl = buf[i] << 8 | buf[i + 1]
                    conn.sendall(b"\x40\x02" + bytes(buf[i + 2 + tl:i + 4 + tl]))
                # QoS 0 body: skip it, reading past the buffer if needed
            elif kind == 0x10:
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 0x80:
                conn.sendall(b"\x90\x03" + bytes(buf[i:i + 2]) + b"\x01")
            elif kind == 0xC0:
                conn.sendall(b"\xd0\x00")
            elif kind == 0xE0:
                _segments(conn)
                return
            skip = i + n - start
            have = end - start
            if skip <= have:
                start += skip
            else:
                skip -= have
                start = end = 0
                while skip:
                    got = conn.recv_into(mv, min(BUF, skip))
                    if not got:
                        return
                    th.took(got)
                    skip -= got
    except OSError:
        pass
    finally:
        conn.close()


def _segments(conn: socket.socket) -> None:
    # struct tcp_info (linux/tcp.h): tcpi_rcv_mss at 20, tcpi_bytes_received at 128,
    # tcpi_data_segs_in at 152.
    if not MSS:
        return
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 256)
        received = struct.unpack_from("Q", info, 128)[0]
        segs = struct.unpack_from("I", info, 152)[0]
        mss = struct.unpack_from("I", info, 20)[0]
        print("segs", segs, received, mss, flush=True)
    except (OSError, struct.error):
        print("segs ? ? ?", flush=True)


def _serve_raw(conn: socket.socket) -> None:
    r = _Reader(conn)
    try:
        while True:
            n = struct.unpack(">I", r.take(4))[0]
            r.skip(n)
            conn.sendall(b"\x40\x02\x00\x01")
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def _accept(lsock: socket.socket, serve) -> None:
    while True:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if RATE:  # a small window, so a throttled reader pushes back on the writer
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main() -> None:
    global RATE, MSS
    if len(sys.argv) > 1:
        RATE = float(sys.argv[1])
    if len(sys.argv) > 2:
        MSS = int(sys.argv[2])
    m, r = _listener(), _listener()
    threading.Thread(target=_accept, args=(m, _serve_mqtt), daemon=True).start()
    threading.Thread(target=_accept, args=(r, _serve_raw), daemon=True).start()
    print(m.getsockname()[1], r.getsockname()[1], flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or kills us)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
