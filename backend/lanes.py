"""Work beside the intake: the slow stages (checking and storing frames) run here, on a few
threads, never in the loop that reads MQTT.

One lane per node. A lane hands its jobs' results on in the order the jobs were given, so a
node's frames are announced in order; different nodes' jobs run side by side, so one slow
frame holds up only its own node. Within a lane, jobs marked `overlap` (checking and storing
frames: their time goes to Pillow's decoder and to fsync, both outside the GIL) may run
beside each other, up to `depth` at once: a result that is ready before those of earlier jobs
waits for them. Every other job is a barrier: it starts once everything before it in its lane
has been handed on, and nothing after it starts before it is (forgetting a node, recording
losses, which read what the frames before them wrote).

A job that cannot be done now (the disk refuses) raises Retry: it stays in its place, its
lane starts nothing for `after` seconds, and it is tried again. Bounded by jobs and bytes
waiting (a job counts until its result is handed on); past either, `submit` refuses and says
so (the caller decides what that costs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("espcam.lanes")

QUEUED, RUNNING, FINISHED = "queued", "running", "finished"


class Retry(Exception):  # noqa: N818 (an instruction, not an error)
    """Raised by a job that should be tried again after `after` seconds."""

    def __init__(self, after: float, why: str = "") -> None:
        super().__init__(why)
        self.after = after


@dataclass(eq=False)
class Job:
    run: Callable[[], Any]
    size: int
    # Called with the job's result (or the exception it raised, other than Retry), in a
    # worker's thread, in the lane's order.
    done: Callable[[Any], None]
    # Jobs whose results nobody waits on (a node row, retention) are dropped, not retried.
    retry: bool = True
    failures: int = 0
    about: Any = None  # what the job works on, to say what was left undone at a stop
    # May run beside the lane's other overlapping jobs (see the module's docstring).
    overlap: bool = False
    state: str = field(default=QUEUED, repr=False)
    result: Any = field(default=None, repr=False)


class _Lane:
    __slots__ = ("handing", "jobs")

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        self.handing = False  # a worker is handing results on; only one at a time, in order


class Lanes:
    def __init__(self, workers: int, max_jobs: int, max_bytes: int,
                 name: str = "espcam-lane", depth: int | None = None) -> None:
        """`depth`: overlapping jobs of one lane running at once (the setting `store_overlap`;
        1 is a node's frames one at a time). One node sending its backlog is stored 1.15x as
        fast with 3 as with 1 on an idle machine (docs/benchmarks.md, issue 14)."""
        self.max_jobs, self.max_bytes = max_jobs, max_bytes
        self.depth = max(1, depth if depth is not None else 1)
        self.counters: Counter[str] = Counter()
        self._lanes: dict[str, _Lane] = {}
        # Lanes that may have a job to start (checked when taken), oldest first: fairness.
        self._ready: OrderedDict[str, None] = OrderedDict()
        self._waiting: dict[str, float] = {}  # lanes waiting out a Retry, until (monotonic)
        self._jobs = 0
        self._bytes = 0
        self._running = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    # -- the caller's side -----------------------------------------------------------------

    def submit(self, key: str, job: Job, force: bool = False) -> bool:
        """Queue a job on `key`'s lane; False (and counted) if the lanes are full. `force`
        admits it anyway (small jobs that must not be lost to a burst of large ones)."""
        with self._cond:
            if self._closed:
                return False
            if not force and (self._jobs >= self.max_jobs
                              or self._bytes + job.size > self.max_bytes):
                self.counters["lane_refused"] += 1
                return False
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            lane.jobs.append(job)
            self._jobs += 1
            self._bytes += job.size
            self._poke(key)
            return True

    @property
    def jobs(self) -> int:
        return self._jobs

    @property
    def bytes(self) -> int:
        return self._bytes

    def waiting(self) -> int:
        """Jobs held for a retry (their lanes wait)."""
        with self._cond:
            return sum(len(self._lanes[k].jobs) for k in self._waiting if k in self._lanes)

    def idle(self) -> bool:
        with self._cond:
            return self._jobs == 0

    def close(self, timeout: float) -> list[Job]:
        """Finish what can be finished within `timeout` (a job waiting for a retry is tried
        once more, now); stop the workers and return the jobs left undone, in lane order. A
        job that ran but whose result waited behind an undone one is not among them: its work
        is done (a frame stored is announced again by the next start)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            for key in list(self._waiting):
                self._waiting[key] = 0.0
            self._cond.notify_all()
            while self._jobs and time.monotonic() < deadline:
                # Done when every lane left has failed its last try and none is running.
                if not self._running and len(self._waiting) == len(self._lanes):
                    break
                self._cond.wait(0.05)
            self._closed = True
            left = [job for lane in self._lanes.values() for job in lane.jobs
                    if job.state != FINISHED]
            self._lanes.clear()
            self._ready.clear()
            self._waiting.clear()
            self._jobs = self._bytes = 0
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        return left

    # -- the workers -----------------------------------------------------------------------

    def _poke(self, key: str) -> None:
        """The lane may have a job to start now (called with the lock held)."""
        if key in self._lanes and key not in self._waiting and key not in self._ready:
            self._ready[key] = None
            self._cond.notify()

    def _startable(self, lane: _Lane) -> Job | None:
        started = 0
        barrier = False
        for job in lane.jobs:
            if job.state == QUEUED:
                if job.overlap:
                    return job if not barrier and started < self.depth else None
                return job if not started else None
            started += 1
            barrier = barrier or not job.overlap
        return None

    def _next(self) -> tuple[str, Job] | None:
        """A job to run, marked running."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for key, until in list(self._waiting.items()):
                    if until <= now:
                        del self._waiting[key]
                        self._poke(key)
                while self._ready:
                    key, _ = self._ready.popitem(last=False)
                    lane = self._lanes.get(key)
                    job = self._startable(lane) if lane is not None else None
                    if job is None:
                        continue  # poked again when that changes
                    job.state = RUNNING
                    self._running += 1
                    if self._startable(lane) is not None:
                        self._ready[key] = None  # behind the other lanes
                    return key, job
                soonest = min(self._waiting.values(), default=now + 1.0)
                self._cond.wait(max(0.01, soonest - now))
            return None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            key, job = item
            try:
                result: Any = job.run()
            except Retry as r:
                with self._cond:
                    job.failures += 1
                    if job.retry and not self._closed:
                        # Its place is kept; the lane starts nothing until the retry.
                        job.state = QUEUED
                        self._running -= 1
                        until = time.monotonic() + r.after
                        self._waiting[key] = max(until, self._waiting.get(key, 0.0))
                        self._ready.pop(key, None)
                        self.counters["retries"] += 1
                        self._cond.notify_all()
                        continue
                result = r
            except Exception as e:
                result = e
            self._finish(key, job, result)

    def _finish(self, key: str, job: Job, result: Any) -> None:
        """Record a result; hand on, in order, every result at the head of the lane. One
        worker at a time hands a lane's results on, outside the lock; each is handed on
        before the job leaves its lane, so a barrier after it cannot start before."""
        with self._cond:
            self._running -= 1
            job.state, job.result = FINISHED, result
            lane = self._lanes.get(key)
            if lane is None or lane.handing:
                self._cond.notify_all()
                return  # closed, or the worker handing on takes this one too
            lane.handing = True
            while lane.jobs and lane.jobs[0].state == FINISHED:
                head = lane.jobs[0]
                self._cond.release()
                try:
                    head.done(head.result)
                except Exception:
                    log.exception("a lane's result could not be handed on")
                finally:
                    self._cond.acquire()
                if self._lanes.get(key) is not lane:
                    break  # closed meanwhile
                lane.jobs.popleft()
                head.result = None
                self._jobs -= 1
                self._bytes -= head.size
            lane.handing = False
            if not lane.jobs and self._lanes.get(key) is lane:
                del self._lanes[key]
                self._ready.pop(key, None)
            else:
                self._poke(key)
            self._cond.notify_all()
