"""The nodes the backend knows in this run: each one's availability and state document as the
node last published them, and the backend's own figures for it (frames stored and lost, last
capture), published retained on `<prefix>/_backend/nodes/<node>` for Home Assistant's frames
stored, frames lost and last capture entities. The node cannot report these itself: they are
what arrived and what was lost on the way.

A node is tracked once it has announced itself (its availability or state document, which
every node publishes after connecting and the broker keeps retained) or is in the index from an
earlier run: only then does it get a view, a report, Home Assistant discovery and one of the
`max_nodes` places. Chunks under an id that never announced itself are reassembled in a small
budget of their own (reassembly.py) and cost nothing here. Bounded: at most `max_nodes` nodes
are tracked; a node beyond that is ignored (and counted) until the service restarts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.nodes")


@dataclass
class NodeView:
    """What the backend currently knows about one node."""

    availability: str | None = None
    state: dict[str, Any] | None = None
    last_seen: float | None = None
    last_frame: int | None = None


def iso_utc(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds") if t else None


@dataclass
class NodeReport:
    frames_stored: int = 0  # frames of the node in the index now (retention deletes old ones)
    frames_lost: int = 0  # frames given up since the backend started
    last_frame: int | None = None
    last_capture: float | None = None  # capture time of the newest frame, else its arrival
    # "offline" once a sleeping node is overdue: it said when it would wake, and did not.
    available: str = "online"

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
            "available": self.available,
            "time": round(time.time(), 3),
        }

    def encode(self, node: str) -> str:
        return json.dumps(self.doc(node), separators=(",", ":"))


class NodeBook:
    def __init__(self, max_nodes: int,
                 from_index: Callable[[str], tuple[int, StoredFrame | None]]) -> None:
        """`from_index(node)`: (frames stored, newest stored frame) of a node, from the index."""
        self.max_nodes = max_nodes
        self._from_index = from_index
        self.views: dict[str, NodeView] = {}
        self.reports: dict[str, NodeReport] = {}
        # Announced in this run, or known from the index: bounded by max_nodes plus the
        # index's rows (each row is a node that was tracked once).
        self._announced: set[str] = set()
        self._due: set[str] = set()  # reports to publish on the next tick: a flood costs one
        self.counters: Counter[str] = Counter()

    def known(self, nodes: list[str]) -> None:
        """Nodes of the index, from earlier runs: announced already."""
        self._announced.update(nodes)

    def announce(self, node: str) -> None:
        if node in self._announced or len(self._announced) < 2 * self.max_nodes + 10_000:
            self._announced.add(node)

    def is_announced(self, node: str) -> bool:
        return node in self._announced

    def admit(self, node: str) -> tuple[NodeView | None, bool]:
        """The node's view, made on its first valid message: (view, new). (None, False) when
        `max_nodes` nodes are already tracked."""
        view = self.views.get(node)
        new = view is None
        if view is None:
            if len(self.views) >= self.max_nodes:
                self.counters["refused_nodes"] += 1
                return None, False
            view = self.views[node] = NodeView()
            self.report(node)
        view.last_seen = time.time()
        return view, new

    def report(self, node: str) -> NodeReport:
        """The backend's figures for a node (read from the index the first time); publishing
        it is due on the next tick."""
        report = self.reports.get(node)
        if report is None:
            try:
                count, latest = self._from_index(node)
                report = NodeReport.from_storage(count, latest)
            except Exception:
                report = NodeReport()  # an unreadable index must not stop the live node
            self.reports[node] = report
        self._due.add(node)
        return report

    def stored(self, node: str, frame: StoredFrame, count: int | None, newest: bool) -> None:
        report = self.report(node)
        count = report.frames_stored + 1 if count is None else count
        if newest:
            report.stored(frame, count)
        else:
            report.frames_stored = count
        view = self.views.get(node)
        if view is not None:
            view.last_frame = frame.frame_id

    def lost(self, node: str, n: int = 1) -> None:
        self.report(node).frames_lost += n

    def check_overdue(self, now: float) -> None:
        """A node asleep past the wake it announced (plus a grace) is taken for dead: its
        report says `available: offline`, which Home Assistant requires (discovery.py)."""
        for node, view in self.views.items():
            due = wake_due(view)
            available = "offline" if due is not None and now > due else "online"
            report = self.reports.get(node)
            if report is not None and report.available != available:
                report.available = available
                self._due.add(node)
                if available == "offline":
                    log.warning("node %s is overdue: it went to sleep until %s and has not "
                                "come back; Home Assistant shows it unavailable", node,
                                iso_utc(due))

    def take_due(self) -> list[tuple[str, NodeReport]]:
        due = [(n, self.reports[n]) for n in sorted(self._due) if n in self.reports]
        self._due.clear()
        return due

    def forget(self, node: str) -> None:
        self._announced.discard(node)
        self.views.pop(node, None)
        self.reports.pop(node, None)
        self._due.discard(node)


# A late wake is not a dead node: Wi-Fi and the broker take their time after a wake.
WAKE_GRACE = 120.0


def wake_due(view: NodeView) -> float | None:
    """When a sleeping node should be back at the latest (unix seconds), or None if it is
    not asleep or nothing says when it wakes."""
    if view.availability != "sleeping" or not isinstance(view.state, dict):
        return None
    until = view.state.get("sleep_until")
    if isinstance(until, int | float) and not isinstance(until, bool):
        slept = max(0.0, until - (view.last_seen or until))
        return until + max(WAKE_GRACE, 0.1 * slept)
    interval = (view.state.get("settings") or {}).get("sleep_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 0 and (
            view.last_seen is not None):
        return view.last_seen + interval + max(WAKE_GRACE, 0.1 * interval)
    return None
