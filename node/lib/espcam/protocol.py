# Wire protocol v2 (docs/protocol.md): topics, node ids and the frame chunk header.
# Nothing here allocates in proportion to a frame.
import struct

PROTO = 2           # what the node sends: chunk header byte 2 and "proto" in its state
ACCEPTS = (1, 2)    # chunk versions a receiver reads (v2 changed no chunk field)
MAGIC = b"EC"
HEADER = ">2sBBIIIIHHHH"
HEADER_LEN = 28
FLAG_META = 1
FLAG_RESEND = 2
MIN_CHUNK = 256
MAX_CHUNK = 65536
MIN_FRAME = 1
MAX_FRAME = 16777216
MAX_COUNT = 65535   # the count field has 16 bits, so a frame needs at most this many chunks
MAX_FRAME_ID = 0xFFFFFFFF
NODE_ID_MAX = 32
DEFAULT_PREFIX = "espcam"
# QoS of what version 2 added: the node publishes `dropped` and subscribes to `confirm` at these.
DROPPED_QOS = 1
CONFIRM_QOS = 1
DOORBELL_QOS = 1    # the doorbell topic: the node's `ring`, not retained

_ID_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
_ID_REST = _ID_FIRST + "_-"


def valid_node_id(s):
    if not isinstance(s, str) or not 1 <= len(s) <= NODE_ID_MAX or s[0] not in _ID_FIRST:
        return False
    for c in s:
        if c not in _ID_REST:
            return False
    return True


def valid_prefix(s):
    if not isinstance(s, str) or not s or s[0] == "/" or s[-1] == "/":
        return False
    for level in s.split("/"):
        if not level:
            return False
        for c in level:
            if not (c.isalpha() or c.isdigit() or c in "_-"):
                return False
    return True


def topic(prefix, node, leaf):
    return "%s/%s/%s" % (prefix, node, leaf)


def chunk_count(total_len, chunk_size):
    return (total_len + chunk_size - 1) // chunk_size


def frame_fits(total_len, chunk_size):
    # A frame the header cannot describe: over 16 MiB, or more chunks than 16 bits can count
    # (at 256-byte chunks the largest frame is 65535 x 256 bytes, just under 16 MiB).
    return MIN_FRAME <= total_len <= MAX_FRAME and chunk_count(total_len, chunk_size) <= MAX_COUNT


def pack_header(buf, off, flags, frame_id, total_len, crc, chunk_size, index, count, meta_len):
    # Writes into a caller-owned buffer so the publish loop allocates nothing per chunk.
    struct.pack_into(HEADER, buf, off, MAGIC, PROTO, flags, frame_id, total_len, crc,
                     chunk_size, index, count, meta_len, 0)


def ring(at, frame_id):
    # The doorbell event of a press of the node's button (docs/protocol.md, "Doorbell events"):
    # at, unix seconds or None without a clock; the id of the frame captured for it.
    return {"event_type": "ring", "at": at, "frame": frame_id}
