"""The SQLite index of stored frames and known nodes (its file: indexfile.py).

Knows rows, not files: storage.py writes the files and keeps this index in step with them.
One connection per process, shared by the backend's store workers: every use of it holds
`lock`; a few per-node figures kept in memory are read without it (see `__init__`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espcam.backend.indexfile import open_for_writing, open_readonly
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.index")

_FRAME_COLUMNS = ("node, frame_id, captured_at, received_at, bytes, width, height, trigger, crc, "
                  "path")
FRAME_COLUMNS = _FRAME_COLUMNS  # findings.py selects frames the same way


@dataclass(eq=False)
class _Row:
    frame: StoredFrame
    taken_at: float
    as_last: bool
    done: bool = False
    error: Exception | None = None


class Index:
    def __init__(self, root: Path, *, readonly: bool = False) -> None:
        self.root = root
        self.lock = threading.RLock()
        # Per node [frames, bytes], counted once and then kept up to date by every insert and
        # delete here: counting on every stored frame cost 5-7 ms at 100 000 rows
        # (docs/benchmarks.md). Only this process writes the index.
        self._totals: dict[str, tuple[int, int]] = {}
        # Per node, the newest frame's ((taken_at, frame_id, received_at), path), as the same
        # ordering in SQL would find it; filled on first use, kept by add, dropped by deletes.
        self._newest: dict[str, tuple[tuple[float, int, float], str]] = {}
        # Per node, the earliest received_at (retention asks "anything too old?" per frame),
        # and the nodes known to have no frame counted lost (asked per version 2 frame).
        self._oldest: dict[str, float] = {}
        self._none_lost: set[str] = set()
        # These four are read without `lock` (each frame asks them several times, and the
        # lock is the store workers' one shared resource: waiting for it was the workers'
        # largest wait, docs/benchmarks.md, issue 14). Only this process writes the index, and
        # every write replaces a whole entry under `lock`, so a reader sees one state or the
        # next; a miss is filled under `lock` from the table.
        self._queue: list[_Row] = []  # rows waiting for the next group commit
        self._queue_lock = threading.Lock()
        self.db = open_readonly(root) if readonly else open_for_writing(root)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- frames ----------------------------------------------------------------------------

    def has(self, node: str, frame_id: int, crc: int | None = None) -> bool:
        """Is this frame indexed? With `crc`, only the frame of that id with that CRC counts."""
        sql = "SELECT 1 FROM frames WHERE node = ? AND frame_id = ?"
        args: tuple[Any, ...] = (node, frame_id)
        if crc is not None:
            sql, args = sql + " AND crc = ?", (*args, crc)
        with self.lock:
            return self.db.execute(sql, args).fetchone() is not None

    def add(self, frame: StoredFrame, taken_at: float, as_last: bool = True) -> None:
        """Index a stored frame (`as_last`: and make it the node's last); raises
        sqlite3.IntegrityError if it clashes with an indexed one. Committed when this
        returns. Rows that store workers add at the same time go in one transaction: each
        worker queues its row and waits for the lock; whoever takes it first commits every
        row queued by then (group commit), the others find theirs done."""
        row = _Row(frame, taken_at, as_last)
        with self._queue_lock:
            self._queue.append(row)
        with self.lock:
            if not row.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_rows(batch)
        if row.error is not None:
            raise row.error

    def _commit_rows(self, batch: list[_Row]) -> None:
        """Every row of `batch` ends done, with an error unless it is committed: the other
        workers waiting on them return on that alone."""
        try:
            # Counted before the insert: the first count of a node reads the table.
            for r in batch:
                self._node_totals(r.frame.node)
            with self.db:
                for r in batch:
                    self._insert(r)
        except sqlite3.IntegrityError:
            # One row clashes: each on its own, so that only that one fails.
            for r in batch:
                try:
                    with self.db:
                        self._insert(r)
                except sqlite3.Error as e:
                    r.error = type(e)(*e.args)
        except Exception as e:
            for r in batch:
                r.error = type(e)(*e.args) if isinstance(e, sqlite3.Error) else e
        for r in batch:
            r.done = True
            if r.error is None:
                f = r.frame
                count, size = self._node_totals(f.node)
                self._totals[f.node] = (count + 1, size + f.bytes)
                oldest = self._oldest.get(f.node)
                if oldest is not None and f.received_at < oldest:
                    self._oldest[f.node] = f.received_at
                newest = self._newest.get(f.node)
                key = (r.taken_at, f.frame_id, f.received_at)
                if newest is not None and key > newest[0]:
                    self._newest[f.node] = (key, f.path)

    def _insert(self, r: _Row) -> None:
        f = r.frame
        self.db.execute(
            f"INSERT INTO frames ({_FRAME_COLUMNS}, taken_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (f.node, f.frame_id, f.captured_at, f.received_at, f.bytes, f.width, f.height,
             f.trigger, f.crc, f.path, r.taken_at))
        if r.as_last:
            self.db.execute(
                "INSERT INTO nodes (node, last_seen, last_frame) VALUES (?, ?, ?) "
                "ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, "
                "last_frame = excluded.last_frame",
                (f.node, f.received_at, f.frame_id))

    def drop(self, node: str, path: str) -> None:
        """A row whose file is gone."""
        with self.lock:
            with self.db:
                self.db.execute("DELETE FROM frames WHERE path = ?", (path,))
            self._forget_cached(node)

    def remove(self, node: str, path: str, size: int) -> None:
        with self.lock:
            with self.db:
                gone = self.db.execute("DELETE FROM frames WHERE path = ?", (path,)).rowcount
            if gone:  # a row removed twice is counted once
                count, total = self._node_totals(node)
                self._totals[node] = (count - 1, total - size)
            if self._newest.get(node, ((), ""))[1] == path:
                del self._newest[node]
            self._oldest.pop(node, None)

    def _forget_cached(self, node: str) -> None:
        self._totals.pop(node, None)
        self._newest.pop(node, None)
        self._oldest.pop(node, None)

    def _node_totals(self, node: str) -> tuple[int, int]:
        t = self._totals.get(node)
        if t is None:
            count, total = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM frames WHERE node = ?", (node,)
            ).fetchone()
            t = self._totals[node] = (count, total)
        return t

    def totals(self, node: str) -> tuple[int, int]:
        """(frames, bytes) of this node in the index."""
        t = self._totals.get(node)
        if t is not None:
            return t
        with self.lock:
            return self._node_totals(node)

    def forget_totals(self) -> None:
        with self.lock:
            self._totals.clear()
            self._newest.clear()
            self._oldest.clear()
            self._none_lost.clear()

    def newest_path(self, node: str) -> str | None:
        """The path of the node's newest frame (as `latest`), kept in memory: asked twice per
        stored frame."""
        newest = self._newest.get(node)
        if newest is not None:
            return newest[1]
        with self.lock:
            newest = self._newest.get(node)
            if newest is None:
                r = self.db.execute(
                    "SELECT taken_at, frame_id, received_at, path FROM frames WHERE node = ? "
                    "ORDER BY taken_at DESC, frame_id DESC, received_at DESC LIMIT 1", (node,)
                ).fetchone()
                if r is None:
                    return None
                newest = self._newest[node] = ((r[0], r[1], r[2]), r[3])
            return newest[1]

    def latest(self, node: str) -> StoredFrame | None:
        """The node's newest frame (by capture time, else arrival), or None."""
        with self.lock:
            r = self.db.execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE node = ? "
                "ORDER BY taken_at DESC, frame_id DESC, received_at DESC LIMIT 1", (node,)
            ).fetchone()
        return StoredFrame(**dict(r)) if r else None

    def frames(self, node: str, since: float | None = None, limit: int = 0) -> list[StoredFrame]:
        sql = (f"SELECT {_FRAME_COLUMNS} FROM frames WHERE node = ? AND taken_at >= ? "
               "ORDER BY taken_at, frame_id")
        args: list[Any] = [node, since if since is not None else 0.0]
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        with self.lock:
            return [StoredFrame(**dict(r)) for r in self.db.execute(sql, args)]

    def frame(self, node: str, frame_id: int) -> StoredFrame | None:
        with self.lock:
            r = self.db.execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE node = ? AND frame_id = ? "
                "ORDER BY received_at DESC LIMIT 1", (node, frame_id)
            ).fetchone()
        return StoredFrame(**dict(r)) if r else None

    def get(self, node: str, frame_id: int, crc: int) -> StoredFrame | None:
        with self.lock:
            r = self.db.execute(
                f"SELECT {_FRAME_COLUMNS} FROM frames WHERE node = ? AND frame_id = ? AND "
                "crc = ?", (node, frame_id, crc)).fetchone()
        return StoredFrame(**dict(r)) if r else None

    def recent_ids(self, node: str, limit: int) -> list[tuple[int, int]]:
        """(frame id, crc) of the node's `limit` most recently received frames."""
        with self.lock:
            return [(r[0], r[1]) for r in self.db.execute(
                "SELECT frame_id, crc FROM frames WHERE node = ? ORDER BY received_at DESC "
                "LIMIT ?", (node, limit))]

    def older_than(self, node: str, cutoff: float) -> bool:
        """Has the node a frame received before `cutoff`?"""
        oldest = self._oldest.get(node)
        if oldest is None:
            with self.lock:
                oldest = self._oldest.get(node)
                if oldest is None:
                    r = self.db.execute("SELECT MIN(received_at) FROM frames WHERE node = ?",
                                        (node,)).fetchone()
                    if r[0] is None:
                        return False
                    oldest = self._oldest[node] = r[0]
        return oldest < cutoff

    def oldest_first(self, node: str, limit: int, batch: int = 64) -> Iterator[sqlite3.Row]:
        """The node's frames received first (frame_id, path, bytes, received_at), at most
        `limit`, read off (node, received_at) `batch` rows at a time, so a caller that stops
        early has read
        only what it looked at."""
        offset = 0
        while offset < limit:
            with self.lock:
                rows = self.db.execute(
                    "SELECT frame_id, path, bytes, received_at FROM frames WHERE node = ? "
                    "ORDER BY received_at LIMIT ? OFFSET ?",
                    (node, min(batch, limit - offset), offset)).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            offset += len(rows)

    def paths(self, node: str | None = None) -> list[tuple[str, str]]:
        """(node, path) of every indexed frame, or of one node's."""
        sql, args = "SELECT node, path FROM frames", ()
        if node is not None:
            sql, args = sql + " WHERE node = ?", (node,)
        with self.lock:
            return [(r[0], r[1]) for r in self.db.execute(sql, args).fetchall()]

    def frame_nodes(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT DISTINCT node FROM frames").fetchall()]

    def delete_node_frames(self, node: str) -> None:
        with self.lock:
            with self.db:
                self.db.execute("DELETE FROM frames WHERE node = ?", (node,))
                self.db.execute("DELETE FROM lost WHERE node = ?", (node,))
            self._forget_cached(node)

    # -- frames counted lost ---------------------------------------------------------------

    def count_lost(self, node: str, frame_ids: list[int], reason: str,
                   at: float) -> dict[int, str]:
        """Record frames as lost, each once. Per id: "new" (recorded now), "counted" (before),
        or "stored" (it is stored after all: the node dropped a frame whose confirmation had
        not reached it)."""
        out: dict[int, str] = {}
        with self.lock, self.db:
            for fid in frame_ids:
                if self.db.execute("SELECT 1 FROM frames WHERE node = ? AND frame_id = ?",
                                   (node, fid)).fetchone():
                    out[fid] = "stored"
                    continue
                self._none_lost.discard(node)
                cur = self.db.execute("INSERT OR IGNORE INTO lost (node, frame_id, reason, at) "
                                      "VALUES (?, ?, ?, ?)", (node, fid, reason, at))
                out[fid] = "new" if cur.rowcount else "counted"
        return out

    def found(self, node: str, frame_id: int) -> bool:
        """A frame counted lost that arrived after all (stored now): no longer lost."""
        # count_lost takes the node out of `_none_lost` before it records a frame. A frame
        # counted lost before this frame's job started is therefore seen (a node's `dropped`
        # is recorded as a barrier in its lane, lanes.py); a job running beside a refusal
        # is about another frame.
        if node in self._none_lost:
            return False
        with self.lock:
            if self.db.execute("SELECT 1 FROM lost WHERE node = ? LIMIT 1",
                               (node,)).fetchone() is None:
                self._none_lost.add(node)
                return False
            # Asked for every stored frame and almost always no: read first, since a DELETE
            # costs a write transaction even when it deletes nothing.
            if self.db.execute("SELECT 1 FROM lost WHERE node = ? AND frame_id = ?",
                               (node, frame_id)).fetchone() is None:
                return False
            with self.db:
                return self.db.execute("DELETE FROM lost WHERE node = ? AND frame_id = ?",
                                       (node, frame_id)).rowcount > 0

    def lost_count(self, node: str) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM lost WHERE node = ?",
                                   (node,)).fetchone()[0]

    # -- nodes -----------------------------------------------------------------------------

    def update_node(self, node: str, *, seen_at: float, availability: str | None = None,
                    state: dict[str, Any] | None = None) -> None:
        with self.lock, self.db:
            self.db.execute(
                "INSERT INTO nodes (node, availability, state, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, "
                "availability = COALESCE(excluded.availability, availability), "
                "state = COALESCE(excluded.state, state)",
                (node, availability, json.dumps(state) if state is not None else None, seen_at))

    def delete_node(self, node: str) -> None:
        with self.lock, self.db:
            self.db.execute("DELETE FROM nodes WHERE node = ?", (node,))

    def nodes(self) -> list[dict[str, Any]]:
        out = []
        with self.lock:
            rows = self.db.execute("SELECT * FROM nodes ORDER BY node").fetchall()
        for r in rows:
            d = dict(r)
            d["state"] = json.loads(d["state"]) if d["state"] else None
            out.append(d)
        return out

