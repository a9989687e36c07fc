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
import logging
import os
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from espcam.backend.index import Index
from espcam.backend.indexfile import INDEX_NAME, describe_db_error, why_not_writable
from espcam.backend.layout import TMP_PREFIX, TMP_SUFFIX, stamp
from espcam.backend.names import check_node_id, is_node_id
from espcam.backend.reconcile import reconcile
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.storage")

__all__ = ["INDEX_NAME", "Retention", "Storage", "StorageError", "StorageRejected",
           "StoredFrame", "describe_os_error"]



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


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


# Hard links are how a file appears without ever replacing another; these file systems
# (FAT, some FUSE and network ones) have none.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


class Storage:
    """Frames as files under the data directory, and the index that lists them: the local
    disk's FrameStorage (framestorage.py). Safe to use from several threads at once (the store
    workers), also for several frames of one node: what one node's frames share (latest.jpg,
    retention's bookkeeping) is changed under that node's lock."""

    def __init__(self, data_dir: Path | str, retention: Retention | None = None, *,
                 readonly: bool = False) -> None:
        """Open (and, unless `readonly`, create or upgrade) the data directory's index.
        Raises StorageError, saying why, when the directory or index cannot be used."""
        self.root = Path(data_dir).resolve()
        self.retention = retention or Retention()
        self.readonly = readonly
        # Striped, so that the locks stay as many however many nodes come and go.
        self._node_locks = [threading.Lock() for _ in range(64)]
        try:
            self.index = Index(self.root, readonly=readonly)
        except (OSError, sqlite3.Error) as e:
            why = describe_os_error(e) if isinstance(e, OSError) else describe_db_error(e)
            if not readonly and not isinstance(e, OSError):
                why = why_not_writable(self.root) or why  # SQLite only says "unable to open"
            raise StorageError(
                e.errno if isinstance(e, OSError) else errno.EIO,
                f"cannot open the index in {self.root}: {why}") from e

    @property
    def db(self) -> sqlite3.Connection:
        return self.index.db

    @db.setter
    def db(self, value: sqlite3.Connection) -> None:
        self.index.db = value

    def close(self) -> None:
        self.index.close()

    def _lock_of(self, node: str) -> threading.Lock:
        return self._node_locks[zlib.crc32(node.encode()) % len(self._node_locks)]

    # -- reading ---------------------------------------------------------------------------

    def has(self, node: str, frame_id: int, crc: int | None = None) -> bool:
        """Is this frame stored? With `crc`, only the frame of that id with that CRC counts."""
        return self.index.has(node, frame_id, crc)

    def count(self, node: str) -> int:
        """Frames of this node in the index."""
        return self.index.totals(node)[0]

    def latest(self, node: str) -> StoredFrame | None:
        """The node's newest frame (by capture time, else arrival), or None."""
        return self.index.latest(node)

    def is_latest(self, node: str, path: str) -> bool:
        """Is the stored frame at `path` the node's newest (by capture time, else arrival)?
        Frames may complete out of order; latest.jpg and the retained image never go back."""
        newest = self.index.newest_path(node)
        return newest is None or newest == path

    def nodes(self) -> list[dict]:
        return self.index.nodes()

    def frames(self, node: str, since: float | None = None, limit: int = 0) -> list[StoredFrame]:
        return self.index.frames(node, since, limit)

    def frame(self, node: str, frame_id: int) -> StoredFrame | None:
        return self.index.frame(node, frame_id)

    def update_node(self, node: str, *, seen_at: float, availability: str | None = None,
                    state: dict | None = None) -> None:
        self.index.update_node(check_node_id(node), seen_at=seen_at, availability=availability,
                               state=state)

    def read(self, stored: StoredFrame) -> bytes:
        return (self.root / stored.path).read_bytes()

    def locate(self, stored: StoredFrame) -> str:
        return str(self.root / stored.path)

    # -- writing ---------------------------------------------------------------------------

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
        """Store one frame; None if (node, frame_id, crc) is already stored (the one place that
        question is asked). Raises StorageError when the disk refuses (worth retrying) and
        StorageRejected when the index never will take it, in both cases after removing
        whatever this call had written."""
        check_node_id(node)
        taken = captured_at if captured_at is not None else received_at
        day = datetime.fromtimestamp(taken, UTC).strftime("%Y-%m-%d")
        name = f"{stamp(taken)}_{frame_id}"
        day_dir = self.root / node / day
        # The CRC too: two frames of one id (a node that lost its flash) may be written at once.
        tmp = day_dir / f"{TMP_PREFIX}{name}_{crc:08x}.jpg{TMP_SUFFIX}"
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
            stored = StoredFrame(node, frame_id, captured_at, received_at, len(jpeg), width,
                                 height, trigger, crc, f"{node}/{day}/{placed.name}")
            self.index.add(stored, taken)
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
                f"{describe_os_error(e) if isinstance(e, OSError) else describe_db_error(e)}",
            ) from e
        try:
            # Under the node's lock, each frame's "newest?" is asked after every row added
            # before it, so latest.jpg never goes back, whichever frame finishes first.
            with self._lock_of(node):
                if self.is_latest(node, stored.path):
                    self._update_latest(node, placed)
                self._apply_retention(node, received_at)
        except (OSError, sqlite3.Error) as e:
            # The frame is stored and indexed; these catch up with the next frame or the
            # periodic retention run.
            log.error("frame %d of node %s is stored, but latest.jpg or retention failed: %s",
                      frame_id, node, describe_os_error(e) if isinstance(e, OSError)
                      else describe_db_error(e))
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

    def forget_node(self, node: str, delete_frames: bool = False) -> int:
        """Drop the node's row (availability, state); with `delete_frames` also its frames,
        files and directory. Returns the number of frames deleted."""
        check_node_id(node)
        deleted = 0
        if delete_frames:
            for _, path in self.index.paths(node):
                (self.root / path).unlink(missing_ok=True)
                deleted += 1
            self.index.delete_node_frames(node)
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
        self.index.delete_node(node)
        return deleted

    # -- retention -------------------------------------------------------------------------

    def apply_retention(self, node: str, now: float | None = None) -> int:
        """Delete this node's oldest frames past max age or max bytes; keeps the newest one.
        Age is counted from when a frame was received: a node whose clock is far behind must
        not have its frames deleted as they arrive. Returns the number deleted."""
        with self._lock_of(node):
            return self._apply_retention(node, time.time() if now is None else now)

    def _apply_retention(self, node: str, now: float) -> int:
        ret = self.retention
        if ret.max_age_days <= 0 and ret.max_bytes <= 0:
            return 0
        # Called for every stored frame: read only what may have to go (through the
        # (node, received_at) index), never the node's whole history, which grows to many
        # thousands of rows; a full scan made each store cost 100 ms at 100 000 rows.
        count, total = self.index.totals(node)
        if count <= 1:
            return 0
        cutoff = now - ret.max_age_days * 86400 if ret.max_age_days > 0 else None
        too_old_any = cutoff is not None and self.index.older_than(node, cutoff)
        if not too_old_any and (ret.max_bytes <= 0 or total <= ret.max_bytes):
            return 0
        doomed = []
        # Oldest first, a few at a time: usually one frame goes, never the whole history read.
        for r in self.index.oldest_first(node, count - 1):
            too_old = cutoff is not None and r["received_at"] < cutoff
            too_big = ret.max_bytes > 0 and total > ret.max_bytes
            if not (too_old or too_big):
                break  # everything after this one is newer
            doomed.append(r)
            total -= r["bytes"]
        deleted = 0
        for r in doomed:
            path = self.root / r["path"]
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.error("retention: cannot delete %s: %s", path, describe_os_error(e))
                continue
            self.index.remove(node, r["path"], r["bytes"])
            deleted += 1
            try:
                path.parent.rmdir()  # only succeeds once the day directory is empty
            except OSError:
                pass
        if deleted:
            log.info("retention: deleted %d old frame(s) of node %s", deleted, node)
        return deleted

    def apply_retention_all(self, now: float | None = None) -> dict[str, int]:
        """Retention for every node in the index, also those that stopped sending frames.
        Returns the number of frames deleted per node."""
        return {node: self.apply_retention(node, now=now)
                for node in self.index.frame_nodes() if is_node_id(node)}

    # -- start-up consistency --------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make files and index agree after a crash (reconcile.py)."""
        return reconcile(self.root, self.index)
