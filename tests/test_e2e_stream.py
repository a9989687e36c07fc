"""End to end: three simulated ESP32-CAMs (the real node/ files on MicroPython) stream through a
real Mosquitto to `espcam serve`; what the cameras produced is what ends up on disk."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import (  # noqa: E402
    Serve,
    assert_stored_identical,
    backend_online,
    captured,
    command,
    frames_cli,
    stop_interval,
    stored_ids,
    wait_captures,
    wait_until,
)
from espcam.sim.runner import Simulator  # noqa: E402
from observer import retained  # noqa: E402


def events(observer, node: str) -> list[int]:
    """Frame ids of the node's "frame stored" events, as announced, in order."""
    return [json.loads(m.payload)["frame"] for m in list(observer.msgs)
            if m.topic == f"espcam/{node}/event"]


@pytest.fixture
def serve(broker, tmp_path, observer):
    s = Serve(broker, tmp_path / "data", tmp_path / "backend.log").start()
    backend_online(observer)
    yield s
    s.stop()


def test_three_nodes_sustained_run_every_frame_on_disk_identical_once(broker, observer, serve,
                                                                      tmp_path):
    data = serve.data_dir
    # A pool larger than the frames of the run: every frame of every node has its own bytes.
    sim = Simulator(3, broker.host, broker.port, tmp_path / "sim", config={"interval": 2},
                    pool=40)
    with sim:
        for n in sim.nodes:
            observer.topic(f"espcam/{n.name}/availability", 30, payload=b"online")
        asked: dict[str, list[int]] = {n.name: [] for n in sim.nodes}
        for _ in range(4):  # streaming at 2 s, with a capture command after every 2 frames
            for n in sim.nodes:
                wait_captures(n, len(n.captures()) + 2)
            for n in sim.nodes:
                asked[n.name].append(command(observer, n.name, "capture")["result"]["frame"])
        produced = {n.name: stop_interval(observer, n) for n in sim.nodes}
        for n in sim.nodes:
            # 4 x 2 frames of its own (the first is owed at boot) and 4 commanded ones.
            assert produced[n.name] >= 12, produced
            # Every frame the camera produced is stored, under its id 1 … N, and announced.
            want = set(range(1, produced[n.name] + 1))
            wait_until(lambda n=n, want=want: stored_ids(data, n.name) == want, 60,
                       f"{n.name}'s frames {sorted(want)} in the index")
            wait_until(lambda n=n, want=want: set(events(observer, n.name)) == want, 60,
                       f"{n.name}'s {len(want)} stored events")
        for n in sim.nodes:
            frames = captured(n)
            assert len(frames) == produced[n.name]  # nothing captured after the interval stop
            ids = assert_stored_identical(data, n, frames)
            assert ids == set(range(1, produced[n.name] + 1))
            # What a user lists with `espcam frames`: each frame once, the file's bytes exact.
            listed = frames_cli(broker, data, n.name)
            assert sorted(f["frame_id"] for f in listed) == sorted(ids)
            for f in listed:
                assert Path(f["file"]).read_bytes() == frames[f["frame_id"]]
            triggers = {f["frame_id"]: f["trigger"] for f in listed}
            assert all(triggers[fid] == "command" for fid in asked[n.name])
            # The first interval frame is owed at boot (docs/protocol.md, metadata "trigger").
            assert triggers[1] == "boot"
            assert {triggers[fid] for fid in ids - set(asked[n.name]) - {1}} == {"interval"}
            # One stored event per frame: nothing was stored twice.
            assert sorted(events(observer, n.name)) == sorted(ids)
            # Home Assistant (or mosquitto_sub) gets the newest frame from the retained image.
            newest = frames[produced[n.name]]
            assert retained(broker.host, broker.port, f"espcam/{n.name}/image") == newest
            assert (data / n.name / "latest.jpg").read_bytes() == newest
            assert n.status == "running" and n.boots == 1
    assert "Traceback" not in serve.log_text()
