"""The check and store stages, as jobs on the lanes (lanes.py): a reassembled frame is checked
(a JPEG, within its limits, bounded in time before any decoding: jpeg.py) and then written
durably (storage.py). What became of it goes back to the loop as an Outcome (records.py).

A disk that refuses keeps the frame in its lane and retries it (Retry), so nothing is lost to
a full or read-only disk while memory lasts; the lanes' bounds say how long that is.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from espcam.backend.config import Settings
from espcam.backend.jpeg import JpegInfo, NotAJpeg, inspect_jpeg
from espcam.backend.lanes import Job, Retry
from espcam.backend.records import Frame, Outcome
from espcam.backend.storage import Storage, StorageError, StorageRejected

log = logging.getLogger("espcam.store")

# (jpeg bytes, max_pixels, max_scans) -> JpegInfo, or NotAJpeg. Replaceable, e.g. by a test
# that makes one frame slow to check.
Check = Callable[[bytes, int | None, int | None], JpegInfo]


class StorageHealth:
    """Whether the disk takes frames: the last error, or None. Set by the store workers, read
    by the loop (status, health)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: str | None = None
        self.changed = False  # since the loop last looked (it publishes the status at once)

    def failed(self, why: str) -> None:
        with self._lock:
            if self.error is None:
                self.changed = True
            self.error = why

    def ok(self) -> None:
        with self._lock:
            if self.error is not None:
                self.changed = True
                log.warning("storage works again")
            self.error = None

    def take_change(self) -> bool:
        with self._lock:
            changed, self.changed = self.changed, False
            return changed


def capture_time(meta: dict[str, Any]) -> float | None:
    """The capture time a node's metadata claims: unix seconds, or None (no clock set)."""
    t = meta.get("t")
    ok = isinstance(t, int | float) and not isinstance(t, bool) and 1e9 < t < 1e10
    return float(t) if ok else None


class FrameStore:
    def __init__(self, storage: Storage, settings: Settings, health: StorageHealth,
                 check: Check = inspect_jpeg) -> None:
        self.storage, self.settings, self.health, self.check = storage, settings, health, check

    def job(self, frame: Frame, done: Callable[[Any], None]) -> Job:
        """Check, then store, one frame; `done` gets its Outcome (or an exception)."""
        checked: list[JpegInfo] = []  # a retry after a disk error does not check again

        def run() -> Outcome:
            if not checked:
                try:
                    checked.append(self.check(frame.data, self.settings.max_pixels,
                                              self.settings.max_scans))
                except NotAJpeg as e:
                    return Outcome(frame, refused=f"not stored: {e}", counter=e.counter)
            return self._store(frame, checked[0])

        return Job(run, len(frame.data), done, about=frame)

    def _store(self, frame: Frame, info: JpegInfo) -> Outcome:
        trigger = frame.meta.get("trigger")
        try:
            stored = self.storage.store(
                frame.node, frame.frame_id, frame.data, crc=frame.crc32,
                received_at=frame.received_at, captured_at=capture_time(frame.meta),
                width=info.width, height=info.height,
                trigger=trigger[:32] if isinstance(trigger, str) else None)
        except StorageError as e:
            self.health.failed(str(e.strerror or e))
            log.error("STORAGE ERROR: %s; the frame is kept in memory and retried every %gs",
                      e.strerror or e, self.settings.retry_interval)
            raise Retry(self.settings.retry_interval, str(e)) from None
        except StorageRejected as e:
            # Retrying cannot help (the index says it clashes with a stored frame): the next
            # frames are not held up behind it.
            return Outcome(frame, refused=f"REJECTED by storage, not stored: {e}",
                           counter="storage_rejected")
        self.health.ok()
        if stored is None:
            return Outcome(frame, duplicate=True)
        try:
            newest = self.storage.is_latest(stored.node, stored.path)
            count = self.storage.count(stored.node)
        except sqlite3.Error:
            newest, count = True, None  # better a stale image than none
        return Outcome(frame, stored=stored, newest=newest, count=count)

    def again_job(self, node: str, frame_id: int, crc: int,
                  done: Callable[[Any], None]) -> Job:
        """A frame an earlier run stored, read back to be announced (again)."""
        def run() -> Outcome:
            stored = self.storage.index.get(node, frame_id, crc)
            if stored is None:  # deleted since (retention, forget): nothing to announce
                return Outcome(Frame(node, frame_id, b"", crc, {}, 0.0), duplicate=True)
            data = (self.storage.root / stored.path).read_bytes()
            frame = Frame(node, frame_id, data, crc, {}, 0.0, stored.received_at)
            return Outcome(frame, stored=stored, newest=self.storage.is_latest(node, stored.path),
                           count=self.storage.count(node), again=True)

        return Job(run, 0, done)

    def node_row_job(self, node: str, fields: dict[str, Any],
                     done: Callable[[Any], None]) -> Job:
        """The node's row in the index (availability, state, last seen): informative only, so
        a disk that refuses it costs a log line, not a retry."""
        def run() -> None:
            self.storage.update_node(node, seen_at=time.time(), **fields)

        return Job(run, 0, done, retry=False)

    def retention_job(self, now: float, done: Callable[[Any], None]) -> Job:
        def run() -> dict[str, int]:
            return self.storage.apply_retention_all(now)

        return Job(run, 0, done, retry=False)
