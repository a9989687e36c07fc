"""Frames of which no chunk arrived (noticed through the state document) and re-used frame ids
(a node that lost its flash numbers from 1 again), against a real Mosquitto and light nodes."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, make_jpeg  # noqa: E402
from observer import Observer  # noqa: E402


@pytest.fixture
def backend(broker, data_dir):
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), resend_after=0.3,
                         client_id="backend-gaps")).start()
    assert b.connected.wait(10)
    yield b
    b.stop()


@pytest.fixture
def cam(broker, backend, everything):
    n = LightNode(broker.host, broker.port, "cam-gap").start()
    # The backend has seen the node (its state document) before the test starts.
    everything.topic("espcam/_backend/nodes/cam-gap")
    yield n
    n.stop()


def handled(cam: LightNode, obs: Observer, seed: int) -> int:
    """A frame after what the node sent before: the backend takes one node's messages in order
    and publishes any resend command before this frame's event, so once the event is here,
    whatever the earlier messages made the backend ask for is here too."""
    fid = cam.publish_frame(make_jpeg(seed=seed))
    obs.json_on("espcam/cam-gap/event", lambda e: e["frame"] == fid)
    return fid


def resend_commands(obs: Observer, start: int = 0) -> list[dict]:
    return [json.loads(m.payload) for m in obs.msgs[start:]
            if m.topic == "espcam/cam-gap/cmd" and json.loads(m.payload)["cmd"] == "resend"]


def test_a_frame_named_by_the_state_but_never_seen_is_asked_for_once(cam, everything, data_dir):
    first = cam.publish_frame(make_jpeg(seed=1))
    everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == first)
    # The node captures a frame whose chunks all get lost, then reports it in its state.
    jpeg = make_jpeg(seed=2)
    mark = everything.mark()
    fid = cam.publish_frame(jpeg, skip=range(1000))
    cam.publish_state()
    event = everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == fid, start=mark)
    assert Path(event["file"]).read_bytes() == jpeg
    asked = resend_commands(everything, mark)
    assert asked == [{"id": asked[0]["id"], "cmd": "resend", "frame": fid}]  # all chunks
    # The same state again (every 5 minutes on a node) asks for nothing more.
    mark = everything.mark()
    cam.publish_state()
    handled(cam, everything, seed=3)
    assert resend_commands(everything, mark) == []


def test_a_frame_the_node_no_longer_holds_is_counted_lost(cam, everything):
    mark = everything.mark()
    fid = cam.publish_frame(make_jpeg(seed=3), skip=range(1000))
    cam.held = None  # e.g. it slept since: "frame N is no longer held"
    cam.publish_state()
    report = everything.json_on("espcam/_backend/nodes/cam-gap",
                                lambda d: d["frames_lost"] == 1, start=mark)
    assert report["last_frame"] != fid
    assert len(resend_commands(everything, mark)) == 1


def test_a_reused_frame_id_with_another_crc_is_stored_as_a_new_frame(cam, everything, data_dir):
    a, b = make_jpeg(seed=10), make_jpeg(seed=11)
    mark = everything.mark()
    cam.publish_frame(a, 7)
    everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == 7, start=mark)
    cam.publish_frame(a, 7)  # the same frame again: a duplicate
    cam.publish_frame(b, 7)  # the node lost its flash and counts again: a new frame
    second = everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == 7,
                                start=everything.msgs.index(
                                    next(m for m in everything.msgs[mark:]
                                         if m.topic == "espcam/cam-gap/event")) + 1)
    assert Path(second["file"]).read_bytes() == b
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        rows = db.execute("SELECT frame_id, path FROM frames WHERE node = 'cam-gap' "
                          "ORDER BY received_at").fetchall()
    assert [r[0] for r in rows] == [7, 7]
    assert [(data_dir / r[1]).read_bytes() for r in rows] == [a, b]
    events = [json.loads(m.payload) for m in everything.msgs[mark:]
              if m.topic == "espcam/cam-gap/event"]
    assert len(events) == 2  # the duplicate was not announced


def lost_count(backend: Backend) -> int:
    # The backend's own counter, read after an event that follows what the test sent: the
    # per-node report would say the same only on the timer's next tick.
    return backend.status()["counters"].get("frames_lost", 0)


def test_frame_null_before_the_first_capture_is_no_gap(cam, everything, backend):
    first = cam.publish_frame(make_jpeg(seed=1))
    everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == first)
    # Power cycled: the node reports null until it captures again.
    mark = everything.mark()
    cam.state_overrides = {"frame": None, "reset_cause": "power_on", "uptime": 1.0}
    cam.publish_state()
    nxt = cam.publish_frame(make_jpeg(seed=2), 300)
    everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == nxt, start=mark)
    assert resend_commands(everything, mark) == []
    cam.state_overrides = {"reset_cause": "power_on"}
    cam.publish_state()  # names 300, which arrived: still nothing to ask for
    handled(cam, everything, seed=3)
    assert resend_commands(everything, mark) == [] and lost_count(backend) == 0


def test_id_block_jump_after_a_power_cycle_is_no_gap_but_later_gaps_still_count(
        cam, everything, backend, caplog):
    for seed in (1, 2, 3):
        fid = cam.publish_frame(make_jpeg(seed=seed))
    everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == fid)
    # Today's node, powered off and on: its state names the start of its next id block (256),
    # which it never sent; it holds no frame.
    mark = everything.mark()
    cam.held = None
    cam.next_frame_id = 257
    cam.state_overrides = {"reset_cause": "power_on", "uptime": 1.0}
    cam.publish_state()
    after = cam.publish_frame(make_jpeg(seed=4))
    assert after == 257
    everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == after, start=mark)
    assert resend_commands(everything, mark) == []
    assert lost_count(backend) == 0
    assert not any("LOST" in r.getMessage() for r in caplog.records)
    # A real gap after the jump: 258 published, none of its chunks arrive, the state names it.
    cam.state_overrides = {}
    gone = cam.publish_frame(make_jpeg(seed=5), skip=range(1000))
    cam.publish_state()
    event = everything.json_on("espcam/cam-gap/event", lambda e: e["frame"] == gone, start=mark)
    assert Path(event["file"]).read_bytes() == make_jpeg(seed=5)
    assert [c["frame"] for c in resend_commands(everything, mark)] == [gone]


def test_each_power_on_of_a_ram_spool_node_is_said_once_whatever_the_uptimes(
        broker, backend, everything, caplog):
    """The last state document of a boot that lost power can be its first (the link went soon
    after it connected), which the next boot's first outlasts: only `boot` tells them apart."""
    node = LightNode(broker.host, broker.port, "cam-pow", proto=2).start()
    ram = {"kind": "ram", "frames": 0, "bytes": 0, "budget": 1500000, "dropped": 0}

    def boot_state(uptime: float, boot: int, seed: int) -> None:
        node.state_overrides = {"reset_cause": "power_on", "spool": ram, "uptime": uptime,
                                "boot": boot}
        node.publish_state()
        # Taken in order after the state: once its event is here, the state was handled.
        fid = node.publish_frame(make_jpeg(seed=seed))
        everything.json_on("espcam/cam-pow/event", lambda e: e["frame"] == fid)

    def said() -> int:
        return sum("node cam-pow lost power" in r.getMessage() for r in caplog.records)

    try:
        boot_state(1.5, 256, 1)
        assert said() == 1
        boot_state(2.5, 512, 2)    # powered on again, up longer than that boot's only state
        assert said() == 2
        boot_state(40.0, 512, 3)   # the same boot, later
        assert said() == 2
    finally:
        node.stop()
