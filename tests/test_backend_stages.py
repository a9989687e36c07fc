"""The backend as stages (docs/architecture.md): slow work beside the intake, never in it; each
node's frames in order; the lanes' bounds; imports that run one way."""

from __future__ import annotations

import ast
import json
import random
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.jpeg import inspect_jpeg  # noqa: E402
from espcam.backend.lanes import Job, Lanes, Retry  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import make_jpeg  # noqa: E402
from polling import wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_a_frame_slow_to_check_delays_neither_other_nodes_nor_the_intake(broker, light_node,
                                                                       everything, data_dir):
    slow_jpeg = make_jpeg(seed=666)
    release = threading.Event()
    checking = threading.Event()

    def check(data, max_pixels, max_scans):
        if data == slow_jpeg:  # this one frame takes as long as the test wants
            checking.set()
            release.wait(60)
        return inspect_jpeg(data, max_pixels, max_scans)

    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="stages"),
                check=check).start()
    try:
        assert b.connected.wait(10)
        slow, fast = light_node("cam-slow"), light_node("cam-fast")
        first = slow.publish_frame(slow_jpeg)
        assert checking.wait(30)
        # While that frame is being checked: the slow node's next frame waits behind it (its
        # order is kept), every other node's frames are stored, and the intake still takes
        # state documents (Home Assistant's device appears for a new node).
        second = slow.publish_frame(make_jpeg(seed=667))
        sent = {fast.publish_frame(make_jpeg(seed=i)): make_jpeg(seed=i) for i in range(5)}
        for fid, jpeg in sent.items():
            e = everything.json_on("espcam/cam-fast/event", lambda e, f=fid: e["frame"] == f)
            assert Path(e["file"]).read_bytes() == jpeg
        late = light_node("cam-late")
        late.publish_state()
        everything.topic("espcam/_backend/nodes/cam-late")
        assert not [m for m in everything.msgs if m.topic == "espcam/cam-slow/event"]
        release.set()
        events = [everything.json_on("espcam/cam-slow/event", lambda e, f=f: e["frame"] == f)
                  for f in (first, second)]
        order = [json.loads(m.payload)["frame"] for m in everything.msgs
                 if m.topic == "espcam/cam-slow/event"]
        assert order == [first, second]
        assert Path(events[0]["file"]).read_bytes() == slow_jpeg
    finally:
        release.set()
        b.stop()


def test_each_nodes_jobs_run_in_order_while_nodes_run_side_by_side():
    done: dict[str, list[int]] = {}
    running = {"now": 0, "most": 0}
    lock = threading.Lock()
    rnd = random.Random(3)
    lanes = Lanes(workers=4, max_jobs=1000, max_bytes=1 << 30)

    def job(node: str, i: int) -> Job:
        pause = rnd.random() / 200

        def run() -> tuple[str, int]:
            with lock:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            time.sleep(pause)
            with lock:
                running["now"] -= 1
            return node, i

        return Job(run, 1, lambda r: done.setdefault(r[0], []).append(r[1]))

    for i in range(50):
        for node in ("a", "b", "c", "d"):
            assert lanes.submit(node, job(node, i))
    wait_until(lanes.idle, 30, "every job to run")
    assert done == {n: list(range(50)) for n in "abcd"}
    assert running["most"] > 1  # the four nodes really ran side by side
    assert lanes.close(1) == []


def test_lanes_refuse_past_their_bounds_and_a_retried_job_keeps_its_place():
    lanes = Lanes(workers=1, max_jobs=3, max_bytes=100)
    gate = threading.Event()
    results: list[str] = []
    tries = {"n": 0}

    def flaky() -> str:
        gate.wait(10)
        tries["n"] += 1
        if tries["n"] < 3:
            raise Retry(0.01, "disk says no")
        return "first"

    assert lanes.submit("x", Job(flaky, 10, results.append))
    assert lanes.submit("x", Job(lambda: "second", 10, results.append))
    assert not lanes.submit("y", Job(lambda: "too big", 81, results.append))  # bytes
    assert lanes.submit("y", Job(lambda: "third", 10, results.append))
    assert not lanes.submit("z", Job(lambda: "fourth", 1, results.append))  # jobs
    assert lanes.counters["lane_refused"] == 2
    gate.set()
    wait_until(lanes.idle, 10, "the lanes to empty")
    assert results.index("first") < results.index("second")  # retried in its place
    assert sorted(results) == ["first", "second", "third"]
    assert lanes.counters["retries"] == 2


def test_closing_returns_what_could_not_be_done():
    lanes = Lanes(workers=1, max_jobs=10, max_bytes=1000)

    def never() -> None:
        raise Retry(60, "disk full")

    assert lanes.submit("x", Job(never, 1, lambda r: None, about="frame 1"))
    assert lanes.submit("x", Job(lambda: None, 1, lambda r: None, about="frame 2"))
    wait_until(lambda: lanes.waiting() == 2, 10, "the lane to wait for its retry")
    left = lanes.close(timeout=2)
    assert [j.about for j in left] == ["frame 1", "frame 2"]


# Which backend modules may import which: each only from layers below its own. Storage and
# everything under it knows nothing of MQTT; reassembly knows nothing of storage.
LAYERS = [
    {"names", "records", "ratelog", "layout", "motion", "people", "faces", "indexschema"},
    {"protocol", "jpeg", "analysis_worker", "indexfile"},
    {"otapack"},
    {"documents", "index", "reassembly", "ledger"},
    {"reconcile", "findings", "indexed"},
    {"storage", "objectstorage", "framestorage", "annotate"},
    {"config", "lanes"},
    {"store", "session", "discovery", "nodes", "analyse", "openstorage"},
    {"homeassistant", "announce", "confirm", "connection", "doorbell", "ota"},
    {"frames"},
    {"intake"},
    {"subscriber"},
    {"cli", "commands", "forget", "health", "brokerusers", "facescli", "otacli"},
]
MQTT_FREE = {"names", "records", "ratelog", "protocol", "documents", "jpeg", "index",
             "indexschema", "indexfile",
             "framestorage", "layout", "reconcile", "indexed", "objectstorage", "openstorage",
             "motion", "people", "faces", "findings", "annotate", "analysis_worker", "analyse",
             "reassembly", "ledger",
             "storage", "config", "lanes", "store", "nodes", "discovery", "otapack", "ota"}


def _imports(path: Path) -> tuple[set[str], bool]:
    tree = ast.parse(path.read_text())
    mods, paho = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("espcam.backend"):
                rest = node.module.removeprefix("espcam.backend").lstrip(".")
                mods |= {rest} if rest else {a.name for a in node.names}
            paho |= node.module.startswith("paho")
        elif isinstance(node, ast.Import):
            paho |= any(a.name.startswith("paho") for a in node.names)
    return mods, paho


def test_imports_run_one_way():
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    modules = {p.stem for p in (ROOT / "backend").glob("*.py") if p.stem != "__init__"}
    assert modules == set(layer), "every backend module has a layer (and no layer is stale)"
    wrong = []
    for m in sorted(modules):
        imported, paho = _imports(ROOT / "backend" / f"{m}.py")
        wrong += [f"{m} imports {i}" for i in imported if layer[i] >= layer[m]
                  and not (layer[m] == len(LAYERS) - 1)]
        if paho and m in MQTT_FREE:
            wrong.append(f"{m} imports paho")
    assert wrong == []


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "backend").glob("*.py")))
def test_no_backend_module_is_a_god_module(module):
    lines = (ROOT / "backend" / f"{module}.py").read_text().count("\n")
    assert lines <= 420, f"backend/{module}.py has {lines} lines; split it by what it holds"
