"""The analysis worker: a process of its own beside `espcam serve`, started by analyse.py as
`python -m espcam.backend.analysis_worker`. For each stored frame it is given: motion against
the node's previous analysed frame (motion.py) and the faces in it (faces.py), each matched
against the enrolled people (people.py, loaded again whenever `espcam faces` changes them).

Why a process and not a thread: dlib holds Python's GIL while it computes, about a quarter of
a second per VGA frame with a face (bench item 7), so in a thread it would stall the backend's
loop that long (docs/doorbell.md). A
process also runs at a lower CPU priority (`analysis_nice`; at 19 also the SCHED_IDLE policy,
`lower_priority`): on a busy machine the kernel gives the CPU to ingest first, and analysis
falls behind instead (analyse.py then skips frames).

It speaks JSON lines: one job per line on stdin, one answer per line on stdout, the first line
saying whether it is ready. stdout carries nothing else: whatever a library prints goes to
stderr, with the log.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, TextIO

from espcam.backend import motion, people
from espcam.backend.faces import Engine

log = logging.getLogger("espcam.analysis")

MAX_NODES = 1000  # nodes whose previous frame is kept for motion (a small picture each)


class Worker:
    def __init__(self, engine: Engine, data_dir: str) -> None:
        self.engine, self.data_dir = engine, data_dir
        self._previous: OrderedDict[str, motion.Small] = OrderedDict()
        self._gallery = people.Gallery(engine.model)
        self._stamp: tuple[int, int, int] | None = None
        self._complained: str | None = None

    def gallery(self) -> people.Gallery:
        stamp = people.stamp(self.data_dir)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._gallery = people.Gallery.load(self.data_dir, self.engine.model)
                self._complained = None
                if self._gallery.people:
                    log.info("enrolled people: %s", ", ".join(sorted(self._gallery.people)))
            except ValueError as e:
                self._gallery = people.Gallery(self.engine.model)
                if str(e) != self._complained:
                    self._complained = str(e)
                    log.error("%s; every face is unknown until this is fixed", e)
        return self._gallery

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        # The bytes come in the job when the frame is not a file (object storage).
        data = (base64.b64decode(job["jpeg"]) if "jpeg" in job
                else Path(job["path"]).read_bytes())
        node = job["node"]
        small = motion.reduce(data)
        before = self._previous.pop(node, None)
        self._previous[node] = small
        while len(self._previous) > MAX_NODES:
            self._previous.popitem(last=False)
        moved = motion.compare(before, small) if before is not None else None
        gallery = self.gallery()
        found = []
        for face in self.engine.faces(data):
            name, distance = gallery.match(face.embedding, job.get("tolerance",
                                                                   people.DEFAULT_TOLERANCE))
            found.append({"box": list(face.box), "name": name, "distance": distance})
        return {"ok": True, "motion": moved.score if moved else None,
                "motion_box": list(moved.box) if moved and moved.box else None,
                "faces": found, "ms": round((time.perf_counter() - t0) * 1000, 1)}


def lower_priority(nice: int) -> str:
    """The worker's CPU priority, said as text: `nice` (0 ... 19), and at 19 also, on Linux,
    the SCHED_IDLE policy. Why: at nice 19 the worker's share of the CPU is small, but a
    running task may still finish its time slice before a waking one gets the CPU, a delay
    ingest would pay on every message; a SCHED_IDLE task gives way to a waking task of its
    session at once. (The session's share of the CPU against other sessions is another
    matter: analyse.py keeps the worker idle while ingest is busy.)"""
    nice = max(0, min(19, nice))
    try:
        os.nice(nice)
    except OSError as e:
        log.warning("cannot lower the analysis worker's priority: %s", e)
        return "unchanged"
    if nice < 19 or not hasattr(os, "SCHED_IDLE"):
        return f"nice {nice}"
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as e:
        log.warning("cannot give the analysis worker the SCHED_IDLE policy: %s", e)
        return f"nice {nice}"
    return f"nice {nice}, SCHED_IDLE"


def _say(out: TextIO, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m espcam.backend.analysis_worker")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--nice", type=int, default=19)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Answers go to a copy of stdout; fd 1 itself now leads to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    priority = lower_priority(a.nice)
    # numpy's BLAS would start a thread per core: the worker keeps to one, beside ingest.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    try:
        worker = Worker(Engine(), a.data_dir)
    except Exception as e:  # a broken install must say why, not just die
        _say(out, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    try:
        _say(out, {"ready": True, "model": worker.engine.model, "priority": priority})
        for line in sys.stdin:
            try:
                answer = worker.run(json.loads(line))
            except Exception as e:  # one bad frame must not end the worker
                answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            _say(out, answer)
    except BrokenPipeError:
        # The backend went away (killed, stopped mid-start): nobody is left to answer, and a
        # traceback here would read as a failure of the backend's own. _exit: a normal exit
        # would flush the dead pipe again and print that it could not.
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
