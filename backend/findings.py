"""What the analysis stage found in stored frames, in the SQLite index beside the frames: one
`analysis` row per analysed frame (motion), one `faces_seen` row per face in it (who, how
close), both keyed by the frame's (node, frame_id, crc). index.py creates the tables; a
trigger there deletes these rows with their frame (retention, forget). Knows rows only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from espcam.backend.index import FRAME_COLUMNS, Index
from espcam.backend.records import StoredFrame

UNKNOWN = "unknown"  # a face that matched no enrolled person (people.UNKNOWN)


@dataclass
class Findings:
    node: str
    frame_id: int
    crc: int
    path: str = ""  # the stored frame's, relative to the data directory
    file: str = ""  # where a user finds it (a file's path)
    trigger: str | None = None
    analysed_at: float = field(default_factory=time.time)
    motion: float | None = None  # percent changed since the node's previous analysed frame
    motion_box: list[int] | None = None
    moved: bool = False  # motion at or over the node's threshold
    threshold: float | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)  # box, name (None), distance
    skipped: int = 0  # the node's frames skipped (analysis behind) since its findings before
    last_person: str | None = None  # of the node, from this or an earlier frame
    last_person_at: float | None = None
    ms: float = 0.0  # analysis time

    @property
    def names(self) -> list[str]:
        """Who is in the frame, closest match first; `unknown` for faces that matched no
        one."""
        ordered = sorted(self.faces, key=lambda f: (f.get("distance") is None,
                                                    f.get("distance") or 0.0))
        return [f.get("name") or UNKNOWN for f in ordered]

    def best(self) -> dict[str, Any] | None:
        """The face a doorbell event is about: the closest known one, else the closest."""
        known = [f for f in self.faces if f.get("name")]
        pool = known or self.faces
        if not pool:
            return None
        return min(pool, key=lambda f: (f.get("distance") is None, f.get("distance") or 0.0))


def record(index: Index, f: Findings) -> bool:
    """Store the findings of a frame that is still in the index; False if it is gone."""
    key = (f.node, f.frame_id, f.crc)
    with index.lock, index.db:
        if index.db.execute("SELECT 1 FROM frames WHERE node = ? AND frame_id = ? AND crc = ?",
                            key).fetchone() is None:
            return False  # deleted meanwhile (retention, forget): nothing to describe
        index.db.execute("DELETE FROM faces_seen WHERE node = ? AND frame_id = ? AND crc = ?",
                         key)
        index.db.execute(
            "INSERT OR REPLACE INTO analysis (node, frame_id, crc, analysed_at, motion, "
            "motion_box, moved, faces) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, f.analysed_at, f.motion,
             json.dumps(f.motion_box) if f.motion_box else None, int(f.moved), len(f.faces)))
        index.db.executemany(
            "INSERT INTO faces_seen (node, frame_id, crc, n, name, distance, box) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(*key, n, face.get("name"), face.get("distance"), json.dumps(face["box"]))
             for n, face in enumerate(f.faces)])
    return True


def has(index: Index, node: str, frame_id: int, crc: int) -> bool:
    with index.lock:
        return index.db.execute("SELECT 1 FROM analysis WHERE node = ? AND frame_id = ? AND "
                                "crc = ?", (node, frame_id, crc)).fetchone() is not None


def _faces(index: Index, node: str, frame_id: int, crc: int) -> list[dict[str, Any]]:
    return [{"box": json.loads(r[0]), "name": r[1], "distance": r[2]} for r in index.db.execute(
        "SELECT box, name, distance FROM faces_seen WHERE node = ? AND frame_id = ? AND "
        "crc = ? ORDER BY n", (node, frame_id, crc))]


def get(index: Index, frame: StoredFrame) -> Findings | None:
    """The findings of a stored frame, None if it was not analysed (or the index predates
    analysis)."""
    try:
        with index.lock:
            r = index.db.execute(
                "SELECT analysed_at, motion, motion_box, moved FROM analysis WHERE node = ? AND "
                "frame_id = ? AND crc = ?", (frame.node, frame.frame_id, frame.crc)).fetchone()
            if r is None:
                return None
            faces = _faces(index, frame.node, frame.frame_id, frame.crc)
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    return Findings(frame.node, frame.frame_id, frame.crc, frame.path, trigger=frame.trigger,
                    analysed_at=r[0], motion=r[1],
                    motion_box=json.loads(r[2]) if r[2] else None, moved=bool(r[3]),
                    faces=faces)


def frames(index: Index, node: str, since: float | None = None, limit: int = 0, *,
           person: str | None = None, motion: bool = False) -> list[StoredFrame]:
    """The node's stored frames, like Index.frames, that show `person` (a name, or `unknown`
    for faces that matched no one) and, with `motion`, moved past the node's threshold."""
    sql = f"SELECT {FRAME_COLUMNS} FROM frames f WHERE node = ? AND taken_at >= ?"
    args: list[Any] = [node, since if since is not None else 0.0]
    if person is not None:
        sql += (" AND EXISTS (SELECT 1 FROM faces_seen s WHERE s.node = f.node AND "
                "s.frame_id = f.frame_id AND s.crc = f.crc AND "
                + ("s.name IS NULL)" if person == UNKNOWN else "s.name = ?)"))
        if person != UNKNOWN:
            args.append(person)
    if motion:
        sql += (" AND EXISTS (SELECT 1 FROM analysis a WHERE a.node = f.node AND "
                "a.frame_id = f.frame_id AND a.crc = f.crc AND a.moved = 1)")
    sql += " ORDER BY taken_at, frame_id"
    if limit:
        sql += " LIMIT ?"
        args.append(limit)
    try:
        with index.lock:
            return [StoredFrame(**dict(r)) for r in index.db.execute(sql, args)]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []  # an index from before analysis: nothing was found in it
        raise


def last_person(index: Index, node: str) -> tuple[str, float] | None:
    """(name or `unknown`, analysed at) of the newest face seen by this node."""
    with index.lock:
        r = index.db.execute(
            "SELECT s.name, a.analysed_at FROM faces_seen s JOIN analysis a ON a.node = s.node "
            "AND a.frame_id = s.frame_id AND a.crc = s.crc WHERE s.node = ? "
            "ORDER BY a.analysed_at DESC, s.name IS NULL, s.distance LIMIT 1", (node,)).fetchone()
    return (r[0] or UNKNOWN, r[1]) if r else None
