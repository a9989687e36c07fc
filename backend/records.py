"""What travels between the backend's stages: a reassembled frame, a stored one, and what
became of a frame in the end (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Frame:
    """A reassembled frame whose CRC matched; not yet known to be a JPEG."""

    node: str
    frame_id: int
    data: bytes
    crc32: int
    meta: dict[str, Any]
    first_chunk_at: float
    received_at: float = 0.0  # wall clock, when its last chunk arrived
    version: int = 1  # the protocol version of its chunks


@dataclass(frozen=True)
class StoredFrame:
    node: str
    frame_id: int
    captured_at: float | None
    received_at: float
    bytes: int
    width: int | None
    height: int | None
    trigger: str | None
    crc: int
    path: str  # relative to the data directory

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Outcome:
    """What the store stage made of one frame: stored (`stored`), already stored
    (`duplicate`), or refused for good (`refused`, saying why, and `counter` to count it
    under). Handed back to the loop in each node's order."""

    frame: Frame
    stored: StoredFrame | None = None
    duplicate: bool = False
    refused: str | None = None
    counter: str | None = None
    newest: bool = True  # the node's newest frame (latest.jpg and the retained image follow)
    count: int | None = None  # the node's frames in the index afterwards
    again: bool = False  # stored by an earlier run, announced again by this one
    counted: bool = False  # refused, and counted lost before (protocol v2: once per frame)
    claimed_capture: float | None = None  # a capture time not believed (the node's clock ahead)
    was_lost: bool = False  # counted lost before (its node dropped it) and stored after all


@dataclass(frozen=True)
class Losses:
    """Frames of one node recorded lost (protocol v2), per id: "new" (counted now),
    "counted" (before), or "stored" (stored after all)."""

    node: str
    reason: str
    verdicts: dict[int, str]

    def ids(self, verdict: str) -> list[int]:
        return sorted(f for f, v in self.verdicts.items() if v == verdict)
