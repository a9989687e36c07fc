"""Frames of one node checked and stored side by side (issue 14), and what must still hold:
each node's results handed on in order, barriers between what depends on earlier frames, a
frame's `event` only once its file and its index row are durable (also when the backend is
killed), and latest.jpg never going back to an older frame."""

from __future__ import annotations

import functools
import io
import json
import random
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import Serve  # noqa: E402
from espcam.backend import subscriber as subscriber_mod  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.index import Index  # noqa: E402
from espcam.backend.jpeg import inspect_jpeg  # noqa: E402
from espcam.backend.lanes import Job, Lanes, Retry  # noqa: E402
from espcam.backend.records import StoredFrame  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, make_jpeg  # noqa: E402
from observer import Observer  # noqa: E402
from PIL import Image  # noqa: E402
from polling import wait_until  # noqa: E402

# -- the lanes -----------------------------------------------------------------------------


def test_overlapping_jobs_of_one_lane_run_side_by_side_and_hand_on_in_order():
    lanes = Lanes(workers=4, max_jobs=1000, max_bytes=1 << 30, depth=3)
    rnd = random.Random(14)
    both = threading.Barrier(2, timeout=20)  # passes only if jobs 0 and 1 of "a" run at once
    second_done = threading.Event()
    running: dict[str, list[bool]] = {}  # per lane, the running jobs' barrier flags
    broken: list[str] = []
    lock = threading.Lock()
    done: dict[str, list[int]] = {}

    def job(lane: str, i: int, overlap: bool) -> Job:
        pause = rnd.random() / 500

        def run() -> tuple[str, int]:
            with lock:
                mine = running.setdefault(lane, [])
                if not overlap and mine:
                    broken.append(f"barrier {lane}/{i} ran beside {len(mine)} job(s)")
                if overlap and not all(mine):
                    broken.append(f"{lane}/{i} ran beside a barrier")
                mine.append(overlap)
            if lane == "a" and i in (0, 1):
                both.wait()
                if i == 0:
                    second_done.wait(20)  # job 1 finishes first; its result must wait
                else:
                    second_done.set()
            time.sleep(pause)
            with lock:
                running[lane].remove(overlap)
            return lane, i

        return Job(run, 1, lambda r: done.setdefault(r[0], []).append(r[1]), overlap=overlap)

    for i in range(60):
        for lane in ("a", "b", "c"):
            # Every seventh job is a barrier (a losses record, a forget): alone in its lane.
            assert lanes.submit(lane, job(lane, i, overlap=i % 7 != 6))
    wait_until(lanes.idle, 60, "every job to run")
    assert broken == []
    assert done == {lane: list(range(60)) for lane in "abc"}
    assert lanes.close(1) == []


def test_a_retried_job_keeps_its_place_while_later_ones_of_its_lane_finish():
    lanes = Lanes(workers=3, max_jobs=10, max_bytes=100, depth=3)
    tries = {"n": 0}
    later_finished = threading.Event()
    results: list[str] = []
    ran: list[str] = []

    def flaky() -> str:
        later_finished.wait(10)
        tries["n"] += 1
        if tries["n"] < 3:
            raise Retry(0.01, "disk says no")
        return "first"

    def later(name: str) -> Job:
        def run() -> str:
            ran.append(name)
            if len(ran) == 2:
                later_finished.set()
            return name

        return Job(run, 1, results.append, overlap=True)

    assert lanes.submit("x", Job(flaky, 1, results.append, overlap=True))
    assert lanes.submit("x", later("second"))
    assert lanes.submit("x", later("third"))
    wait_until(lanes.idle, 10, "the lane to empty")
    assert sorted(ran) == ["second", "third"]  # ran before the first was done, once each
    assert results == ["first", "second", "third"]
    assert lanes.counters["retries"] == 2


def test_a_barrier_waits_for_the_jobs_before_it_and_holds_back_those_after_it():
    lanes = Lanes(workers=4, max_jobs=10, max_bytes=100)
    release_first = threading.Event()
    barrier_started = threading.Event()
    release_barrier = threading.Event()
    after_started = threading.Event()
    results: list[str] = []

    def first() -> str:
        release_first.wait(10)
        return "first"

    def barrier() -> str:
        barrier_started.set()
        release_barrier.wait(10)
        return "barrier"

    def after() -> str:
        after_started.set()
        return "after"

    lanes.submit("x", Job(first, 1, results.append, overlap=True))
    lanes.submit("x", Job(barrier, 1, results.append))
    lanes.submit("x", Job(after, 1, results.append, overlap=True))
    time.sleep(0.2)  # room to go wrong: neither may start while the first runs
    assert not barrier_started.is_set() and not after_started.is_set()
    release_first.set()
    assert barrier_started.wait(10)
    time.sleep(0.2)
    assert not after_started.is_set()
    release_barrier.set()
    wait_until(lanes.idle, 10, "the lane to empty")
    assert results == ["first", "barrier", "after"]


def test_closing_leaves_out_a_job_done_behind_one_that_is_not():
    lanes = Lanes(workers=2, max_jobs=10, max_bytes=100, depth=2)
    second_ran = threading.Event()

    def never() -> None:
        second_ran.wait(10)  # the second runs beside it before it fails
        raise Retry(60, "disk full")

    def second() -> str:
        second_ran.set()
        return "stored"

    handed: list[object] = []
    assert lanes.submit("x", Job(never, 1, handed.append, about="frame 1", overlap=True))
    assert lanes.submit("x", Job(second, 1, handed.append, about="frame 2", overlap=True))
    assert second_ran.wait(10)
    wait_until(lambda: lanes.waiting() == 2, 10, "the lane to wait for its retry")
    left = lanes.close(timeout=1)
    assert [j.about for j in left] == ["frame 1"]  # frame 2 is stored: not "left undone"
    assert handed == []  # and nothing overtook frame 1


# -- the index: rows of several workers in one commit --------------------------------------


def test_rows_added_at_once_commit_together_and_a_clash_fails_only_its_own_row(tmp_path):
    idx = Index(tmp_path)
    t = 1.77e9

    def frame(fid: int, path: str) -> StoredFrame:
        return StoredFrame("cam-1", fid, t + fid, t + fid, 10, None, None, None, fid, path)

    idx.add(frame(1, "cam-1/d/1.jpg"), t)
    errors: dict[int, Exception] = {}

    def add(i: int) -> None:
        # Row 3 names the path of the row above: the UNIQUE constraint refuses it.
        path = "cam-1/d/1.jpg" if i == 3 else f"cam-1/d/{100 + i}.jpg"
        try:
            idx.add(frame(100 + i, path), t + i)
        except sqlite3.IntegrityError as e:
            errors[i] = e

    with idx.lock:  # every worker queues its row before any can commit: one batch
        threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        wait_until(lambda: len(idx._queue) == 8, 30, "eight rows queued")
    for th in threads:
        th.join(30)
    assert set(errors) == {3}
    assert sorted(p for _, p in idx.paths("cam-1")) == sorted(
        ["cam-1/d/1.jpg"] + [f"cam-1/d/{100 + i}.jpg" for i in range(8) if i != 3])
    assert idx.totals("cam-1") == (8, 80)
    assert idx.newest_path("cam-1") == "cam-1/d/107.jpg"
    idx.close()


# -- the backend ---------------------------------------------------------------------------


def _row(data_dir: Path, node: str, frame_id: int) -> str | None:
    """The frame's path as another process sees the index now (committed rows only)."""
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        r = db.execute("SELECT path FROM frames WHERE node = ? AND frame_id = ?",
                       (node, frame_id)).fetchone()
        return r[0] if r else None
    finally:
        db.close()


class EventCheck:
    """On each `event`, at once: is the frame's row committed, and its file whole on disk?"""

    def __init__(self, broker, data_dir: Path, sent: dict[tuple[str, int], bytes]) -> None:
        self.data_dir, self.sent = data_dir, sent
        self.order: dict[str, list[int]] = {}
        self.wrong: list[str] = []
        self.lock = threading.Lock()
        self.obs = Observer(broker.host, broker.port, "espcam/+/event")
        self.obs.c.on_message = self._on_message

    def _on_message(self, c, u, m) -> None:
        e = json.loads(m.payload)
        node, fid = e["node"], e["frame"]
        path = _row(self.data_dir, node, fid)
        with self.lock:
            self.order.setdefault(node, []).append(fid)
            if path is None:
                self.wrong.append(f"event for {node}/{fid} before its index row")
            elif Path(e["file"]).read_bytes() != self.sent.get((node, fid)):
                self.wrong.append(f"event for {node}/{fid}: file differs from what was sent")

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.order.values())

    def close(self) -> None:
        self.obs.close()


def test_frames_checked_side_by_side_keep_each_nodes_order_and_announce_only_indexed_frames(
        broker, light_node, data_dir, monkeypatch):
    # Three of a node's frames at once (the lanes' default is one at a time).
    monkeypatch.setattr(subscriber_mod, "Lanes", functools.partial(Lanes, depth=3))
    rnd = random.Random(1414)
    slow = {}
    lock = threading.Lock()

    def check(data, max_pixels, max_scans):
        # Each frame takes its own time, so a node's frames finish out of order in the
        # workers; the first of each node the longest.
        with lock:
            pause = slow.get(data, rnd.random() / 50)
        time.sleep(pause)
        return inspect_jpeg(data, max_pixels, max_scans)

    sent: dict[tuple[str, int], bytes] = {}
    watch = EventCheck(broker, data_dir, sent)
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="overlap",
                         store_workers=4), check=check).start()
    try:
        assert b.connected.wait(10)
        nodes = [light_node(f"cam-o{i}", proto=2, hold=100) for i in range(3)]
        per_node = 12
        for k in range(per_node):
            for n in nodes:
                jpeg = make_jpeg(seed=100 * nodes.index(n) + k)
                fid = k + 1
                sent[(n.node, fid)] = jpeg
                if k == 0:
                    with lock:
                        slow[jpeg] = 0.3
                n.publish_frame(jpeg, fid, meta={"t": 1.77e9 + fid, "trigger": "interval"})
        wait_until(lambda: watch.count() >= len(nodes) * per_node, 120, "every event")
        assert watch.wrong == []
        assert watch.order == {n.node: list(range(1, per_node + 1)) for n in nodes}
        for n in nodes:
            # The newest by capture time is what latest.jpg shows, whatever finished last.
            latest = (data_dir / n.node / "latest.jpg").read_bytes()
            assert latest == sent[(n.node, per_node)]
    finally:
        b.stop()
        watch.close()


def test_every_frame_announced_before_a_kill_is_indexed_and_whole_on_disk(broker, tmp_path):
    data = tmp_path / "data"
    serve = Serve(broker, data, tmp_path / "backend.log", client_id="kill-backend",
                  env={"ESPCAM_STORE_WORKERS": "4"})
    sent: dict[tuple[str, int], bytes] = {}
    watch = EventCheck(broker, data, sent)
    cams = [LightNode(broker.host, broker.port, f"cam-k{i}", chunk_size=4096).start()
            for i in range(3)]
    stop = threading.Event()
    lock = threading.Lock()

    def stream(cam: LightNode, seed0: int) -> None:
        fid = 0
        while not stop.is_set():
            fid += 1
            jpeg = make_jpeg(320, 240, seed=seed0 + fid)
            with lock:
                sent[(cam.node, fid)] = jpeg
            cam.publish_frame(jpeg, fid, wait=False)
            stop.wait(0.03)

    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    threads = [threading.Thread(target=stream, args=(c, 1000 * i), daemon=True)
               for i, c in enumerate(cams)]
    try:
        serve.start()
        for t in threads:
            t.start()
        for _ in range(3):
            before = watch.count()
            wait_until(lambda b=before: watch.count() > b + 5, 60, "frames announced")
            time.sleep(rnd.uniform(0.0, 1.0))
            serve.kill()
            time.sleep(0.3)  # events on their way from the broker
            with watch.lock:
                announced = {(n, f) for n, fids in watch.order.items() for f in fids}
            # Without a restart (its reconcile would index files that have no row yet).
            for node, fid in sorted(announced):
                path = _row(data, node, fid)
                assert path is not None, f"{node}/{fid} announced, not indexed (seed {seed})"
                body = (data / path).read_bytes()
                with lock:
                    assert body == sent[(node, fid)], f"{node}/{fid} (seed {seed})"
                Image.open(io.BytesIO(body)).load()
            assert watch.wrong == [], f"seed {seed}"
            serve.start()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        serve.stop()
        for c in cams:
            c.stop()
        watch.close()
