# Frame ids and chunked publishing (docs/protocol.md, "Frame chunks"). The frame is never
# copied: each chunk is a memoryview slice copied into one buffer made at start-up, so sending
# allocates the same few small objects per chunk whatever the frame's size.
import binascii
import json

from espcam import protocol

IDS_PATH = "espcam_ids.json"
ID_BLOCK = 256
META_MAX = 512


class FrameIds:
    # Ids live in RTC memory across deep sleep; flash only records blocks of reserved ids, so a
    # power cut skips ahead rather than reusing an id, at one flash write per ID_BLOCK frames.
    def __init__(self, rtc):
        self.last = rtc.get("fid")
        self.reserved = rtc.get("res")
        if type(self.last) is not int or type(self.reserved) is not int:
            try:
                with open(IDS_PATH) as f:
                    base = json.loads(f.read())["reserved"]
            except (OSError, ValueError, KeyError):
                base = 0
            self.last = base
            self.reserved = base
            self._reserve()

    def _reserve(self):
        self.reserved += ID_BLOCK
        tmp = IDS_PATH + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"reserved": self.reserved}))
        import os
        os.rename(tmp, IDS_PATH)

    def next(self):
        self.last += 1
        if self.last > self.reserved:
            self._reserve()
        return self.last


class Frame:
    # The last captured frame, held for resend requests until the next capture or sleep.
    def __init__(self, fid, buf, meta):
        self.id = fid
        self.buf = buf
        self.mv = memoryview(buf)
        self.crc = binascii.crc32(self.mv) & 0xFFFFFFFF
        self.meta = meta
        self.delivered = False   # True once the broker acknowledged the last chunk


class Sender:
    # Each chunk goes out as one complete MQTT PUBLISH packet in one socket write: umqtt.simple
    # would make four or five small writes per message, which with TCP_NODELAY means more
    # packets and without it a Nagle / delayed-ACK stall of about 40 ms per QoS 1 exchange.
    # The buffer leaves room in front of the chunk for the MQTT fixed header, topic and packet
    # id, and is made once; sending allocates a few small objects per chunk whatever the size.
    def __init__(self, chunk_size, topic):
        self.chunk_size = chunk_size
        self.topic = topic.encode()
        self.pre = 4 + 2 + len(self.topic) + 2   # fixed header (<= 4), topic length, topic, id
        self.buf = bytearray(self.pre + protocol.HEADER_LEN + META_MAX + chunk_size)
        self.mv = memoryview(self.buf)
        self.body = self.mv[self.pre:]

    def _packet(self, body_len, pid):
        # Writes the PUBLISH header right in front of the body; returns where the packet starts.
        buf = self.buf
        p = self.pre
        if pid:
            buf[p - 2] = pid >> 8
            buf[p - 1] = pid & 0xFF
            p -= 2
        tl = len(self.topic)
        buf[p - tl:p] = self.topic
        p -= tl + 2
        buf[p] = tl >> 8
        buf[p + 1] = tl & 0xFF
        n = self.pre + body_len - p   # MQTT "remaining length"
        digits = 1 if n < 0x80 else 2 if n < 0x4000 else 3
        p -= digits
        for k in range(digits):
            buf[p + k] = (n & 0x7F) | (0x80 if k < digits - 1 else 0)
            n >>= 7
        p -= 1
        buf[p] = 0x32 if pid else 0x30   # PUBLISH, QoS 1 or 0, not retained
        return p

    def send(self, link, frame, only=None, feed=None):
        # Publishes all chunks (only=None) or the listed indices; the last one at QoS 1, whose
        # PUBACK proves the broker holds every chunk before it. Returns the number sent.
        total = len(frame.mv)
        cs = self.chunk_size
        count = protocol.chunk_count(total, cs)
        if only is None:
            indices = range(count)
            flags = 0
        else:
            indices = only
            flags = protocol.FLAG_RESEND
        body = self.body
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
            pid = link.next_pid() if n == last else 0
            p = self._packet(off + size, pid)
            link.send_packet(self.mv[p:self.pre + off + size], pid)
            if feed is not None:
                feed()
        return len(indices)


def meta_json(t, up, trigger, fs, q, wake, cmd_id):
    m = {"t": t, "up": up, "trigger": trigger, "fs": fs, "q": q, "wake": wake}
    if cmd_id is not None:
        m["cmd"] = cmd_id
    b = json.dumps(m).encode()
    if len(b) > META_MAX:
        b = b[:0]
    return b
