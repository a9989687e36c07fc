"""The espcam wire protocol (docs/protocol.md) as the backend speaks it: the spec, chunk
headers and topics (documents.py has the JSON documents: commands, acks, confirmations). Every
number and name comes from backend/protocol.json, the one machine-readable statement of the
protocol, which the node's tables and the shared test vectors (tests/vectors/) are checked
against too.

Pure functions and data only, no MQTT client. A refusal carries the name of the rule it broke
(`.rule`), the same name the node gives for the same input.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espcam.backend.names import check_node_id, check_prefix, is_node_id

SPEC: dict[str, Any] = json.loads((Path(__file__).with_name("protocol.json")).read_text())

_CHUNK = SPEC["chunk"]
VERSION: int = SPEC["protocol"]
ACCEPTS: tuple[int, ...] = tuple(SPEC["accepts"])  # chunk versions this receiver reads
MAGIC: bytes = _CHUNK["magic"].encode()
HEADER = struct.Struct(">" + "".join(fmt for _, fmt in _CHUNK["header"]))
HEADER_LEN: int = HEADER.size
assert HEADER_LEN == _CHUNK["header_len"]
FLAG_META: int = _CHUNK["flags"]["meta"]
FLAG_RESENT: int = _CHUNK["flags"]["resent"]
_KNOWN_FLAGS = FLAG_META | FLAG_RESENT
MIN_TOTAL_LEN, MAX_TOTAL_LEN = _CHUNK["total_len"]
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = _CHUNK["chunk_size"]
DEFAULT_CHUNK_SIZE: int = _CHUNK["default_chunk_size"]
MAX_COUNT: int = _CHUNK["count_max"]
MAX_FRAME_ID: int = _CHUNK["frame_id_max"]
MAX_META_LEN = 0xFFFF  # meta_len is 16 bits
# The largest message a valid chunk can be; anything bigger on any topic is junk.
MAX_MESSAGE_BYTES = HEADER_LEN + MAX_META_LEN + MAX_CHUNK_SIZE
# The node reserves frame ids in flash in blocks of this many ("Frame ids"): after a power
# loss it continues from the next multiple of it.
FRAME_ID_BLOCK: int = _CHUNK["frame_id_block"]

NODE_TOPICS = tuple(SPEC["topics"])
# Every retained topic under a node, the updates' too: what `espcam forget` must empty, so that
# nothing of a forgotten node comes back to a new subscriber.
RETAINED_NODE_TOPICS = tuple(
    kind for kind, t in {**SPEC["topics"], **SPEC["ota"]["topics"]}.items() if t.get("retain"))
AVAILABILITY = tuple(SPEC["topics"]["availability"]["values"])
# The backend's own topics live under a level that can never be a node id (node ids start
# with a letter or digit), so no camera can collide with or impersonate them.
BACKEND_LEVEL: str = SPEC["names"]["backend_level"]



class Refusal(ValueError):
    """Something of the protocol's that breaks one of its rules: `rule` names it (one of
    protocol.json's refusals), the message says it for a person."""

    def __init__(self, rule: str, message: str, arg: str | None = None) -> None:
        super().__init__(message)
        self.rule, self.arg = rule, arg


class ChunkError(Refusal):
    """A frame chunk that breaks the protocol."""


class TopicError(ValueError):
    """A topic that is not one of ours, or whose node level is not a valid node id."""


# --- chunks ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    flags: int
    frame_id: int
    total_len: int
    crc32: int
    chunk_size: int
    index: int
    count: int
    meta: dict[str, Any] | None
    payload: bytes
    version: int = VERSION

    @property
    def resent(self) -> bool:
        return bool(self.flags & FLAG_RESENT)

    def shape(self) -> tuple[int, int, int, int]:
        """The fields every chunk of one frame must agree on."""
        return (self.total_len, self.crc32, self.chunk_size, self.count)


def chunk_count(total_len: int, chunk_size: int) -> int:
    return math.ceil(total_len / chunk_size)


def decode_chunk(message: bytes) -> Chunk:
    """Decode and validate one frame chunk; raise ChunkError naming the first rule broken, in
    the order of protocol.json's refusals."""
    def refuse(rule: str, text: str) -> ChunkError:
        return ChunkError(rule, text)

    if len(message) < HEADER_LEN:
        raise refuse("header_length", f"message of {len(message)} bytes is shorter than the "
                                      f"{HEADER_LEN}-byte header")
    (magic, version, flags, frame_id, total_len, crc, chunk_size, index, count, meta_len,
     reserved) = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise refuse("magic", f"bad magic {magic!r}, expected {MAGIC!r}")
    if version not in ACCEPTS:
        raise refuse("version", f"unknown protocol version {version}, this receiver speaks "
                                f"{', '.join(map(str, ACCEPTS))}")
    if flags & ~_KNOWN_FLAGS:
        raise refuse("flags", f"unknown flag bits in {flags:#04x}")
    if reserved != 0:
        raise refuse("reserved", f"reserved field is {reserved}, must be 0")
    if not MIN_TOTAL_LEN <= total_len <= MAX_TOTAL_LEN:
        raise refuse("total_len_range",
                     f"total_len {total_len} outside {MIN_TOTAL_LEN} ... {MAX_TOTAL_LEN}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise refuse("chunk_size_range",
                     f"chunk_size {chunk_size} outside {MIN_CHUNK_SIZE} ... {MAX_CHUNK_SIZE}")
    expected_count = chunk_count(total_len, chunk_size)
    if count != expected_count:
        # Also refuses a frame needing more than 65535 chunks: no 16-bit count matches.
        raise refuse("count_matches",
                     f"count {count} disagrees with total_len {total_len} and chunk_size "
                     f"{chunk_size} (expected {expected_count})")
    if index >= count:
        raise refuse("index_below_count", f"index {index} not below count {count}")
    has_meta = bool(flags & FLAG_META)
    if not has_meta and meta_len:
        raise refuse("meta_len_needs_flag", f"meta_len {meta_len} but the metadata flag is clear")
    if has_meta and index != 0:
        raise refuse("meta_on_chunk_0_only", f"metadata on chunk {index}; only chunk 0 may "
                                             "carry it")
    if HEADER_LEN + meta_len > len(message):
        raise refuse("meta_len_within_message",
                     f"meta_len {meta_len} runs beyond the {len(message)}-byte message")
    meta = None
    if has_meta:
        raw = message[HEADER_LEN:HEADER_LEN + meta_len]
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            # ValueError also covers an integer of thousands of digits, which Python refuses
            # to convert; RecursionError, JSON nested a thousand deep.
            raise refuse("meta_not_json", f"metadata is not UTF-8 JSON: {str(e)[:80]}") from None
        if not isinstance(meta, dict):
            raise refuse("meta_not_object",
                         f"metadata is a JSON {type(meta).__name__}, not an object")
    payload = message[HEADER_LEN + meta_len:]
    expected_len = chunk_size if index < count - 1 else total_len - (count - 1) * chunk_size
    if len(payload) != expected_len:
        raise refuse("payload_length", f"payload of chunk {index}/{count} is {len(payload)} "
                                       f"bytes, expected {expected_len}")
    return Chunk(flags, frame_id, total_len, crc, chunk_size, index, count, meta,
                 bytes(payload), version)


def encode_meta(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, separators=(",", ":")).encode()


def encode_chunks(frame: bytes, frame_id: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  meta: dict[str, Any] | bytes | None = None, flags: int = 0,
                  only: list[int] | None = None, version: int = VERSION) -> list[bytes]:
    """The chunks of one frame, as a node sends them (`only`: these indices, as for a resend;
    `meta` a dict, or its JSON bytes as they are). The one encoder outside the node: test
    helpers, benchmarks and the vectors' generator use it."""
    count = chunk_count(len(frame), chunk_size)
    crc = zlib.crc32(frame) & 0xFFFFFFFF
    raw_meta = encode_meta(meta) if isinstance(meta, dict) else meta
    out = []
    for i in range(count) if only is None else only:
        m, f = b"", flags
        if i == 0 and raw_meta:
            m, f = raw_meta, flags | FLAG_META
        out.append(HEADER.pack(MAGIC, version, f, frame_id, len(frame), crc, chunk_size, i,
                               count, len(m), 0)
                   + m + frame[i * chunk_size:(i + 1) * chunk_size])
    return out


# --- topics ---------------------------------------------------------------------------------

def topic(prefix: str, node: str, kind: str) -> str:
    """`<prefix>/<node>/<kind>`, refusing node ids that could escape their topic level."""
    if kind not in NODE_TOPICS and kind not in SPEC["ota"]["topics"]:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{check_prefix(prefix)}/{check_node_id(node)}/{kind}"


def backend_topic(prefix: str, name: str) -> str:
    return f"{check_prefix(prefix)}/{BACKEND_LEVEL}/{name}"


def parse_topic(prefix: str, topic_name: str) -> tuple[str, str]:
    """Split `<prefix>/<node>/<kind>` into (node, kind); raise TopicError for anything else."""
    head = prefix + "/"
    if not topic_name.startswith(head):
        raise TopicError(f"topic {topic_name[:80]!r} is not under prefix {prefix!r}")
    rest = topic_name[len(head):].split("/")
    if len(rest) != 2 or rest[1] not in NODE_TOPICS:
        raise TopicError(f"topic {topic_name[:80]!r} is not <prefix>/<node>/<kind>")
    node, kind = rest
    if not is_node_id(node):
        shown = node if len(node) <= 40 else node[:40] + f"... ({len(node)} chars)"
        raise TopicError(f"node id {shown!r} is not in the protocol's safe set")
    return node, kind
