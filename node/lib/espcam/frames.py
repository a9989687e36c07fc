# Frame ids and chunked publishing (docs/protocol.md, "Frame chunks"). The frame is never
# copied: each chunk's payload is written to the socket straight from the frame's own buffer
# (or, for a frame on the SD card, read into one chunk buffer), so sending a frame allocates
# the same few objects whatever its size.
import binascii
import json

from espcam import mqtt, protocol

IDS_PATH = "espcam_ids.json"
ID_BLOCK = 256
META_MAX = 512


class FrameIds:
    # Ids live in RTC memory across deep sleep; flash only records blocks of reserved ids, so a
    # power cut skips ahead rather than reusing an id, at one flash write per ID_BLOCK frames.
    def __init__(self, rtc):
        self.last = rtc.get("fid")
        self.reserved = rtc.get("res")
        # Whether `last` names a frame captured since power-on. After a power cut `last` is
        # only the start of a reserved block, a frame that never existed.
        self.captured = rtc.get("cap") is True
        # The end of the block reserved at the last power-on: new at every power-on and at
        # nothing else (resets and deep sleep keep it here), so the backend can tell a power-on
        # it has already seen from a new one (`boot` in the state document).
        self.boot = rtc.get("boot")
        if type(self.last) is not int or type(self.reserved) is not int:
            self.captured = False
            try:
                with open(IDS_PATH) as f:
                    base = json.loads(f.read())["reserved"]
            except (OSError, ValueError, KeyError):
                base = 0
            self.last = base
            self.reserved = base
            self._reserve()
            self.boot = self.reserved

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
        self.captured = True
        return self.last

    def shown(self):
        # The last frame id for the state document: None until a capture since power-on.
        return self.last if self.captured else None


class Frame:
    # A captured frame in RAM. view: buf is the class driver's memoryview into its own frame
    # buffer, which the driver's next capture overwrites (the spool copies it out before that,
    # if it still holds the frame; spool.RamSpool.before_camera).
    def __init__(self, fid, buf, meta):
        self.id = fid
        self.buf = buf
        self.mv = memoryview(buf)
        self.size = len(self.mv)
        self.crc = binascii.crc32(self.mv) & 0xFFFFFFFF
        self.meta = meta
        self.view = type(buf) is memoryview
        self.fh = None    # a frame read from a file has one (sdspool.FileFrame)

    def hold(self, buf):
        self.buf = buf
        self.mv = memoryview(buf)
        self.view = False


class Sender:
    # Each chunk is one MQTT PUBLISH in two socket writes: its head (fixed header, topic, packet
    # id, chunk header, and the metadata on chunk 0) from one of two buffers made at start-up,
    # then the payload straight out of the frame's buffer (mqtt.MQTT.publish_from). No chunk is
    # copied and no chunk allocates, so the heap a frame costs is independent of its size. Two
    # buffers, because a QoS 1 PUBLISH has a packet id between topic and payload and so its
    # chunk header sits 2 bytes further on.
    def __init__(self, chunk_size, topic):
        self.chunk_size = chunk_size
        room = protocol.HEADER_LEN + META_MAX
        self.heads = (mqtt.publish_buffer(topic, 0, room), mqtt.publish_buffer(topic, 1, room))

    def fits(self, total):
        return protocol.frame_fits(total, self.chunk_size)

    def send(self, mq, frame, only=None, feed=None, resent=False):
        # Publishes all chunks (only=None) or the listed indices through the MQTT client mq; the
        # last one at QoS 1, whose PUBACK proves the broker holds every chunk before it. Chunks
        # asked for (only) and frames sent again (resent) carry the resent flag. A frame in a
        # file (frame.fh) is read chunk by chunk into frame.chunk, one buffer for every chunk.
        # Returns the number sent.
        total = frame.size
        cs = self.chunk_size
        if not protocol.frame_fits(total, cs):
            raise ValueError("a frame of %d bytes needs more than %d chunks of %d bytes"
                             % (total, protocol.MAX_COUNT, cs))
        count = protocol.chunk_count(total, cs)
        if only is None:
            indices = range(count)
        else:
            indices = only
        flags = protocol.FLAG_RESEND if resent or only is not None else 0
        fh = frame.fh
        data = frame.mv if fh is None else frame.chunk
        last = len(indices) - 1
        n = 0
        for i in indices:
            q = 1 if n == last else 0
            head, off = self.heads[q]
            f = flags
            mlen = 0
            if i == 0 and frame.meta:
                mlen = len(frame.meta)
                f |= protocol.FLAG_META
                head[off + protocol.HEADER_LEN:off + protocol.HEADER_LEN + mlen] = frame.meta
            start = i * cs
            size = cs if start + cs <= total else total - start
            doff = start
            if fh is not None:
                fh.seek(frame.base + start)
                if fh.readinto(data, size) != size:
                    raise OSError("frame %d: its file ends before chunk %d" % (frame.id, i))
                doff = 0
            protocol.pack_header(head, off, f, frame.id, total, frame.crc, cs, i, count, mlen)
            mq.publish_from(head, off, off + protocol.HEADER_LEN + mlen, data, doff, size, q)
            n += 1
            if feed is not None:
                feed()
        return n


def meta_json(t, up, trigger, fs, q, wake, cmd_id):
    # The metadata of chunk 0 as JSON bytes, and whether the command id had to be left out to
    # keep it within META_MAX (the room in the Sender's buffers). Command ids have at most 64
    # characters, so today it always fits, even with an id of 64 control characters (each
    # escaped as \uXXXX, tests/node_scripts/meta_check.py). Should a longer key come along,
    # the id is the one key that can go (the capture's ack names the frame anyway), and
    # anything longer still raises ValueError: a frame never loses its metadata silently.
    m = {"t": t, "up": up, "trigger": trigger, "fs": fs, "q": q, "wake": wake}
    if cmd_id is not None:
        m["cmd"] = cmd_id
    b = json.dumps(m).encode()
    dropped = False
    if len(b) > META_MAX and cmd_id is not None:
        del m["cmd"]
        b = json.dumps(m).encode()
        dropped = True
    if len(b) > META_MAX:
        raise ValueError("metadata of %d bytes, more than the %d a chunk head holds"
                         % (len(b), META_MAX))
    return b, dropped
