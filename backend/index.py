"""The SQLite index of stored frames and known nodes (`index.sqlite3` in the data directory).

Knows rows, not files: storage.py writes the files and keeps this index in step with them.
One connection per process, shared by the backend's store workers: every use holds `lock`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.index")

INDEX_NAME = "index.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    node        TEXT    NOT NULL,
    frame_id    INTEGER NOT NULL,
    captured_at REAL,
    received_at REAL    NOT NULL,
    taken_at    REAL    NOT NULL,   -- captured_at if the node's clock was set, else received_at
    bytes       INTEGER NOT NULL,
    width       INTEGER,
    height      INTEGER,
    trigger     TEXT,
    crc         INTEGER NOT NULL,
    path        TEXT    NOT NULL UNIQUE,
    -- A frame id is re-used only by a node that lost its flash; then the CRC tells them apart.
    PRIMARY KEY (node, frame_id, crc)
);
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (node, taken_at);
-- Retention goes by arrival: a node's clock cannot make a frame old (or young).
CREATE INDEX IF NOT EXISTS frames_by_arrival ON frames (node, received_at);
-- Frames counted lost (protocol version 2): counted once, whatever comes again.
CREATE TABLE IF NOT EXISTS lost (
    node     TEXT    NOT NULL,
    frame_id INTEGER NOT NULL,
    reason   TEXT    NOT NULL,
    at       REAL    NOT NULL,
    PRIMARY KEY (node, frame_id)
);
-- What the analysis stage found in a frame (findings.py); gone with the frame.
CREATE TABLE IF NOT EXISTS analysis (
    node        TEXT    NOT NULL,
    frame_id    INTEGER NOT NULL,
    crc         INTEGER NOT NULL,
    analysed_at REAL    NOT NULL,
    motion      REAL,               -- percent changed since the node's previous analysed frame
    motion_box  TEXT,               -- JSON [left, top, right, bottom], frame pixels
    moved       INTEGER NOT NULL,   -- motion at or over the node's threshold
    faces       INTEGER NOT NULL,
    PRIMARY KEY (node, frame_id, crc)
);
CREATE TABLE IF NOT EXISTS faces_seen (
    node     TEXT    NOT NULL,
    frame_id INTEGER NOT NULL,
    crc      INTEGER NOT NULL,
    n        INTEGER NOT NULL,      -- the face's number in the frame
    name     TEXT,                  -- the enrolled person; NULL: matched no one
    distance REAL,                  -- to the closest enrolled face; NULL: no one enrolled
    box      TEXT    NOT NULL,      -- JSON [left, top, right, bottom], frame pixels
    PRIMARY KEY (node, frame_id, crc, n)
);
CREATE INDEX IF NOT EXISTS faces_by_name ON faces_seen (node, name);
CREATE TRIGGER IF NOT EXISTS findings_go_with_their_frame AFTER DELETE ON frames BEGIN
    DELETE FROM analysis WHERE node = OLD.node AND frame_id = OLD.frame_id AND crc = OLD.crc;
    DELETE FROM faces_seen WHERE node = OLD.node AND frame_id = OLD.frame_id AND crc = OLD.crc;
END;
CREATE TABLE IF NOT EXISTS nodes (
    node         TEXT PRIMARY KEY,
    availability TEXT,
    state        TEXT,
    last_seen    REAL,
    last_frame   INTEGER
);
"""

_FRAME_COLUMNS = ("node, frame_id, captured_at, received_at, bytes, width, height, trigger, crc, "
                  "path")
FRAME_COLUMNS = _FRAME_COLUMNS  # findings.py selects frames the same way


def describe_db_error(e: sqlite3.Error) -> str:
    text = str(e)
    if "readonly" in text or "read-only" in text:
        return f"file system is read-only or not writable ({text})"
    if "full" in text:
        return f"disk full ({text})"
    return f"index error ({text})"


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path))}?{mode}"


class Index:
    def __init__(self, root: Path, *, readonly: bool = False) -> None:
        self.root = root
        self.lock = threading.RLock()
        # Per node [frames, bytes], counted once and then kept up to date by every insert and
        # delete here: counting on every stored frame cost 5-7 ms at 100 000 rows
        # (docs/benchmarks.md). Only this process writes the index.
        self._totals: dict[str, list[int]] = {}
        self.db = self._open_readonly() if readonly else self._open()

    def _open(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / INDEX_NAME, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            # WAL: a commit costs one fsync of the log instead of several, and `espcam nodes`
            # / `frames` can read while the service writes. synchronous=NORMAL may lose the
            # last rows on power loss, never the files: each JPEG is fsynced before its row is
            # written and reconcile() indexes files without rows at start. (Keep the data
            # directory on a local file system: WAL does not work over NFS.)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self.db = db
            self._migrate()
            db.executescript(SCHEMA)
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        """For `espcam nodes` and `frames`: no pragma, no schema, nothing written, so they work
        on a read-only data directory and never change what the service writes."""
        path = self.root / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no index (has `espcam serve` run here?)",
                                    str(path))
        db = sqlite3.connect(_uri(path, "mode=ro"), uri=True, check_same_thread=False)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # A WAL index closed cleanly has no -shm file, and a read-only directory cannot
            # get one; nothing can write there either, so reading it as immutable is safe.
            db.close()
            db = sqlite3.connect(_uri(path, "immutable=1"), uri=True, check_same_thread=False)
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        db.row_factory = sqlite3.Row
        return db

    def _migrate(self) -> None:
        """Indexes written before frames were keyed by CRC too get the new key, rows kept."""
        cols = {r["name"]: r["pk"] for r in self.db.execute("PRAGMA table_info(frames)")}
        if not cols or cols.get("crc"):
            return
        log.info("index: re-keying the frames table by (node, frame_id, crc)")
        with self.db:
            self.db.execute("ALTER TABLE frames RENAME TO frames_old")
            self.db.execute("DROP INDEX IF EXISTS frames_by_time")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT INTO frames SELECT node, frame_id, captured_at, received_at, "
                            "taken_at, bytes, width, height, trigger, crc, path FROM frames_old")
            self.db.execute("DROP TABLE frames_old")

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
        sqlite3.IntegrityError if it clashes with an indexed one."""
        with self.lock:
            totals = self._node_totals(frame.node)
            with self.db:
                self.db.execute(
                    f"INSERT INTO frames ({_FRAME_COLUMNS}, taken_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (frame.node, frame.frame_id, frame.captured_at, frame.received_at,
                     frame.bytes, frame.width, frame.height, frame.trigger, frame.crc,
                     frame.path, taken_at))
                if as_last:
                    self.db.execute(
                        "INSERT INTO nodes (node, last_seen, last_frame) VALUES (?, ?, ?) "
                        "ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, "
                        "last_frame = excluded.last_frame",
                        (frame.node, frame.received_at, frame.frame_id))
            totals[0] += 1
            totals[1] += frame.bytes

    def drop(self, node: str, path: str) -> None:
        """A row whose file is gone."""
        with self.lock:
            with self.db:
                self.db.execute("DELETE FROM frames WHERE path = ?", (path,))
            self._totals.pop(node, None)

    def remove(self, node: str, path: str, size: int) -> None:
        with self.lock:
            with self.db:
                self.db.execute("DELETE FROM frames WHERE path = ?", (path,))
            totals = self._node_totals(node)
            totals[0] -= 1
            totals[1] -= size

    def _node_totals(self, node: str) -> list[int]:
        t = self._totals.get(node)
        if t is None:
            count, total = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM frames WHERE node = ?", (node,)
            ).fetchone()
            t = self._totals[node] = [count, total]
        return t

    def totals(self, node: str) -> tuple[int, int]:
        """(frames, bytes) of this node in the index."""
        with self.lock:
            count, total = self._node_totals(node)
            return count, total

    def forget_totals(self) -> None:
        with self.lock:
            self._totals.clear()

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
        with self.lock:
            return self.db.execute("SELECT 1 FROM frames WHERE node = ? AND received_at < ? "
                                   "LIMIT 1", (node, cutoff)).fetchone() is not None

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
            self._totals.pop(node, None)

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
                cur = self.db.execute("INSERT OR IGNORE INTO lost (node, frame_id, reason, at) "
                                      "VALUES (?, ?, ?, ?)", (node, fid, reason, at))
                out[fid] = "new" if cur.rowcount else "counted"
        return out

    def found(self, node: str, frame_id: int) -> bool:
        """A frame counted lost that arrived after all (stored now): no longer lost."""
        with self.lock, self.db:
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


def why_not_writable(root: Path) -> str | None:
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return "file system is read-only"
    except OSError:
        return None
    if not os.access(root, os.W_OK):
        return "no permission to write there"
    return None
