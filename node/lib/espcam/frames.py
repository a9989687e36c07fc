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
    def __init__(self, chunk_size):
        self.chunk_size = chunk_size
        self.buf = bytearray(protocol.HEADER_LEN + META_MAX + chunk_size)
        self.mv = memoryview(self.buf)

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
        topic = link.topic("frame")
        buf = self.buf
        mv = self.mv
        last = len(indices) - 1
        for n, i in enumerate(indices):
            f = flags
            off = protocol.HEADER_LEN
            mlen = 0
            if i == 0 and frame.meta:
                mlen = len(frame.meta)
                buf[off:off + mlen] = frame.meta
                off += mlen
                f |= protocol.FLAG_META
            start = i * cs
            size = min(cs, total - start)
            protocol.pack_header(buf, f, frame.id, total, frame.crc, cs, i, count, mlen)
            mv[off:off + size] = frame.mv[start:start + size]
            link.publish_raw(topic, mv[:off + size], 1 if n == last else 0)
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
