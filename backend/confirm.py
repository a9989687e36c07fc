"""Telling version 2 nodes which of their frames the backend is done with (docs/protocol.md,
"Confirmation and the spool"): stored durably, or counted lost for good. Collected as frames
are settled, published on the loop's tick, one `confirm` document per node of at most 64 ids,
retained, so that a node whose session was lost still gets the last one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from espcam.backend.documents import MAX_CONFIRM_IDS, encode_confirm
from espcam.backend.protocol import topic

Publish = Callable[[str, bytes | str, bool, int], None]


class Confirmer:
    def __init__(self, prefix: str, publish: Publish) -> None:
        self.prefix, self._publish = prefix, publish
        self._stored: dict[str, list[int]] = {}
        self._lost: dict[str, list[int]] = {}
        self.counters: Counter[str] = Counter()

    def stored(self, node: str, frame_id: int) -> None:
        self._stored.setdefault(node, []).append(frame_id)

    def lost(self, node: str, frame_id: int) -> None:
        self._lost.setdefault(node, []).append(frame_id)

    def pending(self) -> int:
        return sum(map(len, self._stored.values())) + sum(map(len, self._lost.values()))

    def flush(self) -> None:
        """Publish what was settled since the last flush."""
        for node in sorted(set(self._stored) | set(self._lost)):
            stored = sorted(set(self._stored.pop(node, ())))
            lost = sorted(set(self._lost.pop(node, ())))
            while stored or lost:
                s = stored[:MAX_CONFIRM_IDS]
                lo = lost[:MAX_CONFIRM_IDS - len(s)]
                stored, lost = stored[len(s):], lost[len(lo):]
                self._publish(topic(self.prefix, node, "confirm"), encode_confirm(s, lo), True, 1)
                self.counters["confirms"] += 1
                self.counters["frames_confirmed"] += len(s) + len(lo)

    def forget(self, node: str) -> None:
        self._stored.pop(node, None)
        self._lost.pop(node, None)
        self._publish(topic(self.prefix, node, "confirm"), b"", True, 1)
