# Wire protocol v1 (docs/protocol.md): topics, node ids and the frame chunk header.
# Nothing here allocates in proportion to a frame.
import struct

PROTO = 1
MAGIC = b"EC"
HEADER = ">2sBBIIIIHHHH"
HEADER_LEN = 28
FLAG_META = 1
FLAG_RESEND = 2
MIN_CHUNK = 256
MAX_CHUNK = 65536
MAX_FRAME = 16777216
MAX_COUNT = 65535   # the count field has 16 bits, so a frame needs at most this many chunks

_ID_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
_ID_REST = _ID_FIRST + "_-"


def valid_node_id(s):
    if not isinstance(s, str) or not 1 <= len(s) <= 32 or s[0] not in _ID_FIRST:
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
    return 1 <= total_len <= MAX_FRAME and chunk_count(total_len, chunk_size) <= MAX_COUNT


def pack_header(buf, off, flags, frame_id, total_len, crc, chunk_size, index, count, meta_len):
    # Writes into a caller-owned buffer so the publish loop allocates nothing per chunk.
    struct.pack_into(HEADER, buf, off, MAGIC, PROTO, flags, frame_id, total_len, crc,
                     chunk_size, index, count, meta_len, 0)


def unpack_header(msg):
    # Returns (flags, frame_id, total_len, crc, chunk_size, index, count, meta_len) or raises
    # ValueError with the reason, for the node's own tests and for any receiver in MicroPython.
    if len(msg) < HEADER_LEN:
        raise ValueError("chunk shorter than header")
    magic, ver, flags, fid, total, crc, csize, index, count, mlen, _ = struct.unpack_from(
        HEADER, msg, 0)
    if magic != MAGIC:
        raise ValueError("bad magic")
    if ver != PROTO:
        raise ValueError("unsupported version %d" % ver)
    if not 1 <= total <= MAX_FRAME:
        raise ValueError("total_len out of range")
    if not MIN_CHUNK <= csize <= MAX_CHUNK:
        raise ValueError("chunk_size out of range")
    if count != chunk_count(total, csize):
        # also rejects a frame needing more than MAX_COUNT chunks: no 16-bit count matches
        raise ValueError("count does not match total_len and chunk_size")
    if index >= count:
        raise ValueError("index beyond count")
    if mlen and not flags & FLAG_META:
        raise ValueError("meta_len without meta flag")
    if flags & FLAG_META and index != 0:
        raise ValueError("metadata on a chunk other than 0")
    if HEADER_LEN + mlen > len(msg):
        raise ValueError("meta_len beyond message")
    want = csize if index < count - 1 else total - (count - 1) * csize
    if len(msg) - HEADER_LEN - mlen != want:
        raise ValueError("payload length %d, expected %d" % (len(msg) - HEADER_LEN - mlen, want))
    return flags, fid, total, crc, csize, index, count, mlen
