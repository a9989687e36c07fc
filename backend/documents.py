"""The protocol's JSON documents as the backend reads and writes them (docs/protocol.md):
commands and their arguments, settings, acks, and version 2's `confirm` and `dropped`. Every
limit and name comes from backend/protocol.json; a refusal names the rule it broke (`.rule`),
the same rule the node names for the same document (tests/vectors/).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from espcam.backend.protocol import MAX_FRAME_ID, SPEC, Refusal

_COMMANDS = SPEC["commands"]
COMMANDS = tuple(_COMMANDS["names"])
MAX_COMMAND_BYTES: int = _COMMANDS["max_bytes"]
# The broker keeps a sleeping node's session and queued commands this long
# (persistent_client_expiration 14d in deploy/mosquitto/); a longer sleep would lose them.
MAX_SLEEP_SECONDS: int = _COMMANDS["names"]["sleep"]["seconds"]["range"][1]


class CommandError(Refusal):
    """A command that the protocol does not allow (bad name, key, type or range)."""


class AckError(Refusal):
    """A message on an ack topic that is not an ack."""


class DocumentError(Refusal):
    """A `confirm` or `dropped` document (version 2) that breaks the protocol."""


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
    except (ValueError, RecursionError):
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
    except (ValueError, RecursionError):
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


# --- any JSON object from the network ---------------------------------------------------

MAX_STATE_BYTES = 16 * 1024  # a state document; also the bound for updates' small documents


class BadDocument(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule  # "too_long", "not_json" or "not_object"


def parse_object(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """A JSON object from the network, bounded in size; anything else raises BadDocument."""
    if len(payload) > max_bytes:
        raise BadDocument("too_long", f"{len(payload)} bytes, more than {max_bytes}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except ValueError as e:  # also an integer of thousands of digits
        raise BadDocument("not_json", f"not UTF-8 JSON: {str(e)[:80]}") from None
    except RecursionError:
        raise BadDocument("not_json", "JSON nested too deep") from None
    if not isinstance(doc, dict):
        raise BadDocument("not_object", "not a JSON object")
    return doc


# --- confirmations (version 2) --------------------------------------------------------------

_CONFIRM, _DROPPED = SPEC["confirm"], SPEC["dropped"]
MAX_CONFIRM_IDS: int = _CONFIRM["max_ids"]
MAX_DROPPED_IDS: int = _DROPPED["max_ids"]
MAX_DROPPED_REASON: int = _DROPPED["max_reason"]


def _doc(payload: bytes, max_bytes: int) -> dict[str, Any]:
    try:
        return parse_object(payload, max_bytes)
    except BadDocument as e:
        # The spec's rules for confirm and dropped: an oversize document is junk JSON to them.
        raise DocumentError("not_object" if e.rule == "not_object" else "not_json",
                            f"document: {e}") from None


def _frame_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        _is_int(i) and 0 <= i <= MAX_FRAME_ID for i in value)


def encode_confirm(stored: list[int], lost: list[int]) -> bytes:
    if len(stored) + len(lost) > MAX_CONFIRM_IDS:
        raise ValueError(f"a confirm names at most {MAX_CONFIRM_IDS} frames")
    return json.dumps({"stored": stored, "lost": lost}, separators=(",", ":")).encode()


def parse_confirm(payload: bytes) -> tuple[list[int], list[int]]:
    """(stored, lost) of a `confirm` document, as a node reads it."""
    doc = _doc(payload, _CONFIRM["max_bytes"])
    lists = [doc.get(name, []) for name in _CONFIRM["lists"]]
    if not all(_frame_ids(ids) for ids in lists):
        raise DocumentError("bad_list", "stored and lost must be lists of frame ids")
    if sum(len(ids) for ids in lists) > MAX_CONFIRM_IDS:
        raise DocumentError("too_many", f"more than {MAX_CONFIRM_IDS} frame ids")
    return lists[0], lists[1]


def parse_dropped(payload: bytes) -> tuple[list[int], str]:
    """(frame ids, reason) of a node's `dropped` document."""
    doc = _doc(payload, _DROPPED["max_bytes"])
    frames, reason = doc.get("frames"), doc.get("reason")
    if not _frame_ids(frames) or not frames:
        raise DocumentError("bad_frames", "frames must be a non-empty list of frame ids")
    if len(frames) > MAX_DROPPED_IDS:
        raise DocumentError("too_many", f"more than {MAX_DROPPED_IDS} frame ids")
    if not isinstance(reason, str) or not 1 <= len(reason) <= MAX_DROPPED_REASON:
        raise DocumentError("bad_reason", f"reason must be a text of 1 to {MAX_DROPPED_REASON} "
                                          "characters")
    return frames, reason
