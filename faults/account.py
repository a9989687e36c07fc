"""Counting one node's frames after a fault: captured (what its camera handed the app, by frame
id: faults/rig.py says how ids are known), stored (rows of the backend's index whose file holds
exactly the captured bytes of that id), counted lost (the index's `lost` table: each id a
version 2 node's frame the backend recorded lost, once, with why), and what the backend's log
and its retained per-node report say about it.

The invariant: the captured ids are exactly the stored ids plus the counted lost ids, and no id
is both; no row of the index holds bytes that were not captured under its id.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# "LOST frame 7 of node sim-1: why", "LOST frames 3-7, 9 of node sim-1: why (6 frames)";
# past 20 runs of ids the line says "and N more runs", and the count at its end is the one.
LOST_LINE = re.compile(r"LOST frames? ([0-9][0-9, -]*?)(?: and \d+ more runs)? of node "
                       r"([a-z0-9][a-z0-9_-]*): (.*)$", re.M)
LOST_COUNT = re.compile(r"\((\d+) frames\)$")
POWER_LOST = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .*node ([a-z0-9][a-z0-9_-]*) "
                        r"lost power", re.M)


@dataclass
class NodeCount:
    node: str
    spool: str
    captured: int
    stored: int
    lost: int                      # counted lost by the backend (index)
    uncounted: list[int]           # captured, neither stored nor counted lost
    lost_reasons: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # each breaks the invariant
    logged_lost: int = 0           # ids named by LOST lines in the backend's log, all runs
    report_lost: int | None = None  # frames_lost of the retained report (its last run)
    lost_ids: list[int] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.uncounted and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"holds": self.holds}


def logged_losses(log: str) -> tuple[Counter[str], dict[str, list[float]]]:
    """Per node: frame ids the LOST lines name (a line of many ids counts them all), and the
    times (unix seconds) of its `lost power` lines."""
    lost: Counter[str] = Counter()
    for m in LOST_LINE.finditer(log):
        total = LOST_COUNT.search(m.group(3))
        if total:
            lost[m.group(2)] += int(total.group(1))
            continue
        for run in m.group(1).split(","):
            a, _, b = run.strip().partition("-")
            lost[m.group(2)] += int(b) - int(a) + 1 if b else 1
    power: dict[str, list[float]] = {}
    for m in POWER_LOST.finditer(log):
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        power.setdefault(m.group(2), []).append(t)
    return lost, power


def count_node(data_dir: Path, node: str, spool: str, captured: dict[int, bytes]) -> NodeCount:
    problems: list[str] = []
    stored: set[int] = set()
    lost: dict[int, str] = {}
    index = data_dir / "index.sqlite3"
    if not index.exists():
        problems.append("the backend wrote no index")
    else:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT frame_id, path FROM frames WHERE node = ?",
                              (node,)).fetchall()
            try:
                lost = dict(db.execute("SELECT frame_id, reason FROM lost WHERE node = ?",
                                       (node,)).fetchall())
            except sqlite3.OperationalError:
                problems.append("the index has no `lost` table")
        finally:
            db.close()
        for fid, path in rows:
            try:
                data = (data_dir / path).read_bytes()
            except OSError as e:
                problems.append(f"frame {fid}: its file cannot be read ({e.strerror})")
                continue
            if fid not in captured:
                problems.append(f"frame {fid} is stored but was never captured")
            elif data != captured[fid]:
                problems.append(f"frame {fid} is stored with other bytes than were captured")
            elif fid in stored:
                problems.append(f"frame {fid} is stored twice")
            else:
                stored.add(fid)
    for fid in sorted(set(lost) - set(captured)):
        problems.append(f"frame {fid} is counted lost but was never captured")
    for fid in sorted(set(lost) & stored):
        problems.append(f"frame {fid} is both stored and counted lost")
    uncounted = sorted(set(captured) - stored - set(lost))
    return NodeCount(node=node, spool=spool, captured=len(captured), stored=len(stored),
                     lost=len(set(lost) & (set(captured) - stored)), uncounted=uncounted,
                     lost_reasons=dict(Counter(lost.values())), problems=problems[:10],
                     lost_ids=sorted(lost))
