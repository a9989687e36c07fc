"""Node ids and topic prefixes: the character sets docs/protocol.md allows ("Names").

Kept apart from protocol.py so that storage can check a node id before it becomes a path
component without importing anything that knows about MQTT.
"""

from __future__ import annotations

import re

# Safe as a file name, an SQL value, an MQTT topic level and a Home Assistant unique id.
NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
PREFIX_LEVEL_RE = re.compile(r"[A-Za-z0-9_-]+")


def is_node_id(value: object) -> bool:
    return isinstance(value, str) and NODE_ID_RE.fullmatch(value) is not None


def check_node_id(value: object) -> str:
    """Return `value` if it is a valid node id, else raise ValueError saying why."""
    if not isinstance(value, str):
        raise ValueError(f"node id must be a string, not {type(value).__name__}")
    if is_node_id(value):
        return value
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise ValueError(
        f"invalid node id {shown!r}: need 1 to 32 of a-z 0-9 _ -, starting with a letter or digit"
    )


def check_prefix(value: str) -> str:
    """Return `value` if it is a valid topic prefix (levels of [A-Za-z0-9_-] joined by /)."""
    if not value or not all(PREFIX_LEVEL_RE.fullmatch(level) for level in value.split("/")):
        raise ValueError(
            f"invalid topic prefix {value!r}: need levels of A-Z a-z 0-9 _ - joined by /"
        )
    return value
