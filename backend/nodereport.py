"""The backend's own figures per node, published retained on `<prefix>/_backend/nodes/<node>`
(docs/protocol.md, "The backend's own topics"): what Home Assistant's frames stored, frames
lost and last capture entities read. The node cannot report these itself: they are what
arrived and what was lost on the way. (The flash LED's state is the node's own: its state
document says it, and Home Assistant's light reads it there.)"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from espcam.backend.storage import StoredFrame


def iso_utc(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") if t else None


@dataclass
class NodeReport:
    frames_stored: int = 0  # frames of the node in the index now (retention deletes old ones)
    frames_lost: int = 0  # frames given up since the backend started
    last_frame: int | None = None
    last_capture: float | None = None  # capture time of the newest frame, else its arrival

    @classmethod
    def from_storage(cls, count: int, latest: StoredFrame | None) -> NodeReport:
        r = cls(frames_stored=count)
        if latest is not None:
            r.stored(latest, count)
        return r

    def stored(self, frame: StoredFrame, count: int) -> None:
        self.frames_stored = count
        self.last_frame = frame.frame_id
        self.last_capture = frame.captured_at or frame.received_at

    def doc(self, node: str) -> dict[str, Any]:
        return {
            "node": node,
            "frames_stored": self.frames_stored,
            "frames_lost": self.frames_lost,
            "last_frame": self.last_frame,
            "last_capture": iso_utc(self.last_capture),
            "time": round(time.time(), 3),
        }

    def encode(self, node: str) -> str:
        return json.dumps(self.doc(node), separators=(",", ":"))
