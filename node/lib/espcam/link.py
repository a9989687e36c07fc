# The node's MQTT connection, over umqtt.simple. umqtt.simple has four traps this module
# exists to defuse: it makes its socket without a timeout (so the wait for CONNACK can hang for
# good), it never pings by itself, its QoS 1 publish waits for PUBACK with no timeout, and
# wait_msg() puts the socket back into blocking mode. We hand umqtt a socket wrapper, from the
# moment it makes its socket, whose "blocking" mode is really "timeout", so no read or write
# can hang forever, with every umqtt release.
import select
import socket
import time

from umqtt import simple
from umqtt.simple import MQTTClient

# Commands are at most 1024 bytes (protocol). umqtt reads a message in one allocation, so a
# hostile 1 MB command would exhaust the heap and, never acknowledged, come back on every
# reconnect. The wrapper drains oversize reads instead and hands umqtt this marker.
MAX_MSG = 1024
TOO_BIG = b"\x00too big"


class _Sock:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout
        self.mode = timeout
        self._scratch = None
        self.last_rx = time.ticks_ms()
        sock.settimeout(timeout)
        try:
            # Small MQTT packets (acks, pings, PUBACK waits, chunk heads) would otherwise sit
            # out Nagle's algorithm against the broker's delayed ACK: about 40 ms each.
            sock.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1),
                            1)
        except (OSError, AttributeError):
            pass

    def connect(self, addr):
        self.sock.connect(addr)

    def setblocking(self, flag):
        self._mode(self.timeout if flag else 0)

    def settimeout(self, t):
        # umqtt >= 1.5 calls settimeout(timeout) in connect(), None meaning "block": ours.
        self._mode(self.timeout if t is None else t)

    def _mode(self, t):
        # Called twice per received message by umqtt; a changed timeout costs system calls.
        if t != self.mode:
            self.sock.settimeout(t)
            self.mode = t

    def setsockopt(self, *a):
        self.sock.setsockopt(*a)

    def read(self, n):
        if n <= MAX_MSG:
            b = self.sock.read(n)
            if b:
                self.last_rx = time.ticks_ms()
            elif b == b"" and n:
                # End of stream. Newer umqtt releases would return None here and let a poll
                # loop spin on the dead socket; make it an error in every release.
                raise OSError("connection closed by the broker")
            return b
        if self._scratch is None:
            self._scratch = bytearray(256)
        mv = memoryview(self._scratch)
        while n > 0:
            got = self.sock.readinto(mv[:min(n, 256)])
            if not got:
                raise OSError("connection closed")
            n -= got
        return TOO_BIG

    def write(self, buf, a=None, b=None):
        if a is None:
            return self.sock.write(buf)
        if b is None:
            return self.sock.write(buf, a)
        return self.sock.write(buf, a, b)

    def write_all(self, buf, off, n):
        # write(buf, off, n) hands the stream layer a window of buf: no slice, no allocation.
        if self.sock.write(buf, off, n) != n:
            raise OSError("short write to the broker")

    def close(self):
        self.sock.close()


class _Net:
    # Takes the place of the socket module inside umqtt.simple (both the 1.3 release, which
    # imports usocket as socket, and micropython-lib's newer ones, which import socket), so
    # that the socket umqtt makes in connect() has our timeout before its first read.
    def __init__(self, timeout):
        self.timeout = timeout

    def getaddrinfo(self, *a):
        return socket.getaddrinfo(*a)

    def socket(self, *a):
        return _Sock(socket.socket(*a), self.timeout)


class Link:
    def __init__(self, cfg, on_message):
        b = cfg["broker"]
        node = cfg["node_id"]
        self.base = cfg["prefix"] + "/" + node + "/"
        self.timeout = cfg["socket_timeout"]
        self.keepalive = cfg["keepalive"]
        simple.socket = _Net(self.timeout)
        self.client = MQTTClient(node, b["host"], port=b["port"], user=b.get("user"),
                                 password=b.get("password"), keepalive=self.keepalive)
        self.client.set_callback(on_message)
        self.client.set_last_will(self.topic("availability"), b"offline", retain=True, qos=1)
        self.poller = None
        self.up = False
        # True while a packet is half written or half read: after an exception then, the
        # stream is out of step and the connection can only be closed.
        self.mid = False

    def topic(self, leaf):
        return self.base + leaf

    def connect(self):
        # Returns True if the broker still had our session (queued commands will follow).
        c = self.client
        self.mid = True
        # No timeout argument: umqtt >= 1.5 would accept one, 1.3 would raise TypeError, and
        # the socket already has ours (see _Net).
        present = c.connect(clean_session=False)
        c.pid = 0
        self.poller = select.poll()
        self.poller.register(c.sock.sock, select.POLLIN)
        self.up = True
        c.subscribe(self.topic("cmd"), qos=1)
        self.publish("availability", b"online", retain=True, qos=1)
        self.mid = False
        return bool(present)

    def publish(self, leaf, msg, retain=False, qos=0):
        if self.client.pid >= 65535:
            self.client.pid = 0   # umqtt never wraps its packet id; MQTT ids are 16 bits
        self.mid = True
        self.client.publish(self.topic(leaf), msg, retain, qos)
        self.mid = False

    def next_pid(self):
        c = self.client
        c.pid = c.pid % 65535 + 1
        return c.pid

    def send_chunk(self, head, hoff, hlen, data, doff, dlen, pid):
        # One complete PUBLISH: its head, then its payload straight from the frame buffer. For
        # QoS 1 (pid != 0) waits for the PUBACK, handing any command that arrives meanwhile to
        # the callback, as umqtt's own publish does.
        s = self.client.sock
        self.mid = True
        s.setblocking(True)
        s.write_all(head, hoff, hlen)
        s.write_all(data, doff, dlen)
        if pid:
            self._puback(pid)
        self.mid = False

    def _puback(self, pid):
        c = self.client
        for _ in range(1000):   # each read is bounded by the socket timeout; so is the loop
            op = c.wait_msg()
            if op == 0x40:
                c.sock.read(1)
                r = c.sock.read(2)
                if (r[0] << 8 | r[1]) == pid:
                    return
        raise OSError("no PUBACK for packet %d" % pid)

    def wait(self, ms):
        # Waits up to ms for traffic and dispatches every message that has arrived.
        if self.poller.poll(ms):
            self.mid = True
            for _ in range(32):   # bounded, so a flood cannot starve the rest of the loop
                self.client.check_msg()
                if not self.poller.poll(0):
                    break
            self.mid = False

    def ping(self):
        # The broker answers every ping, so silence for 1.5 keepalives means a dead link that
        # TCP has not noticed yet (Wi-Fi gone without a reset): give up on it now.
        quiet = time.ticks_diff(time.ticks_ms(), self.client.sock.last_rx)
        if quiet > self.keepalive * 1500:
            raise OSError("no traffic from the broker for %d s" % (quiet // 1000))
        self.mid = True
        self.client.ping()
        self.mid = False

    def close(self, goodbye=False):
        # goodbye: a clean DISCONNECT, so the broker does not publish our last will.
        self.up = False
        self.mid = False
        c = self.client
        if c.sock is None:
            return
        try:
            if goodbye:
                c.disconnect()
            else:
                c.sock.close()
        except Exception:
            pass
        c.sock = None
