"""Analysis of stored frames through a real Mosquitto and a running backend (docs/doorbell.md):
the doorbell's person events for an enrolled face and a stranger, motion and people in the
index and in Home Assistant's entities, the skipping policy when analysis falls behind, and the
backend where the faces extra is not installed. Photos of real people: tests/facephotos.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import facephotos  # noqa: E402
from espcam.backend.analyse import BUTTON, Analysis  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.records import StoredFrame  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from hass import HomeAssistant, components  # noqa: E402

from espcam.cli import main as espcam  # noqa: E402

needs_faces = pytest.mark.usefixtures("faces_installed")  # fails, never skips

NODE = "cam-door"


def enrol(data_dir: Path, tmp_path: Path, name: str, who: str) -> None:
    photo = tmp_path / f"{name}.jpg"
    photo.write_bytes(facephotos.enrolment_photo(who))
    assert espcam(["faces", "add", name, str(photo), "--data-dir", str(data_dir)]) == 0


def settings_for(broker, data_dir: Path, **kw) -> Settings:
    # nice 0: a test machine running other suites must not starve the worker (the default,
    # 19, is for a home server where ingest comes first).
    return Settings(broker=broker.url, data_dir=str(data_dir), client_id="backend-analysis",
                    analysis_nice=0, **kw)


@pytest.fixture
def backend(broker, data_dir, tmp_path):
    enrol(data_dir, tmp_path, "alice", "collins")
    b = Backend(settings_for(broker, data_dir)).start()
    assert b.connected.wait(10)
    yield b
    b.stop()


def ring(node, frame_id: int) -> None:
    node.client.publish(node.t("doorbell"), json.dumps(
        {"event_type": "ring", "at": time.time(), "frame": frame_id}), qos=1).wait_for_publish(5)


def doorbell_events(obs, start: int = 0) -> list[dict]:
    return [json.loads(m.payload) for m in list(obs.msgs)[start:]
            if m.topic == f"espcam/{NODE}/doorbell"]


@needs_faces
def test_the_doorbell_names_an_enrolled_face_and_calls_a_stranger_unknown(backend, light_node,
                                                                         everything):
    cam = light_node(NODE)
    ha = HomeAssistant(everything, NODE)
    doc = ha.document()
    assert {"doorbell", "motion", "person", "last_person"} <= set(doc["cmps"])

    ring(cam, 1)  # as the node does: the ring first, then the frame it captures for it
    cam.publish_frame(facephotos.frame("collins"), 1, trigger=BUTTON)
    known = everything.json_on(f"espcam/{NODE}/doorbell",
                               lambda e: e["event_type"] == "known_person")
    assert known["name"] == "alice" and known["distance"] < 0.6
    assert known["node"] == NODE and known["frame"] == 1
    assert Path(known["file"]).read_bytes() == facephotos.frame("collins")
    assert ha.state("doorbell")["event_type"] == "known_person"
    assert ha.wait_state("person", lambda s: s == "on") == "on"
    assert ha.state("last_person") == "alice"

    mark = everything.mark()
    ring(cam, 2)
    cam.publish_frame(facephotos.frame("hopper"), 2, trigger=BUTTON)
    stranger = everything.json_on(f"espcam/{NODE}/doorbell",
                                  lambda e: e["event_type"] == "unknown_person", start=mark)
    assert "name" not in stranger and stranger["distance"] > 0.6 and stranger["frame"] == 2
    assert [e["event_type"] for e in doorbell_events(everything, mark)] == [
        "ring", "unknown_person"]
    assert ha.wait_state("last_person", lambda s: s == "unknown", mark) == "unknown"
    # Home Assistant takes both kinds from the one topic, with the name as an attribute.
    entity = ha.entity("doorbell")
    assert entity["state_topic"] == f"espcam/{NODE}/doorbell"
    assert set(entity["event_types"]) == {"ring", "known_person", "unknown_person"}
    assert ha.state("doorbell") == stranger


@needs_faces
def test_person_events_only_for_the_doorbell_and_findings_in_the_index(backend, light_node,
                                                                       everything, data_dir):
    cam = light_node(NODE)
    sequence = [("collins", "interval"), ("collins", "interval"), (None, "interval"),
                ("hopper", "motion"), ("collins", BUTTON)]
    for fid, (who, trigger) in enumerate(sequence, start=1):
        cam.publish_frame(facephotos.frame(who), fid, trigger=trigger)
        everything.json_on(f"espcam/_backend/analysis/{NODE}", lambda d, f=fid: d["frame"] == f)
    analysed = [json.loads(m.payload) for m in everything.msgs
                if m.topic == f"espcam/_backend/analysis/{NODE}"]
    assert [d["people"] for d in analysed] == [["alice"], ["alice"], [], ["unknown"], ["alice"]]
    assert [d["motion"] for d in analysed] == [False, False, True, True, True]
    assert analysed[0]["motion_score"] is None  # nothing to compare the first frame with
    assert analysed[2]["last_person"] == "alice"  # seen before, though not in this frame
    # Only the doorbell frame tells who is there; the camera's other frames stay quiet.
    events = doorbell_events(everything)
    assert [(e["event_type"], e.get("name"), e["frame"]) for e in events] == [
        ("known_person", "alice", 5)]

    def listed(*args: str) -> list[int]:
        out = []
        for line in _run_cli(["frames", NODE, "--data-dir", str(data_dir), "--json", *args]):
            out.append(line["frame_id"])
        return out

    assert listed("--person", "alice") == [1, 2, 5]
    assert listed("--person", "unknown") == [4]
    assert listed("--motion") == [3, 4, 5]
    assert listed("--person", "alice", "--motion") == [5]
    assert listed("--person", "bob") == []


def _run_cli(argv: list[str]) -> list[dict]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert espcam(argv) == 0
    return json.loads(out.getvalue())


@needs_faces
def test_person_events_for_every_frame_with_a_cooldown(broker, data_dir, tmp_path, light_node,
                                                      everything):
    enrol(data_dir, tmp_path, "alice", "collins")
    b = Backend(settings_for(broker, data_dir, person_events="all",
                             person_event_cooldown=3600)).start()
    try:
        assert b.connected.wait(10)
        cam = light_node(NODE)
        for fid, who in enumerate(["collins", "collins", "hopper", "hopper", "collins"], 1):
            cam.publish_frame(facephotos.frame(who), fid, trigger="interval")
            everything.json_on(f"espcam/_backend/analysis/{NODE}",
                               lambda d, f=fid: d["frame"] == f)
        everything.json_on(f"espcam/{NODE}/doorbell", lambda e: e["frame"] == 3)
        assert [(e["event_type"], e["frame"]) for e in doorbell_events(everything)] == [
            ("known_person", 1), ("unknown_person", 3)]
    finally:
        b.stop()


def _stored(node: str, fid: int, trigger: str = "interval") -> StoredFrame:
    return StoredFrame(node, fid, None, 0.0, 1, 640, 480, trigger, fid, f"{node}/{fid}.jpg")


def test_behind_it_skips_the_oldest_frames_but_never_a_doorbell_frame(data_dir):
    # The queue's policy alone: no worker is started, nothing is taken from the queue.
    from espcam.backend.ratelog import RateLimitedLog
    from espcam.backend.storage import Storage

    storage = Storage(data_dir)
    a = Analysis(Settings(data_dir=str(data_dir), analysis_queue=3), str(data_dir),
                 storage.index, storage.locate, lambda f: None,
                 RateLimitedLog(__import__("logging").getLogger("test")))
    try:
        a.offer(_stored("cam-a", 1, BUTTON))
        for fid in range(2, 7):
            a.offer(_stored("cam-a", fid))
        a.offer(_stored("cam-b", 1))
        # Kept: the doorbell frame and the newest; skipped, oldest first: 2, 3, 4, 5.
        assert [(f.node, f.frame_id) for f in a._queue] == [("cam-a", 1), ("cam-a", 6),
                                                            ("cam-b", 1)]
        assert a.counters["analysis_skipped"] == 4
        # The doorbell frame first; cam-a's next findings say how many of its frames were
        # skipped since its findings before.
        assert a._take() == (_stored("cam-a", 1, BUTTON), 4)
        assert a._take() == (_stored("cam-a", 6), 0)
        assert a._take() == (_stored("cam-b", 1), 0)
    finally:
        a.close()
        storage.close()


def test_while_ingest_is_busy_only_doorbell_frames_are_analysed(data_dir):
    # The queue's policy alone, on a clock of the test's: no worker is started.
    import logging
    import threading

    from espcam.backend import analyse
    from espcam.backend.ratelog import RateLimitedLog
    from espcam.backend.storage import Storage

    storage = Storage(data_dir)
    a = Analysis(Settings(data_dir=str(data_dir), analysis_queue=64), str(data_dir),
                 storage.index, storage.locate, lambda f: None,
                 RateLimitedLog(logging.getLogger("test")))
    now = [100.0]
    a.clock = lambda: now[0]
    try:
        for fid in range(1, analyse.BUSY_FRAMES + 2):  # a burst: all in the same instant
            a.offer(_stored("cam-a", fid))
        assert a.busy() == analyse.BUSY_WINDOW
        a.offer(_stored("cam-a", 99, BUTTON))
        assert a._take() == (_stored("cam-a", 99, BUTTON), 0)  # the doorbell does not wait
        taken = []
        t = threading.Thread(target=lambda: taken.append(a._take()))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not taken  # the others wait for ingest to calm down
        now[0] += analyse.BUSY_WINDOW
        with a._cond:
            a._cond.notify()
        t.join(10)
        assert taken == [(_stored("cam-a", 1), 0)]
    finally:
        a.close()
        storage.close()


# Python started with this folder on PYTHONPATH finds none of the faces extra: importing any
# of it fails, and importlib.util.find_spec says it is not there, as on a plain install.
WITHOUT_FACES = """import sys
for name in ("numpy", "dlib", "face_recognition_models"):
    sys.modules[name] = None
"""


def cli(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    from e2e_helpers import ESPCAM

    return subprocess.run([ESPCAM, *args, "--data-dir", str(data_dir)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_without_the_faces_extra_the_backend_runs_as_before_and_says_so(
        broker, data_dir, tmp_path, light_node, everything):
    from e2e_helpers import ERROR, OK, Serve, backend_online

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "sitecustomize.py").write_text(WITHOUT_FACES)
    env = {"PYTHONPATH": str(plain)}
    # The interpreter the backend runs in really lacks them.
    for name in ("numpy", "dlib", "face_recognition_models"):
        p = subprocess.run([sys.executable, "-c", f"import {name}"], env={**os.environ, **env},
                           capture_output=True, text=True)
        assert "ModuleNotFoundError" in p.stderr, (name, p.stderr)
    serve = Serve(broker, data_dir, tmp_path / "serve.log", env=env).start()
    try:
        backend_online(everything)
        cam = light_node(NODE)
        ha = HomeAssistant(everything, NODE)
        ring(cam, 1)
        fid = cam.publish_frame(facephotos.frame("collins"), 1, trigger=BUTTON)
        everything.json_on(f"espcam/{NODE}/event", lambda e: e["frame"] == fid)
        status = everything.json_on("espcam/_backend/status", lambda d: d["analysis"] == "off")
        assert status["frames_to_analyse"] == 0
        # No worker was started, and no Motion, Person or Last person entity that would stay
        # unknown; the doorbell's ring still reaches Home Assistant.
        assert Path(f"/proc/{serve.proc.pid}/task/{serve.proc.pid}/children").read_text() == ""
        platforms = {k: c["platform"] for k, c in components(ha.document()).items()}
        assert "motion" not in platforms and platforms["doorbell"] == "event"
        assert ha.state("doorbell")["event_type"] == "ring"
        assert not [m for m in everything.msgs if "/analysis/" in m.topic]
        # Enrolling says why it cannot; listing works without the packages.
        photo = tmp_path / "alice.jpg"
        photo.write_bytes(facephotos.enrolment_photo("collins"))
        r = cli(data_dir, env, "faces", "add", "alice", str(photo))
        assert r.returncode == ERROR and "face recognition is not installed" in r.stderr \
            and "pip install 'espcam[faces]'" in r.stderr, r.stderr
        r = cli(data_dir, env, "faces", "list")
        assert r.returncode == OK and "no one enrolled" in r.stdout, r.stderr
    finally:
        serve.stop()
    said = [line for line in serve.log_text().splitlines() if "analysis is off" in line]
    assert len(said) == 1 and said[0].endswith(
        "analysis is off: numpy, dlib, face_recognition_models not installed "
        "(pip install 'espcam[faces]')"), said
