"""Frames on disk and their SQLite index; knows nothing of MQTT.

Layout under the data directory:

    index.sqlite3                           the index (frames, nodes)
    <node>/latest.jpg                       hard link to (or copy of) the newest frame
    <node>/<YYYY-MM-DD>/<timestamp>_<frame id>.jpg
    <node>/<YYYY-MM-DD>/<timestamp>_<frame id>_<crc32 hex>.jpg   when the first name is taken

A JPEG becomes visible only by a hard link (or rename) after fsync, so a crash at any point
leaves either no file or a whole one; a file is written before its row, so a crash between the
two leaves a file without a row, which `reconcile` indexes on the next start. An existing file
is never replaced: a second frame that would get the same name gets the CRC in its name.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sqlite3
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from espcam.backend.jpeg import NotAJpeg, inspect_jpeg
from espcam.backend.names import check_node_id, is_node_id

log = logging.getLogger("espcam.storage")

FILE_RE = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)_(\d{1,10})(?:_[0-9a-f]{8})?\.jpg")
DATE_DIR_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
TMP_PREFIX = ".tmp-"
# A temporary file ends in .part, not .jpg: nothing that looks for JPEGs picks up a partial one.
TMP_SUFFIX = ".part"
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
CREATE TABLE IF NOT EXISTS nodes (
    node         TEXT PRIMARY KEY,
    availability TEXT,
    state        TEXT,
    last_seen    REAL,
    last_frame   INTEGER
);
"""


class StorageError(OSError):
    """The disk refused a write (full, read-only, I/O error); nothing stored was touched.
    Worth retrying: the same frame may be stored once the disk recovers."""


class StorageRejected(ValueError):
    """A frame the index will never take as it is (a constraint says it clashes with a stored
    one); retrying cannot help. Nothing stored was touched."""


@dataclass(frozen=True)
class Retention:
    """Per node; 0 means no limit."""

    max_age_days: float = 30.0
    max_bytes: int = 0


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


def _describe_db_error(e: sqlite3.Error) -> str:
    text = str(e)
    if "readonly" in text or "read-only" in text:
        return f"file system is read-only or not writable ({text})"
    if "full" in text:
        return f"disk full ({text})"
    return f"index error ({text})"


def _why_not_writable(root: Path) -> str | None:
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return "file system is read-only"
    except OSError:
        return None
    if not os.access(root, os.W_OK):
        return "no permission to write there"
    return None


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return f"disk full ({e.strerror or e})"
    if e.errno == errno.EROFS:
        return f"file system is read-only ({e.strerror or e})"
    return f"{e.strerror or e}"


def _write_all(fd: int, data: bytes) -> None:
    # The one place file bytes are written; tests replace it to simulate a full disk.
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp(t: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y%m%dT%H%M%S.") + f"{dt.microsecond // 1000:03d}Z"


def _parse_stamp(s: str) -> float:
    return datetime.strptime(s, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


# Hard links are how a file appears without ever replacing another; these file systems
# (FAT, some FUSE and network ones) have none.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


def _index_uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path))}?{mode}"


class Storage:
    def __init__(self, data_dir: Path | str, retention: Retention | None = None, *,
                 readonly: bool = False) -> None:
        """Open (and, unless `readonly`, create or upgrade) the data directory's index.
        Raises StorageError, saying why, when the directory or index cannot be used."""
        self.root = Path(data_dir).resolve()
        self.retention = retention or Retention()
        self.readonly = readonly
        # Per node [frames, bytes] in the index, counted once and then kept up to date by
        # every insert and delete here: counting on every stored frame cost 5-7 ms at 100 000
        # rows (docs/benchmarks.md). Only this process writes the index.
        self._totals: dict[str, list[int]] = {}
        try:
            self.db = self._open_readonly() if readonly else self._open()
        except (OSError, sqlite3.Error) as e:
            why = describe_os_error(e) if isinstance(e, OSError) else _describe_db_error(e)
            if not readonly and not isinstance(e, OSError):
                why = _why_not_writable(self.root) or why  # SQLite only says "unable to open"
            raise StorageError(
                e.errno if isinstance(e, OSError) else errno.EIO,
                f"cannot open the index in {self.root}: {why}") from e

    def _open(self) -> sqlite3.Connection:
        self.root.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the service owns one connection and serialises its use.
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
        db = sqlite3.connect(_index_uri(path, "mode=ro"), uri=True, check_same_thread=False)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # A WAL index closed cleanly has no -shm file, and a read-only directory cannot
            # get one; nothing can write there either, so reading it as immutable is safe.
            db.close()
            db = sqlite3.connect(_index_uri(path, "immutable=1"), uri=True,
                                 check_same_thread=False)
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
        self.db.close()

    # -- writing -------------------------------------------------------------------------

    def has(self, node: str, frame_id: int, crc: int | None = None) -> bool:
        """Is this frame stored? With `crc`, only the frame of that id with that CRC counts."""
        if crc is None:
            row = self.db.execute(
                "SELECT 1 FROM frames WHERE node = ? AND frame_id = ?", (node, frame_id)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT 1 FROM frames WHERE node = ? AND frame_id = ? AND crc = ?",
                (node, frame_id, crc),
            ).fetchone()
        return row is not None

    def _node_totals(self, node: str) -> list[int]:
        t = self._totals.get(node)
        if t is None:
            count, total = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM frames WHERE node = ?", (node,)
            ).fetchone()
            t = self._totals[node] = [count, total]
        return t

    def count(self, node: str) -> int:
        """Frames of this node in the index."""
        return self._node_totals(node)[0]

    def latest(self, node: str) -> StoredFrame | None:
        """The node's newest frame (by capture time, else arrival), or None."""
        r = self.db.execute(
            "SELECT node, frame_id, captured_at, received_at, bytes, width, height, trigger, "
            "crc, path FROM frames WHERE node = ? ORDER BY taken_at DESC, frame_id DESC, "
            "received_at DESC LIMIT 1", (node,)
        ).fetchone()
        return StoredFrame(**dict(r)) if r else None

    def forget_node(self, node: str, delete_frames: bool = False) -> int:
        """Drop the node's row (availability, state); with `delete_frames` also its frames,
        files and directory. Returns the number of frames deleted."""
        check_node_id(node)
        deleted = 0
        if delete_frames:
            for r in self.db.execute("SELECT path FROM frames WHERE node = ?", (node,)).fetchall():
                (self.root / r["path"]).unlink(missing_ok=True)
                deleted += 1
            with self.db:
                self.db.execute("DELETE FROM frames WHERE node = ?", (node,))
            self._totals.pop(node, None)
            node_dir = self.root / node
            (node_dir / "latest.jpg").unlink(missing_ok=True)
            for day in sorted(node_dir.glob("*"), reverse=True):
                try:
                    day.rmdir()
                except OSError:
                    pass  # not empty: something we did not write; left alone
            try:
                node_dir.rmdir()
            except OSError:
                pass
        with self.db:
            self.db.execute("DELETE FROM nodes WHERE node = ?", (node,))
        return deleted

    def store(
        self,
        node: str,
        frame_id: int,
        jpeg: bytes,
        *,
        crc: int,
        received_at: float,
        captured_at: float | None = None,
        width: int | None = None,
        height: int | None = None,
        trigger: str | None = None,
    ) -> StoredFrame | None:
        """Store one frame; None if (node, frame_id, crc) is already stored. Raises
        StorageError when the disk refuses (worth retrying) and StorageRejected when the index
        never will take it, in both cases after removing whatever this call had written."""
        check_node_id(node)
        taken = captured_at if captured_at is not None else received_at
        day = datetime.fromtimestamp(taken, UTC).strftime("%Y-%m-%d")
        name = f"{_stamp(taken)}_{frame_id}"
        day_dir = self.root / node / day
        tmp = day_dir / f"{TMP_PREFIX}{name}.jpg{TMP_SUFFIX}"
        placed: Path | None = None
        created = False
        try:
            if self.has(node, frame_id, crc):
                return None
            day_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, jpeg)
                os.fsync(fd)
            finally:
                os.close(fd)
            placed, created = self._place(tmp, [day_dir / f"{name}.jpg",
                                                day_dir / f"{name}_{crc:08x}.jpg"], jpeg)
            tmp.unlink(missing_ok=True)
            _fsync_dir(day_dir)
            rel = f"{node}/{day}/{placed.name}"
            totals = self._node_totals(node)
            with self.db:
                self.db.execute(
                    "INSERT INTO frames (node, frame_id, captured_at, received_at, taken_at, "
                    "bytes, width, height, trigger, crc, path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (node, frame_id, captured_at, received_at, taken, len(jpeg), width, height,
                     trigger, crc, rel),
                )
                self.db.execute(
                    "INSERT INTO nodes (node, last_seen, last_frame) VALUES (?, ?, ?) "
                    "ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, "
                    "last_frame = excluded.last_frame",
                    (node, received_at, frame_id),
                )
            totals[0] += 1
            totals[1] += len(jpeg)
        except (OSError, sqlite3.Error, StorageRejected) as e:
            # Only what this call created goes: a file that was there before is never touched.
            for leftover in (placed if created else None, tmp):
                if leftover is not None:
                    try:
                        leftover.unlink(missing_ok=True)
                    except OSError:
                        pass  # reconcile on the next start removes or indexes it
            where = f"frame {frame_id} of node {node} in {self.root}"
            if isinstance(e, StorageRejected):
                raise StorageRejected(f"cannot store {where}: {e}") from e
            if isinstance(e, sqlite3.IntegrityError):
                raise StorageRejected(
                    f"cannot store {where}: the index refuses it ({e}); it clashes with a "
                    "stored frame, which is kept") from e
            raise StorageError(
                e.errno if isinstance(e, OSError) else errno.EIO,
                f"cannot store {where}: "
                f"{describe_os_error(e) if isinstance(e, OSError) else _describe_db_error(e)}",
            ) from e
        stored = StoredFrame(node, frame_id, captured_at, received_at, len(jpeg), width, height,
                             trigger, crc, rel)
        try:
            if self.is_latest(node, rel):
                self._update_latest(node, placed)
            self.apply_retention(node, now=received_at)
        except (OSError, sqlite3.Error) as e:
            # The frame is stored and indexed; these catch up with the next frame or the
            # periodic retention run.
            log.error("frame %d of node %s is stored, but latest.jpg or retention failed: %s",
                      frame_id, node, describe_os_error(e) if isinstance(e, OSError)
                      else _describe_db_error(e))
        return stored

    def _place(self, tmp: Path, names: list[Path], jpeg: bytes) -> tuple[Path, bool]:
        """Give the fsynced temporary file the first free name of `names`, never replacing an
        existing file. Returns (path, created); created is False when a file with exactly
        these bytes already had the name (an earlier run stored it but not its row)."""
        for final in names:
            try:
                os.link(tmp, final)  # fails with EEXIST instead of replacing
                return final, True
            except FileExistsError:
                pass
            except OSError as e:
                if e.errno not in _NO_LINKS:
                    raise
                # No hard links here. The service is the only writer of its data directory,
                # so checking before the rename is enough.
                if not final.exists():
                    os.rename(tmp, final)
                    return final, True
            if _same_bytes(final, jpeg):
                return final, False
        raise StorageRejected(
            f"{', '.join(p.name for p in names)} already exist with other content; they are "
            "kept and this frame is not stored")

    def is_latest(self, node: str, path: str) -> bool:
        """Is the stored frame at `path` the node's newest (by capture time, else arrival)?
        Frames may complete out of order; latest.jpg and the retained image never go back."""
        newest = self.latest(node)
        return newest is None or newest.path == path

    def _update_latest(self, node: str, final: Path) -> None:
        latest = self.root / node / "latest.jpg"
        tmp = latest.with_name(TMP_PREFIX + "latest.jpg" + TMP_SUFFIX)
        try:
            tmp.unlink(missing_ok=True)
            try:
                os.link(final, tmp)  # no second copy of the bytes on disk
            except OSError:
                tmp.write_bytes(final.read_bytes())
            os.replace(tmp, latest)
        except OSError as e:
            # The frame itself is stored and indexed; a stale latest.jpg is not worth failing.
            log.error("cannot update %s: %s", latest, describe_os_error(e))

    # -- retention -----------------------------------------------------------------------

    def apply_retention(self, node: str, now: float | None = None) -> int:
        """Delete this node's oldest frames past max age or max bytes; keeps the newest one.
        Returns the number deleted."""
        now = time.time() if now is None else now
        ret = self.retention
        if ret.max_age_days <= 0 and ret.max_bytes <= 0:
            return 0
        # Called for every stored frame: read only what may have to go (through the
        # (node, taken_at) index), never the node's whole history, which grows to many
        # thousands of rows; a full scan made each store cost 100 ms at 100 000 rows.
        totals = self._node_totals(node)
        count, total = totals
        if count <= 1:
            return 0
        cutoff = now - ret.max_age_days * 86400 if ret.max_age_days > 0 else None
        if (cutoff is None or not self.db.execute(
                "SELECT 1 FROM frames WHERE node = ? AND taken_at < ? LIMIT 1",
                (node, cutoff)).fetchone()) and (ret.max_bytes <= 0 or total <= ret.max_bytes):
            return 0
        doomed = []
        kept = count
        cur = self.db.execute(  # oldest first, straight off the (node, taken_at) index
            "SELECT frame_id, path, bytes, taken_at FROM frames WHERE node = ? "
            "ORDER BY taken_at", (node,)
        )
        for r in cur:
            if kept <= 1:
                break  # always keep the newest frame
            too_old = cutoff is not None and r["taken_at"] < cutoff
            too_big = ret.max_bytes > 0 and total > ret.max_bytes
            if not (too_old or too_big):
                break  # oldest first: everything after this one is newer
            doomed.append(r)
            total -= r["bytes"]
            kept -= 1
        cur.close()
        for r in doomed:
            path = self.root / r["path"]
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.error("retention: cannot delete %s: %s", path, describe_os_error(e))
                continue
            with self.db:
                self.db.execute("DELETE FROM frames WHERE path = ?", (r["path"],))
            totals[0] -= 1
            totals[1] -= r["bytes"]
            try:
                path.parent.rmdir()  # only succeeds once the day directory is empty
            except OSError:
                pass
        if doomed:
            log.info("retention: deleted %d old frame(s) of node %s", len(doomed), node)
        return len(doomed)

    def apply_retention_all(self, now: float | None = None) -> dict[str, int]:
        """Retention for every node in the index, also those that stopped sending frames.
        Returns the number of frames deleted per node."""
        nodes = [r[0] for r in self.db.execute("SELECT DISTINCT node FROM frames").fetchall()]
        return {node: self.apply_retention(node, now=now) for node in nodes if is_node_id(node)}

    # -- start-up consistency ------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make files and index agree after a crash: index files that have no row, drop rows
        whose file is gone, delete temporary files of interrupted writes."""
        stats = {"indexed": 0, "dropped_rows": 0, "removed_tmp": 0, "skipped": 0}
        known = {r["path"] for r in self.db.execute("SELECT path FROM frames")}
        for node_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not is_node_id(node_dir.name):
                continue
            for tmp in node_dir.glob(TMP_PREFIX + "*"):
                tmp.unlink(missing_ok=True)
                stats["removed_tmp"] += 1
            for day_dir in sorted(p for p in node_dir.iterdir() if p.is_dir()):
                if not DATE_DIR_RE.fullmatch(day_dir.name):
                    continue
                for f in sorted(day_dir.iterdir()):
                    if f.name.startswith(TMP_PREFIX):
                        f.unlink(missing_ok=True)
                        stats["removed_tmp"] += 1
                        continue
                    rel = f"{node_dir.name}/{day_dir.name}/{f.name}"
                    m = FILE_RE.fullmatch(f.name)
                    if rel in known or not m:
                        continue
                    data = f.read_bytes()
                    try:
                        # No pixel limit: this file passed the one in force when it was stored.
                        info = inspect_jpeg(data, max_pixels=None)
                    except NotAJpeg as e:
                        log.error("reconcile: leaving %s alone, not indexed: %s", f, e)
                        stats["skipped"] += 1
                        continue
                    taken = _parse_stamp(m.group(1))
                    frame_id = int(m.group(2))
                    crc = zlib.crc32(data) & 0xFFFFFFFF
                    if self.has(node_dir.name, frame_id, crc):
                        log.warning("reconcile: %s duplicates an indexed frame; left alone", f)
                        stats["skipped"] += 1
                        continue
                    with self.db:
                        self.db.execute(
                            "INSERT INTO frames (node, frame_id, captured_at, received_at, "
                            "taken_at, bytes, width, height, trigger, crc, path) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            (node_dir.name, frame_id, taken, f.stat().st_mtime, taken,
                             len(data), info.width, info.height, None, crc, rel),
                        )
                    stats["indexed"] += 1
        for r in self.db.execute("SELECT node, frame_id, path FROM frames").fetchall():
            if not (self.root / r["path"]).is_file():
                with self.db:
                    self.db.execute("DELETE FROM frames WHERE path = ?", (r["path"],))
                stats["dropped_rows"] += 1
        self._totals.clear()
        if any(stats.values()):
            log.info("reconcile: %s", ", ".join(f"{k} {v}" for k, v in stats.items()))
        return stats

    # -- nodes ---------------------------------------------------------------------------

    def update_node(
        self,
        node: str,
        *,
        seen_at: float,
        availability: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        check_node_id(node)
        with self.db:
            self.db.execute(
                "INSERT INTO nodes (node, availability, state, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, "
                "availability = COALESCE(excluded.availability, availability), "
                "state = COALESCE(excluded.state, state)",
                (node, availability, json.dumps(state) if state is not None else None, seen_at),
            )

    # -- reading -------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        out = []
        for r in self.db.execute("SELECT * FROM nodes ORDER BY node"):
            d = dict(r)
            d["state"] = json.loads(d["state"]) if d["state"] else None
            out.append(d)
        return out

    def frames(self, node: str, since: float | None = None, limit: int = 0) -> list[StoredFrame]:
        sql = ("SELECT node, frame_id, captured_at, received_at, bytes, width, height, trigger, "
               "crc, path FROM frames WHERE node = ? AND taken_at >= ? ORDER BY taken_at, "
               "frame_id")
        args: list[Any] = [node, since if since is not None else 0.0]
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return [StoredFrame(**dict(r)) for r in self.db.execute(sql, args)]

    def frame(self, node: str, frame_id: int) -> StoredFrame | None:
        r = self.db.execute(
            "SELECT node, frame_id, captured_at, received_at, bytes, width, height, trigger, "
            "crc, path FROM frames WHERE node = ? AND frame_id = ? ORDER BY received_at DESC "
            "LIMIT 1", (node, frame_id)
        ).fetchone()
        return StoredFrame(**dict(r)) if r else None
