"""Work beside the intake: the slow stages (checking and storing frames) run here, on a few
threads, never in the loop that reads MQTT.

One lane per node: a node's jobs run one at a time in the order they were given, so its frames
are stored and announced in order; different nodes' jobs run side by side, so one slow frame
holds up only its own node. A job that cannot be done now (the disk refuses) raises Retry: it
stays at the head of its lane, which waits and tries it again. Bounded by jobs and bytes
waiting; past either, `submit` refuses and says so (the caller decides what that costs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("espcam.lanes")


class Retry(Exception):  # noqa: N818 (an instruction, not an error)
    """Raised by a job that should be tried again after `after` seconds."""

    def __init__(self, after: float, why: str = "") -> None:
        super().__init__(why)
        self.after = after


@dataclass
class Job:
    run: Callable[[], Any]
    size: int
    # Called with the job's result (or the exception it raised, other than Retry), in the
    # worker's thread.
    done: Callable[[Any], None]
    # Jobs whose results nobody waits on (a node row, retention) are dropped, not retried.
    retry: bool = True
    failures: int = 0
    about: Any = None  # what the job works on, to say what was left undone at a stop


class Lanes:
    def __init__(self, workers: int, max_jobs: int, max_bytes: int,
                 name: str = "espcam-lane") -> None:
        self.max_jobs, self.max_bytes = max_jobs, max_bytes
        self.counters: Counter[str] = Counter()
        self._lanes: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()  # lanes with work and no worker on them
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
                lane = self._lanes[key] = deque()
                self._ready.append(key)
            lane.append(job)
            self._jobs += 1
            self._bytes += job.size
            self._cond.notify()
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
            return sum(len(self._lanes.get(k, ())) for k in self._waiting)

    def idle(self) -> bool:
        with self._cond:
            return self._jobs == 0

    def close(self, timeout: float) -> list[Job]:
        """Finish what can be finished within `timeout` (a job waiting for a retry is tried
        once more, now); stop the workers and return the jobs left undone, in lane order."""
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
            left = [job for lane in self._lanes.values() for job in lane]
            self._lanes.clear()
            self._ready.clear()
            self._waiting.clear()
            self._jobs = self._bytes = 0
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        return left

    # -- the workers -----------------------------------------------------------------------

    def _next(self) -> tuple[str, Job] | None:
        """A lane's head job to run (the lane stays out of `_ready` while it runs)."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for key, until in list(self._waiting.items()):
                    if until <= now:
                        del self._waiting[key]
                        self._ready.append(key)
                if self._ready:
                    key = self._ready.popleft()
                    self._running += 1
                    return key, self._lanes[key][0]
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
                    self._running -= 1
                    job.failures += 1
                    if job.retry and not self._closed:
                        self._waiting[key] = time.monotonic() + r.after
                        self.counters["retries"] += 1
                        self._cond.notify_all()
                        continue
                    self._running += 1
                result = r
            except Exception as e:
                result = e
            # Handed on before the lane is free: the node's next job cannot start, and so its
            # result cannot overtake this one.
            try:
                job.done(result)
            except Exception:
                log.exception("a lane's result could not be handed on")
            with self._cond:
                self._running -= 1
                lane = self._lanes.get(key)
                if lane and lane[0] is job:
                    lane.popleft()
                    self._jobs -= 1
                    self._bytes -= job.size
                    if lane:
                        self._ready.append(key)
                    else:
                        del self._lanes[key]
                self._cond.notify_all()
