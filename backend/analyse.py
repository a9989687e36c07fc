"""The analysis stage: stored frames in, findings out (motion, faces, who), beside ingest and
never in its way (docs/doorbell.md, "How the backend analyses a frame").

FramePath.settle hands every stored frame to `offer`, in the loop's thread, which only appends
it to a bounded queue. One thread here takes frames from it, oldest first, and has the analysis
worker process (analysis_worker.py) look at each; it writes what was found to the index
(findings.py) and hands it back to the loop, which publishes it (doorbell.py).

- **Bounded**: at most `analysis_queue` frames wait. When a frame arrives and the queue is
  full, the oldest waiting frame that is not a doorbell frame (trigger `button`) is skipped,
  counted (`analysis_skipped`) and said in the log and in its node's next findings
  (`skipped`): when analysis falls behind, it analyses the newest frames. Doorbell frames go
  first.
- **Never in ingest's way**: the worker is a process of its own at a low CPU priority, holding
  no lock of the backend's; its answers are small. While ingest is busy (more than BUSY_FRAMES
  frames stored in BUSY_WINDOW seconds) only doorbell frames are analysed; the others wait,
  and past the queue's bound are skipped. A worker that dies is started again (after
  RESTART_AFTER seconds), the frame it was on counted `analysis_failed`.
- Off unless the faces extra is installed (`available`), and said once.
"""

from __future__ import annotations

import base64
import json
import logging
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import IO, Any

from espcam.backend import faces, findings
from espcam.backend.config import Settings
from espcam.backend.index import Index
from espcam.backend.motion import parse_thresholds
from espcam.backend.ratelog import RateLimitedLog
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.analysis")

BUTTON = "button"  # the trigger of a doorbell frame
START_TIMEOUT = 120.0  # seconds for the worker to load its models (a busy, niced machine)
JOB_TIMEOUT = 300.0  # seconds for one frame before the worker is taken for hung
RESTART_AFTER = 5.0
# Ingest is busy while more than BUSY_FRAMES frames were stored in the last BUSY_WINDOW
# seconds: meanwhile only doorbell frames are analysed (see `_take`).
BUSY_FRAMES = 10
BUSY_WINDOW = 1.0


def available(settings: Settings) -> str | None:
    """None if analysis runs; else why not, as a sentence."""
    if not settings.analysis:
        return "analysis is off (setting analysis = false)"
    why = faces.missing()
    return f"analysis is off: {why}" if why else None


class Analysis:
    def __init__(self, settings: Settings, data_root: str, index: Index,
                 locate: Callable[[StoredFrame], str],
                 deliver: Callable[[findings.Findings], None], warn: RateLimitedLog,
                 read: Callable[[StoredFrame], bytes] | None = None) -> None:
        """`locate(frame)`: where the stored frame is; the worker reads it there when it is
        a file. `read(frame)`: its bytes, for a store without files (object storage): they go
        to the worker in the job. `deliver(findings)`: back to the loop."""
        self.settings, self.data_root, self.index = settings, data_root, index
        self._locate, self._read = locate, read
        self._deliver, self._warn = deliver, warn
        self.thresholds = parse_thresholds(settings.motion_thresholds)
        self.counters: Counter[str] = Counter()
        self._queue: deque[StoredFrame] = deque()
        self._skipped: Counter[str] = Counter()  # per node, since its last findings
        self._cond = threading.Condition()
        self._closed = False
        self._proc: subprocess.Popen[str] | None = None
        self._disabled: str | None = None
        self._last_person: dict[str, tuple[str, float] | None] = {}
        self._stored_at: deque[float] = deque(maxlen=BUSY_FRAMES + 1)
        self.clock: Callable[[], float] = time.monotonic
        self._thread = threading.Thread(target=self._run, name="espcam-analysis", daemon=True)

    def start(self) -> Analysis:
        self._thread.start()
        return self

    def threshold(self, node: str) -> float:
        return self.thresholds.get(node, self.settings.motion_threshold)

    # -- the loop's side -------------------------------------------------------------------

    def offer(self, stored: StoredFrame) -> None:
        """A frame is stored: queue it for analysis (never waits)."""
        with self._cond:
            if self._closed or self._disabled:
                return
            if len(self._queue) >= max(1, self.settings.analysis_queue):
                victim = next((f for f in self._queue if f.trigger != BUTTON), self._queue[0])
                self._queue.remove(victim)
                self._skipped[victim.node] += 1
                self.counters["analysis_skipped"] += 1
                self._warn.warning("analysis-behind", "analysis is behind: skipped frame %d of "
                                   "node %s (%d skipped in all); analysing the newest",
                                   victim.frame_id, victim.node,
                                   self.counters["analysis_skipped"])
            self._queue.append(stored)
            self._stored_at.append(self.clock())
            # Woken for a doorbell frame or a first one; while ingest is busy the thread waits
            # out the busy time instead of waking for every frame stored.
            if stored.trigger == BUTTON or len(self._queue) == 1:
                self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        proc = self._proc
        if proc is not None:
            _stop(proc, timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------

    def busy(self) -> float:
        """Seconds until ingest is no longer busy (as far as is known now); 0 when it is not."""
        if len(self._stored_at) <= BUSY_FRAMES:
            return 0.0
        return max(0.0, self._stored_at[0] + BUSY_WINDOW - self.clock())

    def _take(self) -> tuple[StoredFrame, int] | None:
        """The next frame to analyse: a doorbell frame at once, others once ingest is not busy.
        Why wait: the worker's priority keeps it off a CPU that ingest wants, but priorities
        count only within a session or cgroup, and caches are shared: with the worker busy
        beside a burst, ingest on two cores ran at 0.77 to 0.94 of its rate (bench item 7).
        Frames arriving meanwhile wait in the queue, the oldest skipped past its bound."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                frame = next((f for f in self._queue if f.trigger == BUTTON), None)
                if frame is None and self._queue:
                    wait = self.busy()
                    if not wait:
                        frame = self._queue[0]
                    else:
                        self._cond.wait(wait)
                        continue
                if frame is not None:
                    self._queue.remove(frame)
                    return frame, self._skipped.pop(frame.node, 0)
                self._cond.wait()

    def _run(self) -> None:
        # The worker starts with the first frame: a backend that stores none (a test, a
        # short run) never pays for loading the models; a doorbell frame right after a start
        # waits for them once (about a second).
        while (item := self._take()) is not None:
            frame, skipped = item
            try:
                self._analyse(frame, skipped)
            except Exception:
                if self._closed:
                    return  # the backend is stopping and closed the worker's pipes under it
                self.counters["analysis_failed"] += 1
                self._warn.exception("analysis-error", "analysis of frame %d of node %s failed",
                                     frame.frame_id, frame.node)

    def _analyse(self, frame: StoredFrame, skipped: int) -> None:
        try:
            if findings.has(self.index, frame.node, frame.frame_id, frame.crc):
                return  # announced again after a restart, and analysed before it
        except sqlite3.Error:
            pass
        file = self._locate(frame)
        job = {"node": frame.node, "path": file,
               "tolerance": self.settings.face_tolerance}
        if self._read is not None:
            try:
                job["jpeg"] = base64.b64encode(self._read(frame)).decode()
            except OSError as e:
                self.counters["analysis_failed"] += 1
                self._warn.error(f"analysis-read:{frame.node}", "cannot read frame %d of node "
                                 "%s for analysis: %s", frame.frame_id, frame.node, e)
                return
        answer = self._ask(job)
        if answer is None:
            return
        if not answer.get("ok"):
            self.counters["analysis_failed"] += 1
            self._warn.error(f"analysis-failed:{frame.node}", "cannot analyse frame %d of node "
                             "%s: %s", frame.frame_id, frame.node, answer.get("error"))
            return
        threshold = self.threshold(frame.node)
        score = answer.get("motion")
        found = findings.Findings(
            frame.node, frame.frame_id, frame.crc, frame.path, file, frame.trigger,
            motion=score, motion_box=answer.get("motion_box"),
            moved=score is not None and score >= threshold, threshold=threshold,
            faces=answer.get("faces") or [], skipped=skipped, ms=answer.get("ms", 0.0))
        try:
            if not findings.record(self.index, found):
                return  # the frame was deleted meanwhile
        except sqlite3.Error as e:
            self._warn.error("analysis-index", "cannot record the analysis of frame %d of node "
                             "%s in the index: %s", frame.frame_id, frame.node, e)
        self.counters["frames_analysed"] += 1
        self.counters["faces_seen"] += len(found.faces)
        self._remember_person(found)
        self._deliver(found)

    def _remember_person(self, found: findings.Findings) -> None:
        node = found.node
        if node not in self._last_person:
            try:
                self._last_person[node] = findings.last_person(self.index, node)
            except sqlite3.Error:
                self._last_person[node] = None
        if found.faces:
            self._last_person[node] = (found.names[0], found.analysed_at)
        last = self._last_person[node]
        if last is not None:
            found.last_person, found.last_person_at = last

    # -- the worker process ----------------------------------------------------------------

    def _ask(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The worker's answer to one job; None if there is no worker (counted, logged)."""
        proc = self._worker()
        if proc is None:
            return None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = _read_line(proc.stdout, JOB_TIMEOUT)
        except OSError:
            line = None
        if line is None:
            if self._closed:
                return None  # stopped by close()
            self.counters["analysis_failed"] += 1
            code = proc.poll()
            log.error("the analysis worker %s on frame %s; starting it again",
                      f"died (exit code {code})" if code is not None else "hung", job["path"])
            _stop(proc, 1.0)
            self._proc = None
            self._pause(RESTART_AFTER)
            return None
        return json.loads(line)

    def _worker(self) -> subprocess.Popen[str] | None:
        while self._proc is None and not self._closed and not self._disabled:
            self.counters["analysis_starts"] += 1
            proc = subprocess.Popen(
                [sys.executable, "-m", "espcam.backend.analysis_worker",
                 "--data-dir", self.data_root, "--nice", str(self.settings.analysis_nice)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            self._proc = proc  # from here on close() stops it, also while it starts
            assert proc.stdout is not None
            line = _read_line(proc.stdout, START_TIMEOUT)
            if self._closed:
                return None
            hello = json.loads(line) if line else {"ready": False,
                                                   "error": f"exit code {proc.poll()}"}
            if hello.get("ready"):
                log.info("analysis on: motion and faces (%s), worker pid %d at %s",
                         hello.get("model"), proc.pid, hello.get("priority"))
                break
            self._proc = None
            _stop(proc, 1.0)
            log.error("the analysis worker did not start: %s", hello.get("error"))
            if self.counters["analysis_starts"] >= 3 and not self.counters["frames_analysed"]:
                with self._cond:
                    self._disabled = str(hello.get("error"))
                    self._queue.clear()
                log.error("analysis is off: its worker never started")
                return None
            self._pause(RESTART_AFTER)
        return self._proc

    def _pause(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed, seconds)


def _read_line(stream: IO[str], timeout: float) -> str | None:
    """One line from the worker, None at its end or after `timeout` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return None
    line = stream.readline()
    return line or None


def _stop(proc: subprocess.Popen[str], timeout: float) -> None:
    """The worker holds nothing worth finishing (a frame it was on is analysed by no one, as
    a skipped one): it is told to end at once."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
