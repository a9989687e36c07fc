"""The espcam wire protocol (docs/protocol.md) as the backend speaks it: chunk headers, topics,
commands and acks. Every number and name comes from backend/protocol.json, the one
machine-readable statement of the protocol, which the node's tables and the shared test
vectors (tests/vectors/) are checked against too.

Pure functions and data only, no MQTT client. A refusal carries the name of the rule it broke
(`.rule`), the same name the node gives for the same input.
"""

from __future__ import annotations

import json
import math
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espcam.backend.names import check_node_id, check_prefix, is_node_id

SPEC: dict[str, Any] = json.loads((Path(__file__).with_name("protocol.json")).read_text())

_CHUNK = SPEC["chunk"]
VERSION: int = SPEC["protocol"]
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
AVAILABILITY = tuple(SPEC["topics"]["availability"]["values"])
# The backend's own topics live under a level that can never be a node id (node ids start
# with a letter or digit), so no camera can collide with or impersonate them.
BACKEND_LEVEL: str = SPEC["names"]["backend_level"]

_COMMANDS = SPEC["commands"]
COMMANDS = tuple(_COMMANDS["names"])
MAX_COMMAND_BYTES: int = _COMMANDS["max_bytes"]
# The broker keeps a sleeping node's session and queued commands this long
# (persistent_client_expiration 14d in deploy/mosquitto/); a longer sleep would lose them.
MAX_SLEEP_SECONDS: int = _COMMANDS["names"]["sleep"]["seconds"]["range"][1]


class Refusal(ValueError):
    """Something of the protocol's that breaks one of its rules: `rule` names it (one of
    protocol.json's refusals), the message says it for a person."""

    def __init__(self, rule: str, message: str, arg: str | None = None) -> None:
        super().__init__(message)
        self.rule, self.arg = rule, arg


class ChunkError(Refusal):
    """A frame chunk that breaks the protocol."""


class CommandError(Refusal):
    """A command that the protocol does not allow (bad name, key, type or range)."""


class AckError(Refusal):
    """A message on an ack topic that is not an ack."""


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
    if version != VERSION:
        raise refuse("version", f"unknown protocol version {version}, this receiver speaks "
                                f"{VERSION}")
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
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise refuse("meta_not_json", f"metadata is not UTF-8 JSON: {e}") from None
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
                  only: list[int] | None = None) -> list[bytes]:
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
        out.append(HEADER.pack(MAGIC, VERSION, f, frame_id, len(frame), crc, chunk_size, i,
                               count, len(m), 0)
                   + m + frame[i * chunk_size:(i + 1) * chunk_size])
    return out


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


# --- settings and commands ------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One setting of protocol.json: `type` is int, bool or choice."""

    name: str
    type: str
    default: Any
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()


SETTINGS: dict[str, Setting] = {
    name: Setting(name, s["type"], s["default"], *s.get("range", (0, 0)),
                  choices=tuple(s.get("choices", ())))
    for name, s in SPEC["settings"].items()
}
FRAME_SIZES = SETTINGS["frame_size"].choices


def new_command_id(tag: str = "cli") -> str:
    return f"{tag}-{secrets.token_hex(6)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON: true is no integer


def _check_value(arg: str, spec: dict[str, Any], value: Any) -> Any:
    """One value against its spec (an argument's or a setting's); raise CommandError."""
    kind = spec["type"]
    if kind == "int":
        if not _is_int(value):
            raise CommandError("bad_type", f"{arg} must be an integer, not {value!r}", arg)
        low, high = spec["range"]
        if not low <= value <= high:
            raise CommandError("out_of_range", f"{arg} must be {low} ... {high}, not {value}", arg)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise CommandError("bad_type", f"{arg} must be true or false, not {value!r}", arg)
    elif kind == "choice":
        if not isinstance(value, str):
            raise CommandError("bad_type", f"{arg} must be a string, not {value!r}", arg)
        if value not in spec["choices"]:
            raise CommandError("out_of_range", f"{arg} must be one of "
                               f"{', '.join(spec['choices'])}, not {value[:32]!r}", arg)
    elif kind == "int_list":
        if not isinstance(value, list):
            raise CommandError("bad_type", f"{arg} must be a list of integers", arg)
        if not 1 <= len(value) <= spec["max_items"]:
            raise CommandError("out_of_range", f"{arg} must hold 1 ... {spec['max_items']} "
                                               "items", arg)
        for item in value:
            _check_value(arg, {"type": "int", "range": spec["range"]}, item)
    elif kind == "settings":
        if not isinstance(value, dict):
            raise CommandError("bad_type", f"{arg} must be an object of settings", arg)
        if not value:
            raise CommandError("missing", f"{arg} needs at least one setting", arg)
        return {name: check_setting(name, v) for name, v in value.items()}
    else:
        raise AssertionError(f"protocol.json: unknown type {kind!r}")
    return value


def check_setting(name: str, value: Any) -> Any:
    if name not in SPEC["settings"]:
        raise CommandError("unknown_setting", f"unknown setting {name[:32]!r}; known: "
                                              f"{', '.join(SETTINGS)}", name)
    return _check_value(name, SPEC["settings"][name], value)


def check_command(doc: Any) -> dict[str, Any]:
    """A command document as the node checks it: returns {"id", "cmd", "args"} with every
    argument typed and defaulted, or raises CommandError with the rule (the node's `code`).
    Keys that are not arguments of the command are ignored, as the protocol says."""
    if not isinstance(doc, dict):
        raise CommandError("not_object", "command must be a JSON object")
    cmd_id = doc.get("id")
    id_spec = _COMMANDS["id"]
    if not isinstance(cmd_id, str) or not id_spec["min_len"] <= len(cmd_id) <= id_spec["max_len"]:
        raise CommandError("bad_id", f"id must be a string of {id_spec['min_len']} to "
                                     f"{id_spec['max_len']} characters")
    cmd = doc.get("cmd")
    if not isinstance(cmd, str):
        raise CommandError("bad_cmd", "cmd must be a string")
    if cmd not in COMMANDS:
        raise CommandError("unknown_cmd", f"unknown command {cmd[:32]!r} (known: "
                                          f"{', '.join(sorted(COMMANDS))})")
    args: dict[str, Any] = {}
    for arg, spec in _COMMANDS["names"][cmd].items():
        if arg not in doc:
            if spec.get("required"):
                raise CommandError("missing", f"{cmd} needs {arg}", arg)
            only_if = spec.get("only_if")
            if "default" in spec and (only_if is None or args.get(only_if[0]) == only_if[1]):
                args[arg] = spec["default"]
            continue
        only_if = spec.get("only_if")
        if only_if is not None and args.get(only_if[0]) != only_if[1]:
            raise CommandError("not_allowed", f"{arg} only applies to {only_if[0]} "
                                              f"{only_if[1]}", arg)
        args[arg] = _check_value(arg, spec, doc[arg])
    return {"id": cmd_id, "cmd": cmd, "args": args}


def parse_command(payload: bytes) -> dict[str, Any]:
    """A command message as the node reads it (check_command after the size and JSON)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("too_long", f"command longer than {MAX_COMMAND_BYTES} bytes")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CommandError("not_json", "command is not valid JSON") from None
    return check_command(doc)


def build_command(cmd: str, cmd_id: str | None = None, **args: Any) -> dict[str, Any]:
    """A command document for the node, checked as the node will check it; None arguments are
    left out. Raises CommandError for anything the node would refuse, and for arguments the
    command does not take (a mistake of the caller's, which the node would ignore)."""
    doc: dict[str, Any] = {"id": cmd_id or new_command_id(), "cmd": cmd}
    doc.update({k: v for k, v in args.items() if v is not None})
    check_command(doc)
    unknown = set(doc) - {"id", "cmd"} - set(_COMMANDS["names"][cmd])
    if unknown:
        raise CommandError("not_allowed", f"{cmd} takes no {', '.join(sorted(unknown))}")
    if len(encode_command(doc)) > MAX_COMMAND_BYTES:
        raise CommandError("too_long", f"command is longer than {MAX_COMMAND_BYTES} bytes")
    return doc


def encode_command(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --- acks -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ack:
    id: str | None
    cmd: str | None
    ok: bool
    result: Any = None
    error: str | None = None
    code: str | None = None  # the refusal's rule, when the node refused the command


def parse_ack(payload: bytes) -> Ack:
    """Parse an ack; raise AckError if it is not the protocol's ack document."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise AckError("not_json", "ack is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise AckError("not_object", "ack must be a JSON object")
    if not isinstance(doc.get("ok"), bool):
        raise AckError("ok_not_bool", "ack must have a boolean 'ok'")
    ack_id, cmd, error, code = doc.get("id"), doc.get("cmd"), doc.get("error"), doc.get("code")
    return Ack(
        id=ack_id if isinstance(ack_id, str) else None,
        cmd=cmd if isinstance(cmd, str) else None,
        ok=doc["ok"],
        result=doc.get("result"),
        error=str(error) if error is not None else None,
        code=code if isinstance(code, str) else None,
    )
