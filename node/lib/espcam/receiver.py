# Frame chunks and `dropped` documents as a receiver reads them (docs/protocol.md, "Frame
# chunks", "dropped"). The node only sends these, so the app never imports this module: its
# bytecode would take a couple of KB of the node's heap for nothing. It is the node's own
# statement of the receiver's rules, for the node's tests (checked against the backend's
# vectors) and for any receiver in MicroPython.
import json
import struct

from espcam import protocol

MAX_DROPPED_BYTES = 1024   # protocol.json dropped: max_bytes, max_ids, max_reason
MAX_DROPPED_IDS = 64
MAX_DROPPED_REASON = 128


def _refuse(rule, text):
    return ValueError("%s: %s" % (rule, text))


def rule(e):
    # The rule an unpack_header refusal names: its message up to the first colon.
    return str(e).split(":", 1)[0]


def unpack_header(msg):
    # Checks a whole chunk as a receiver must and returns (flags, frame_id, total_len, crc,
    # chunk_size, index, count, meta_len, meta), meta the metadata object or None. Refuses with
    # ValueError("<rule>: <why>"), rule the first of protocol.json's refusals.chunk broken, in
    # that order (the backend's names for the same chunk).
    if len(msg) < protocol.HEADER_LEN:
        raise _refuse("header_length", "chunk of %d bytes, shorter than the header" % len(msg))
    magic, ver, flags, fid, total, crc, csize, index, count, mlen, reserved = \
        struct.unpack_from(protocol.HEADER, msg, 0)
    if magic != protocol.MAGIC:
        raise _refuse("magic", "bad magic %r" % (magic,))
    if ver not in protocol.ACCEPTS:
        raise _refuse("version", "unsupported version %d" % ver)
    if flags & ~(protocol.FLAG_META | protocol.FLAG_RESEND):
        raise _refuse("flags", "unknown flag bits in 0x%02x" % flags)
    if reserved:
        raise _refuse("reserved", "reserved field is %d, must be 0" % reserved)
    if not protocol.MIN_FRAME <= total <= protocol.MAX_FRAME:
        raise _refuse("total_len_range", "total_len %d out of range" % total)
    if not protocol.MIN_CHUNK <= csize <= protocol.MAX_CHUNK:
        raise _refuse("chunk_size_range", "chunk_size %d out of range" % csize)
    if count != protocol.chunk_count(total, csize):
        # also refuses a frame needing more than MAX_COUNT chunks: no 16-bit count matches
        raise _refuse("count_matches", "count %d does not match total_len and chunk_size" % count)
    if index >= count:
        raise _refuse("index_below_count", "index %d beyond count %d" % (index, count))
    if mlen and not flags & protocol.FLAG_META:
        raise _refuse("meta_len_needs_flag", "meta_len %d without the meta flag" % mlen)
    if flags & protocol.FLAG_META and index != 0:
        raise _refuse("meta_on_chunk_0_only", "metadata on chunk %d" % index)
    if protocol.HEADER_LEN + mlen > len(msg):
        raise _refuse("meta_len_within_message", "meta_len %d beyond the message" % mlen)
    meta = None
    if flags & protocol.FLAG_META:
        try:
            meta = json.loads(msg[protocol.HEADER_LEN:protocol.HEADER_LEN + mlen])
        except (ValueError, UnicodeError):
            raise _refuse("meta_not_json", "metadata is not JSON")
        if not isinstance(meta, dict):
            raise _refuse("meta_not_object", "metadata is not a JSON object")
    want = csize if index < count - 1 else total - (count - 1) * csize
    if len(msg) - protocol.HEADER_LEN - mlen != want:
        raise _refuse("payload_length", "payload of %d bytes, expected %d"
                      % (len(msg) - protocol.HEADER_LEN - mlen, want))
    return flags, fid, total, crc, csize, index, count, mlen, meta


def parse_dropped(payload):
    # (frame ids, reason) of a `dropped` document as a receiver reads it, or ValueError("<rule>:
    # why"), rule the first of protocol.json's refusals.dropped broken, in that order. The node
    # writes these (spool.dropped_doc); this is its statement of what makes one valid.
    if len(payload) > MAX_DROPPED_BYTES:
        raise _refuse("not_json", "dropped longer than %d bytes" % MAX_DROPPED_BYTES)
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeError):
        raise _refuse("not_json", "dropped is not JSON")
    if not isinstance(d, dict):
        raise _refuse("not_object", "dropped is not a JSON object")
    ids = d.get("frames")
    if not isinstance(ids, list) or not ids:
        raise _refuse("bad_frames", "frames is not a non-empty list")
    for i in ids:
        if type(i) is not int or not 0 <= i <= protocol.MAX_FRAME_ID:
            raise _refuse("bad_frames", "frames holds something other than a frame id")
    if len(ids) > MAX_DROPPED_IDS:
        raise _refuse("too_many", "more than %d frame ids" % MAX_DROPPED_IDS)
    reason = d.get("reason")
    if not isinstance(reason, str) or not 1 <= len(reason) <= MAX_DROPPED_REASON:
        raise _refuse("bad_reason", "reason is not a text of 1 to %d characters"
                      % MAX_DROPPED_REASON)
    return ids, reason
