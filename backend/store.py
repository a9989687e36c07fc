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
from espcam.backend.framestorage import FrameStorage
from espcam.backend.jpeg import JpegInfo, NotAJpeg, inspect_jpeg
from espcam.backend.lanes import Job, Retry
from espcam.backend.records import Frame, Losses, Outcome
from espcam.backend.storage import StorageError, StorageRejected

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


def capture_time(meta: dict[str, Any], received_at: float,
                 max_ahead: float) -> tuple[float | None, float | None]:
    """(capture time to use, capture time claimed but not believed). A node's clock is
    trusted when it is set and not ahead of the backend's by more than `max_ahead` seconds: a
    frame dated in the future would otherwise stay the newest picture for ever. Earlier is
    believed: a frame may have waited in the node's spool for days."""
    t = meta.get("t")
    if not (isinstance(t, int | float) and not isinstance(t, bool) and 1e9 < t < 1e10):
        return None, None  # no clock set
    if t > received_at + max_ahead:
        return None, float(t)
    return float(t), None


class FrameStore:
    def __init__(self, storage: FrameStorage, settings: Settings, health: StorageHealth,
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
                    return self._refused(frame, f"not stored: {e}", e.counter)
            return self._store(frame, checked[0])

        def handed_on(result: Any) -> None:
            # Frames of a node are checked and stored side by side (lanes.py) and handed on in
            # order: "newest?" is asked again here, in that order, so that the retained image
            # never goes back to an older frame that finished after a newer one.
            if isinstance(result, Outcome) and result.stored is not None and result.newest:
                try:
                    result.newest = self.storage.is_latest(frame.node, result.stored.path)
                except sqlite3.Error:
                    pass
            done(result)

        return Job(run, len(frame.data), handed_on, about=frame, overlap=True)

    def _store(self, frame: Frame, info: JpegInfo) -> Outcome:
        trigger = frame.meta.get("trigger")
        captured, ignored = capture_time(frame.meta, frame.received_at,
                                         self.settings.max_clock_ahead)
        try:
            stored = self.storage.store(
                frame.node, frame.frame_id, frame.data, crc=frame.crc32,
                received_at=frame.received_at, captured_at=captured,
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
            return self._refused(frame, f"REJECTED by storage, not stored: {e}",
                                 "storage_rejected")
        self.health.ok()
        if stored is None:
            return Outcome(frame, duplicate=True)
        try:
            newest = self.storage.is_latest(stored.node, stored.path)
            count = self.storage.count(stored.node)
        except sqlite3.Error:
            newest, count = True, None  # better a stale image than none
        was_lost = False
        if frame.version >= 2:
            try:
                # A node that slept or reset before its confirmation came said it lost the
                # frame, which was on its way all along.
                was_lost = self.storage.index.found(frame.node, frame.frame_id)
            except sqlite3.Error:
                pass
        return Outcome(frame, stored=stored, newest=newest, count=count,
                       claimed_capture=ignored, was_lost=was_lost)

    def _refused(self, frame: Frame, why: str, counter: str) -> Outcome:
        """A frame that can never be stored. A version 2 node holds it until confirmed, and
        sends it again after a restart of ours: it is recorded, so it is counted lost once."""
        counted = False
        if frame.version >= 2:
            try:
                verdict = self.storage.index.count_lost(frame.node, [frame.frame_id], why[:200],
                                                        time.time())[frame.frame_id]
                counted = verdict != "new"
            except sqlite3.Error as e:
                log.error("cannot record frame %d of node %s as lost: %s", frame.frame_id,
                          frame.node, e)
        return Outcome(frame, refused=why, counter=counter, counted=counted)

    def losses_job(self, node: str, frame_ids: list[int], reason: str,
                   done: Callable[[Any], None]) -> Job:
        """Frames a version 2 node could not keep (or that failed their check for good), each
        recorded lost once: a Losses."""
        def run() -> Losses:
            try:
                verdicts = self.storage.index.count_lost(node, frame_ids, reason[:200],
                                                         time.time())
            except sqlite3.Error as e:
                raise Retry(self.settings.retry_interval, str(e)) from None
            return Losses(node, reason, verdicts)

        return Job(run, 0, done)

    def again_job(self, node: str, frame_id: int, crc: int, version: int,
                  done: Callable[[Any], None]) -> Job:
        """A frame an earlier run stored, read back to be announced (and confirmed) again."""
        def run() -> Outcome:
            stored = self.storage.index.get(node, frame_id, crc)
            if stored is None:  # deleted since (retention, forget): nothing to announce
                return Outcome(Frame(node, frame_id, b"", crc, {}, 0.0, version=version),
                               duplicate=True)
            data = self.storage.read(stored)
            frame = Frame(node, frame_id, data, crc, {}, 0.0, stored.received_at, version)
            return Outcome(frame, stored=stored, newest=self.storage.is_latest(node, stored.path),
                           count=self.storage.count(node), again=True)

        return Job(run, 0, done)

    def node_row_job(self, node: str, fields: dict[str, Any],
                     done: Callable[[Any], None]) -> Job:
        """The node's row in the index (availability, state, last seen): informative only, so
        a disk that refuses it costs a log line, not a retry."""
        def run() -> None:
            self.storage.update_node(node, seen_at=time.time(), **fields)

        # Reads nothing the node's frames write: no need to wait for them.
        return Job(run, 0, done, retry=False, overlap=True)

    def retention_job(self, now: float, done: Callable[[Any], None]) -> Job:
        def run() -> dict[str, int]:
            return self.storage.apply_retention_all(now)

        return Job(run, 0, done, retry=False)
