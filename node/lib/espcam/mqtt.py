# The node's MQTT 3.1.1 client: one connection, QoS 0 and 1, in the spirit of micropython-lib's
# umqtt.simple, but no socket operation can hang (every read and write is bounded by the socket
# timeout; waiting for the broker is select.poll with a deadline), and a PUBLISH can be written
# in two parts, its head from a buffer made once and its payload straight from the caller's
# buffer, so a frame is never copied to be sent.
import select
import socket
import time

# Commands are at most 1024 bytes (protocol). A longer message is read through a 256-byte
# scratch buffer and thrown away, and the callback gets TOO_BIG: reading it whole could exhaust
# the heap, and a message never acknowledged would come back after every reconnect.
MAX_MSG = 1024
TOO_BIG = b"\x00too big"

# The unix port has no names for these; the ESP32 port (lwIP) has the same numbers.
_IPPROTO_TCP = getattr(socket, "IPPROTO_TCP", 6)
_TCP_NODELAY = getattr(socket, "TCP_NODELAY", 1)

# CONNACK return codes 1 to 5 (MQTT 3.1.1, 3.2.2.3).
_REFUSED = ("unacceptable protocol version", "client id rejected", "server unavailable",
            "bad user name or password", "not authorized")


class MQTTError(OSError):
    pass


def _put(buf, i, s):
    # A length-prefixed string (bytes) at buf[i]; returns the index after it.
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2:i + 2 + n] = s
    return i + 2 + n


def _length(buf, i, n):
    # MQTT's remaining length at buf[i], 1 to 4 bytes; returns the index after it.
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


def _bytes(s):
    # len() of a str counts characters, the wire counts bytes.
    return s.encode() if isinstance(s, str) else s


def publish_buffer(topic, qos, room):
    # A buffer for the heads of PUBLISHes to `topic` at `qos`, made once by a caller that sends
    # many (the frame Sender): 4 bytes for the fixed header, the topic, the packet id at QoS 1,
    # then `room` bytes of the caller's own, from the returned offset on. See publish_from().
    t = _bytes(topic)
    off = 4 + 2 + len(t) + (2 if qos else 0)
    buf = bytearray(off + room)
    _put(buf, 4, t)
    return buf, off


class MQTT:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=0,
                 timeout=10, will=None, wrap=None):
        # will: (topic, message, retain, qos). wrap: None, or a function that gets the connected
        # TCP socket and returns the stream to speak MQTT over (TLS: ssl.wrap_socket or an
        # SSLContext's wrap_socket); the socket's timeout bounds its reads and writes too.
        self.client_id = _bytes(client_id)
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.timeout = timeout
        self.will = will
        self.wrap = wrap
        self.cb = None            # cb(topic, msg) for every PUBLISH received
        self.sock = None
        self.poller = None
        self.pid = 0
        self.rid = 0              # packet id of the last PUBACK or SUBACK read
        self.rlen = 0             # and its length (a SUBACK: 2 + one code per topic filter)
        # Both made here, at start-up, where they cannot split the free heap later on.
        self.buf = bytearray(64)  # fixed header, topic and packet id out; small packets in
        self.scratch = bytearray(256)   # drains messages over MAX_MSG
        self.last_rx = time.ticks_ms()
        # True while a packet is half written or half read: after an exception then, the
        # stream is out of step and the connection can only be closed.
        self.mid = False

    # ------------------------------------------------------------------ bytes

    def _write(self, buf, off, n):
        # write(buf, off, n) hands the stream a window of buf: no slice, no allocation.
        while n:
            k = self.sock.write(buf, off, n)
            if not k:
                raise MQTTError("timed out writing to the broker")
            off += k
            n -= k

    def _read(self, n, buf=None):
        # Exactly n bytes into buf (self.buf if None). readinto reads until it has them, the
        # stream ends or the timeout passes (None, or OSError ETIMEDOUT, by port).
        got = self.sock.readinto(self.buf if buf is None else buf, n)
        if got != n:
            raise MQTTError("timed out reading from the broker" if got is None else
                            "connection closed by the broker")

    def _message(self, n):
        if n > MAX_MSG:
            while n:
                k = n if n < 256 else 256
                self._read(k, self.scratch)
                n -= k
            return TOO_BIG
        b = self.sock.read(n) if n else b""
        if b is None or len(b) != n:
            raise MQTTError("connection closed by the broker")
        return b

    def _room(self, n):
        if len(self.buf) < n:
            self.buf = bytearray(n)
        return self.buf

    def _next_pid(self):
        # 16-bit packet ids, 1 to 65535: 0 is not a packet id.
        self.pid = self.pid % 65535 + 1
        return self.pid

    def _ready(self, ms):
        # ipoll reuses its result tuple: waiting allocates nothing.
        for _ in self.poller.ipoll(ms):
            return True
        return False

    # ------------------------------------------------------------------ packets in

    def _packet(self):
        # Reads one packet, which has begun to arrive, and returns its first byte. A PUBLISH
        # goes to the callback (and is acknowledged at QoS 1); the body of anything else, at
        # most 4 bytes, is left in self.buf, its packet id in self.rid.
        b = self.buf
        self._read(1)
        op = b[0]
        n = 0
        sh = 0
        while True:
            self._read(1)
            n |= (b[0] & 0x7F) << sh
            if not b[0] & 0x80:
                break
            sh += 7
            if sh > 21:
                raise MQTTError("bad remaining length from the broker")
        self.last_rx = time.ticks_ms()
        if op & 0xF0 == 0x30:
            self._publish_in(op, n)
            return 0x30
        # A SUBACK has a return code per topic filter (subscribe() sends few); others 4 bytes.
        if op not in (0x20, 0x40, 0x90, 0xD0) or n > (len(b) if op == 0x90 else 4):
            raise MQTTError("unexpected packet 0x%02x of %d bytes from the broker" % (op, n))
        self.rlen = n
        if n:
            self._read(n)
            self.rid = b[0] << 8 | b[1]
        return op

    def _publish_in(self, op, n):
        b = self.buf
        qos = op >> 1 & 3
        if qos > 1:
            raise MQTTError("QoS %d message from the broker" % qos)   # we subscribe at QoS 1
        self._read(2)
        tl = b[0] << 8 | b[1]
        n -= 2 + tl + (2 if qos else 0)
        if n < 0:
            raise MQTTError("malformed PUBLISH from the broker")
        topic = self._message(tl)
        pid = 0
        if qos:
            self._read(2)
            pid = b[0] << 8 | b[1]
        msg = self._message(n)
        if self.cb is not None:
            self.cb(topic, msg)
        if qos:
            b[0] = 0x40
            b[1] = 2
            b[2] = pid >> 8
            b[3] = pid & 0xFF
            self._write(b, 0, 4)

    def _wait(self, want, pid, what):
        # Reads packets until `want` (answering packet id pid, if not 0) arrives, the messages
        # that come first going to the callback. One deadline for the whole wait, so that a
        # stream of other packets cannot stretch it.
        end = time.ticks_add(time.ticks_ms(), self.timeout * 1000)
        while True:
            left = time.ticks_diff(end, time.ticks_ms())
            if left <= 0 or not self._ready(left):
                raise MQTTError("no %s from the broker within %d s" % (what, self.timeout))
            if self._packet() == want and (not pid or self.rid == pid):
                return

    # ------------------------------------------------------------------ the connection

    def connect(self, clean_session=False):
        # Returns True if the broker still had our session. Raises MQTTError if it refuses.
        self.close()
        addr = socket.getaddrinfo(self.host, self.port)[0][-1]
        s = self.sock = socket.socket()
        self.mid = True
        # The timeout before the first byte: a broker address that accepts and never answers
        # costs one timeout, not the node.
        s.settimeout(self.timeout)
        try:
            # Small packets (acks, pings, chunk heads) would otherwise sit out Nagle's algorithm
            # against the broker's delayed ACK: about 40 ms each.
            s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        s.connect(addr)
        if self.wrap is not None:
            s = self.sock = self.wrap(s)
        self.poller = select.poll()
        self.poller.register(s, select.POLLIN)

        flags = 2 if clean_session else 0
        size = 10 + 2 + len(self.client_id)
        will = self.will
        if will is not None:
            wt = _bytes(will[0])
            wm = _bytes(will[1])
            size += 2 + len(wt) + 2 + len(wm)
            flags |= 4 | will[3] << 3 | (0x20 if will[2] else 0)
        user = pw = None
        if self.user is not None:
            user = _bytes(self.user)
            size += 2 + len(user)
            flags |= 0x80
            if self.password is not None:
                pw = _bytes(self.password)
                size += 2 + len(pw)
                flags |= 0x40
        p = bytearray(5 + size)
        p[0] = 0x10
        i = _length(p, 1, size)
        i = _put(p, i, b"MQTT")
        p[i] = 4                                   # protocol level: 3.1.1
        p[i + 1] = flags
        p[i + 2] = self.keepalive >> 8
        p[i + 3] = self.keepalive & 0xFF
        i = _put(p, i + 4, self.client_id)
        if will is not None:
            i = _put(p, _put(p, i, wt), wm)
        if user is not None:
            i = _put(p, i, user)
        if pw is not None:
            i = _put(p, i, pw)
        self._write(p, 0, i)
        self.last_rx = time.ticks_ms()
        self._wait(0x20, 0, "CONNACK")
        rc = self.buf[1]
        if rc:
            raise MQTTError("broker refused the connection: " +
                            (_REFUSED[rc - 1] if rc <= 5 else "code %d" % rc))
        self.mid = False
        return bool(self.buf[0] & 1)

    def subscribe(self, topic, qos=1):
        # topic: one topic filter, or a tuple of them, subscribed in one SUBSCRIBE (one round
        # trip). Returns the QoS granted (the lowest); raises MQTTError if the broker refused any
        # (0x80).
        self.mid = True
        topics = topic if isinstance(topic, tuple) else (topic,)
        size = 2
        for t in topics:
            size += 2 + len(_bytes(t)) + 1
        pid = self._next_pid()
        b = self._room(size + 5)
        b[0] = 0x82
        i = _length(b, 1, size)
        b[i] = pid >> 8
        b[i + 1] = pid & 0xFF
        i += 2
        for t in topics:
            i = _put(b, i, _bytes(t))
            b[i] = qos
            i += 1
        self._write(b, 0, i)
        self._wait(0x90, pid, "SUBACK")
        granted = qos
        for k in range(min(len(topics), self.rlen - 2)):
            g = self.buf[2 + k]
            if g == 0x80:
                raise MQTTError("broker refused the subscription to %s" % (topics[k],))
            if g < granted:
                granted = g
        self.mid = False
        return granted

    def publish(self, topic, msg, retain=False, qos=0):
        # A small message (state, acks, availability), at QoS 0 or 1; at QoS 1 returns once the
        # broker has acknowledged it.
        self.mid = True
        t = _bytes(topic)
        msg = _bytes(msg)
        b = self._room(len(t) + 9)
        b[0] = 0x30 | qos << 1 | (1 if retain else 0)
        i = _put(b, _length(b, 1, 2 + len(t) + (2 if qos else 0) + len(msg)), t)
        pid = 0
        if qos:
            pid = self._next_pid()
            b[i] = pid >> 8
            b[i + 1] = pid & 0xFF
            i += 2
        self._write(b, 0, i)
        self._write(msg, 0, len(msg))
        if qos:
            self._wait(0x40, pid, "PUBACK")
        self.mid = False

    def publish_from(self, buf, off, end, data, doff, dlen, qos):
        # One PUBLISH, not retained, in two writes and without a copy: buf (made by
        # publish_buffer() for this qos) holds the topic and, in buf[off:end], the start of the
        # message; data[doff:doff + dlen] is the rest, written straight from the caller's buffer.
        # Allocates nothing.
        self.mid = True
        pid = 0
        if qos:
            pid = self._next_pid()
            buf[off - 2] = pid >> 8
            buf[off - 1] = pid & 0xFF
        rl = end - 4 + dlen
        digits = 1 if rl < 0x80 else 2 if rl < 0x4000 else 3
        p = 4 - digits
        for k in range(digits):
            buf[p + k] = (rl & 0x7F) | (0x80 if k < digits - 1 else 0)
            rl >>= 7
        p -= 1
        buf[p] = 0x32 if qos else 0x30
        self._write(buf, p, end - p)
        self._write(data, doff, dlen)
        if qos:
            self._wait(0x40, pid, "PUBACK")
        self.mid = False

    def check(self, ms):
        # Waits up to ms for traffic and handles every packet that has arrived, at most 32, so
        # that a flood cannot starve the caller's loop.
        if not self._ready(ms):
            return
        self.mid = True
        for _ in range(32):
            self._packet()
            if not self._ready(0):
                break
        self.mid = False

    def ping(self):
        # The PINGRESP is read by check() like any packet (it moves last_rx).
        self.mid = True
        self.buf[0] = 0xC0
        self.buf[1] = 0
        self._write(self.buf, 0, 2)
        self.mid = False

    def disconnect(self):
        # A clean goodbye: the broker does not publish the will.
        try:
            self.buf[0] = 0xE0
            self.buf[1] = 0
            self._write(self.buf, 0, 2)
        finally:
            self.close()

    def close(self):
        s = self.sock
        self.sock = None
        self.poller = None
        self.mid = False
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
