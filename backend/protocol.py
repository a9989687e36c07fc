"""The espcam wire protocol v1 (docs/protocol.md): chunk headers, topics, commands and acks.

Pure functions and data only, no MQTT client: everything here is checked against the shared
test vectors in tests/vectors/.
"""

from __future__ import annotations

import json
import math
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from espcam.backend.names import check_node_id, check_prefix, is_node_id

VERSION = 1
MAGIC = b"EC"
HEADER = struct.Struct(">2sBBIIIIHHHH")
HEADER_LEN = HEADER.size  # 28
FLAG_META = 0x01
FLAG_RESENT = 0x02
MAX_TOTAL_LEN = 16_777_216
MIN_CHUNK_SIZE = 256
MAX_CHUNK_SIZE = 65_536
MAX_COUNT = 65_535
MAX_COMMAND_BYTES = 1024
MAX_META_LEN = 0xFFFF  # meta_len is 16 bits
# The largest message a valid chunk can be; anything bigger on any topic is junk.
MAX_MESSAGE_BYTES = HEADER_LEN + MAX_META_LEN + MAX_CHUNK_SIZE
# The node reserves frame ids in flash in blocks of this many ("Frame ids"): after a power
# loss it continues from the next multiple of it.
FRAME_ID_BLOCK = 256
# The broker keeps a sleeping node's session and queued commands this long
# (persistent_client_expiration 14d in deploy/mosquitto/); a longer sleep would lose them.
MAX_SLEEP_SECONDS = 14 * 24 * 3600

# Topic kinds under <prefix>/<node>/, see "Topic tree".
NODE_TOPICS = ("availability", "state", "frame", "cmd", "ack", "image", "event")
AVAILABILITY = ("online", "sleeping", "offline")
# The backend's own topics live under a level that can never be a node id (node ids start
# with a letter or digit), so no camera can collide with or impersonate them.
BACKEND_LEVEL = "_backend"


class ChunkError(ValueError):
    """A frame chunk that breaks the protocol; the message says which rule."""


class TopicError(ValueError):
    """A topic that is not one of ours, or whose node level is not a valid node id."""


class CommandError(ValueError):
    """A command that the protocol does not allow (bad name, key, type or range)."""


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

    @property
    def resent(self) -> bool:
        return bool(self.flags & FLAG_RESENT)

    def shape(self) -> tuple[int, int, int, int]:
        """The fields every chunk of one frame must agree on."""
        return (self.total_len, self.crc32, self.chunk_size, self.count)


def decode_chunk(message: bytes) -> Chunk:
    """Decode and validate one frame chunk; raise ChunkError with the broken rule."""
    if len(message) < HEADER_LEN:
        raise ChunkError(f"message of {len(message)} bytes is shorter than the 28-byte header")
    (magic, version, flags, frame_id, total_len, crc, chunk_size, index, count, meta_len,
     reserved) = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ChunkError(f"bad magic {magic!r}, expected b'EC'")
    if version != VERSION:
        raise ChunkError(f"unknown protocol version {version}, this receiver speaks {VERSION}")
    if flags & ~(FLAG_META | FLAG_RESENT):
        raise ChunkError(f"unknown flag bits in {flags:#04x}")
    if reserved != 0:
        raise ChunkError(f"reserved field is {reserved}, must be 0")
    if not 1 <= total_len <= MAX_TOTAL_LEN:
        raise ChunkError(f"total_len {total_len} outside 1 ... {MAX_TOTAL_LEN}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ChunkError(f"chunk_size {chunk_size} outside {MIN_CHUNK_SIZE} ... {MAX_CHUNK_SIZE}")
    expected_count = math.ceil(total_len / chunk_size)
    if count != expected_count:
        raise ChunkError(
            f"count {count} disagrees with total_len {total_len} and chunk_size {chunk_size} "
            f"(expected {expected_count})"
        )
    if count > MAX_COUNT:
        raise ChunkError(f"count {count} above {MAX_COUNT}")
    if index >= count:
        raise ChunkError(f"index {index} not below count {count}")
    has_meta = bool(flags & FLAG_META)
    if not has_meta and meta_len:
        raise ChunkError(f"meta_len {meta_len} but the metadata flag is clear")
    if has_meta and index != 0:
        raise ChunkError(f"metadata on chunk {index}; only chunk 0 may carry it")
    if HEADER_LEN + meta_len > len(message):
        raise ChunkError(f"meta_len {meta_len} runs beyond the {len(message)}-byte message")
    meta = None
    if has_meta:
        raw = message[HEADER_LEN:HEADER_LEN + meta_len]
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ChunkError(f"metadata is not UTF-8 JSON: {e}") from None
        if not isinstance(meta, dict):
            raise ChunkError(f"metadata is a JSON {type(meta).__name__}, not an object")
    payload = message[HEADER_LEN + meta_len:]
    expected_len = chunk_size if index < count - 1 else total_len - (count - 1) * chunk_size
    if len(payload) != expected_len:
        raise ChunkError(
            f"payload of chunk {index}/{count} is {len(payload)} bytes, expected {expected_len}"
        )
    return Chunk(flags, frame_id, total_len, crc, chunk_size, index, count, meta, bytes(payload))


# --- topics ---------------------------------------------------------------------------------

def topic(prefix: str, node: str, kind: str) -> str:
    """`<prefix>/<node>/<kind>`, refusing node ids that could escape their topic level."""
    if kind not in NODE_TOPICS:
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


# --- commands -------------------------------------------------------------------------------

FRAME_SIZES = ("QQVGA", "QCIF", "HQVGA", "QVGA", "CIF", "HVGA", "VGA", "SVGA", "XGA", "HD",
               "SXGA", "UXGA")
# name: (type, low, high) for numbers, (str, choices) for strings, (bool,) for booleans.
SETTINGS: dict[str, tuple[Any, ...]] = {
    "interval": (int, 0, 86_400),
    "frame_size": (str, FRAME_SIZES),
    "quality": (int, 1, 100),
    "flash_on_capture": (bool,),
    "sleep_interval": (int, 0, 86_400),
    "awake": (int, 0, 600),
    "motion_cooldown": (int, 0, 3600),
}
COMMANDS = ("capture", "flash", "sleep", "config", "reboot", "status", "resend")


def new_command_id(tag: str = "cli") -> str:
    return f"{tag}-{secrets.token_hex(6)}"


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    # bool is an int in Python but not in JSON's eyes
    if not isinstance(value, int) or isinstance(value, bool):
        raise CommandError(f"{name} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise CommandError(f"{name} must be {low} ... {high}, not {value}")
    return value


def check_setting(name: str, value: Any) -> Any:
    spec = SETTINGS.get(name)
    if spec is None:
        raise CommandError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    kind = spec[0]
    if kind is int:
        return _int_in(name, value, spec[1], spec[2])
    if kind is bool:
        if not isinstance(value, bool):
            raise CommandError(f"{name} must be true or false, not {value!r}")
        return value
    if value not in spec[1]:
        raise CommandError(f"{name} must be one of {', '.join(spec[1])}, not {value!r}")
    return value


def build_command(cmd: str, cmd_id: str | None = None, **args: Any) -> dict[str, Any]:
    """A validated command document; raise CommandError for anything the node would refuse."""
    if cmd not in COMMANDS:
        raise CommandError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    cmd_id = cmd_id or new_command_id()
    if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= 64:
        raise CommandError("command id must be a string of 1 to 64 characters")
    doc: dict[str, Any] = {"id": cmd_id, "cmd": cmd}
    allowed: tuple[str, ...] = ()
    if cmd == "flash":
        allowed = ("state", "ms")
        if args.get("state") not in ("on", "off", "pulse"):
            raise CommandError("state must be one of on, off, pulse")
        doc["state"] = args["state"]
        if args.get("ms") is not None:
            if args["state"] != "pulse":
                raise CommandError("ms only applies to state pulse")
            doc["ms"] = _int_in("ms", args["ms"], 1, 5000)
    elif cmd == "sleep":
        allowed = ("seconds",)
        doc["seconds"] = _int_in("seconds", args.get("seconds"), 1, MAX_SLEEP_SECONDS)
    elif cmd == "config":
        allowed = ("set",)
        settings = args.get("set")
        if not isinstance(settings, dict) or not settings:
            raise CommandError("config needs at least one setting")
        doc["set"] = {k: check_setting(k, v) for k, v in settings.items()}
    elif cmd == "resend":
        allowed = ("frame", "chunks")
        doc["frame"] = _int_in("frame", args.get("frame"), 0, 0xFFFFFFFF)
        if args.get("chunks") is not None:
            chunks = args["chunks"]
            if not isinstance(chunks, list | tuple) or not chunks:
                raise CommandError("chunks must be a non-empty list of chunk indices")
            doc["chunks"] = [_int_in("chunk", c, 0, MAX_COUNT - 1) for c in chunks]
    unknown = set(args) - set(allowed)
    if unknown:
        raise CommandError(f"{cmd} takes no {', '.join(sorted(unknown))}")
    if len(encode_command(doc)) > MAX_COMMAND_BYTES:
        raise CommandError(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    return doc


def encode_command(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Ack:
    id: str | None
    cmd: str | None
    ok: bool
    result: Any = None
    error: str | None = None


def parse_ack(payload: bytes) -> Ack:
    """Parse an ack; raise ValueError if it is not the protocol's ack document."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"ack is not UTF-8 JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise ValueError("ack must be a JSON object with a boolean 'ok'")
    ack_id, cmd = doc.get("id"), doc.get("cmd")
    error = doc.get("error")
    return Ack(
        id=ack_id if isinstance(ack_id, str) else None,
        cmd=cmd if isinstance(cmd, str) else None,
        ok=doc["ok"],
        result=doc.get("result"),
        error=str(error) if error is not None else None,
    )
