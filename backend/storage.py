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
import time
from datetime import UTC, datetime
from pathlib import Path

from espcam.backend.indexed import (
    IndexedFrames,
    Retention,
    StorageError,
    StorageRejected,
    describe_os_error,
    due_for_deletion,
    open_index,
    store_failed,
)
from espcam.backend.indexfile import INDEX_NAME, describe_db_error
from espcam.backend.layout import TMP_PREFIX, TMP_SUFFIX, stamp
from espcam.backend.names import check_node_id, is_node_id
from espcam.backend.reconcile import reconcile
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.storage")

__all__ = ["INDEX_NAME", "Retention", "Storage", "StorageError", "StorageRejected",
           "StoredFrame", "describe_os_error"]



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


class Storage(IndexedFrames):
    """Frames as files under the data directory, and the index that lists them: the local
    disk's FrameStorage (framestorage.py). Safe to use from several threads at once (the store
    workers), also for several frames of one node: what one node's frames share (latest.jpg,
    retention's bookkeeping) is changed under that node's lock."""

    def __init__(self, data_dir: Path | str, retention: Retention | None = None, *,
                 readonly: bool = False) -> None:
        """Open (and, unless `readonly`, create or upgrade) the data directory's index.
        Raises StorageError, saying why, when the directory or index cannot be used."""
        super().__init__()
        self.root = Path(data_dir).resolve()
        self.retention = retention or Retention()
        self.readonly = readonly
        self.index = open_index(self.root, readonly)

    @property
    def db(self) -> sqlite3.Connection:
        return self.index.db

    @db.setter
    def db(self, value: sqlite3.Connection) -> None:
        self.index.db = value

    # -- reading (the rest: IndexedFrames, from the index) -------------------------------

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
            raise store_failed(f"frame {frame_id} of node {node} in {self.root}", e) from e
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
        """Delete this node's oldest frames past max age or max bytes (due_for_deletion);
        keeps the newest one. Returns the number deleted."""
        with self._lock_of(node):
            return self._apply_retention(node, time.time() if now is None else now)

    def _apply_retention(self, node: str, now: float) -> int:
        doomed = due_for_deletion(self.index, node, self.retention, now)
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
