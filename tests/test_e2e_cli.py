"""End to end: the `espcam` command (a subprocess, as a user runs it) against a simulated
ESP32-CAM (the real node/ files on MicroPython) and `espcam serve`, on a real Mosquitto."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import (  # noqa: E402
    NO_ANSWER,
    OK,
    PIN_FLASH,
    QUEUED,
    REFUSED,
    Serve,
    backend_online,
    captured,
    espcam,
    frames_cli,
    index_rows,
    wait_until,
)
from observer import retained  # noqa: E402


@pytest.fixture
def serve(broker, tmp_path, observer):
    s = Serve(broker, tmp_path / "data", tmp_path / "backend.log").start()
    backend_online(observer)
    yield s
    s.stop()


@pytest.fixture
def cli(broker, serve):
    def run(*args: str, timeout: float = 15):
        return espcam(broker, serve.data_dir, *args, timeout=timeout)
    return run


def test_capture_wait_frame_prints_the_stored_file_of_the_captured_frame(broker, observer,
                                                                        serve, cli, make_node,
                                                                        tmp_path):
    # The real node publishes the frame first and acks the capture after it (node/lib/espcam/
    # app.py, cmd_capture), so the backend's `event` for the frame can reach the CLI before the
    # node's ack does; the CLI must still report the stored frame. The order depends on timing;
    # small (QQVGA, one chunk) frames and a dozen rounds make it all but certain to occur.
    from espcam.sim.images import make_pool

    make_pool(tmp_path / "qqvga", "cam-cli", count=8, frame_size="QQVGA")
    node = make_node("cam-cli", images_dir=tmp_path / "qqvga", config={"frame_size": "QQVGA"})
    observer.topic("espcam/cam-cli/availability", 30, payload=b"online")
    rounds = 12
    for fid in range(1, rounds + 1):
        r = cli("capture", "cam-cli", "--wait-frame")
        assert r.returncode == OK, r.stdout + r.stderr
        assert r.stdout.startswith(f"done: frame {fid} stored at "), r.stdout
        path = Path(r.stdout.split(" stored at ", 1)[1].strip())
        assert serve.data_dir.resolve() in path.resolve().parents
        assert len(node.captures()) == fid
        assert path.read_bytes() == node.captures()[-1].read_bytes()
    listed = frames_cli(broker, serve.data_dir, "cam-cli")
    assert [f["frame_id"] for f in listed] == list(range(1, rounds + 1))
    assert Path(listed[-1]["file"]) == path and listed[-1]["trigger"] == "command"


def test_flash_and_config_from_the_cli_reach_the_node(broker, observer, serve, cli, make_node):
    node = make_node("cam-cfg")
    observer.topic("espcam/cam-cfg/availability", 30, payload=b"online")

    r = cli("flash", "cam-cfg", "on")
    assert r.returncode == OK and r.stdout.startswith("done"), r.stdout + r.stderr
    wait_until(lambda: node.pins().get(PIN_FLASH) == 1, what="the flash LED pin high")
    r = cli("flash", "cam-cfg", "off")
    assert r.returncode == OK, r.stdout + r.stderr
    wait_until(lambda: node.pins().get(PIN_FLASH) == 0, what="the flash LED pin low")

    r = cli("config", "cam-cfg", "quality=50")
    assert r.returncode == OK and r.stdout.startswith("done"), r.stdout + r.stderr
    state = json.loads(retained(broker.host, broker.port, "espcam/cam-cfg/state"))
    assert state["settings"]["quality"] == 50
    # The next frame carries the new quality in its metadata, and is stored as captured.
    start = observer.mark()
    r = cli("capture", "cam-cfg")
    assert r.returncode == OK, r.stdout + r.stderr
    ack = observer.json_on("espcam/cam-cfg/ack", lambda d: d["cmd"] == "capture", 30, start)
    _, meta, _ = observer.frame("cam-cfg", ack["result"]["frame"], start=start)
    assert meta["q"] == 50
    event = observer.json_on("espcam/cam-cfg/event",
                             lambda d: d["frame"] == ack["result"]["frame"], 30, start)
    assert Path(event["file"]).read_bytes() == node.captures()[-1].read_bytes()
    # `espcam status` and `espcam nodes` (the backend's index) show the setting too.
    r = cli("status", "cam-cfg")
    assert r.returncode == OK, r.stdout + r.stderr
    assert json.loads(r.stdout.split("\n", 1)[1])["settings"]["quality"] == 50

    def nodes_quality():
        r = cli("nodes", "--json")
        mine = [x for x in json.loads(r.stdout) if x["node"] == "cam-cfg"]
        return mine and (mine[0]["state"] or {}).get("settings", {}).get("quality") == 50
    wait_until(nodes_quality, what="`espcam nodes` showing quality 50")
    assert node.status == "running" and node.boots == 1


def test_command_to_a_sleeping_node_is_queued_and_runs_on_wake(broker, observer, serve, cli,
                                                             make_node):
    node = make_node("cam-zz")
    observer.topic("espcam/cam-zz/availability", 30, payload=b"online")
    # Long enough that the next `espcam capture` certainly finds the node still asleep.
    r = cli("sleep", "cam-zz", "8")
    assert r.returncode == OK and r.stdout.startswith("done"), r.stdout + r.stderr
    observer.topic("espcam/cam-zz/availability", 30, payload=b"sleeping")
    node.wait_status("sleeping")
    before = len(node.captures())

    start = observer.mark()
    r = cli("capture", "cam-zz")
    assert r.returncode == QUEUED, r.stdout + r.stderr
    assert r.stdout.startswith("queued") and "sleeping" in r.stdout, r.stdout
    assert node.status == "sleeping", "the node woke before the command was sent"
    assert len(node.captures()) == before

    # On wake the broker hands over the queued command; the node captures and the backend
    # stores the frame.
    observer.topic("espcam/cam-zz/availability", 60, start, payload=b"online")
    ack = observer.json_on("espcam/cam-zz/ack", lambda d: d["cmd"] == "capture", 30, start)
    assert ack["ok"], ack
    fid = ack["result"]["frame"]
    event = observer.json_on("espcam/cam-zz/event", lambda d: d["frame"] == fid, 30, start)
    assert len(node.captures()) == before + 1
    assert Path(event["file"]).read_bytes() == node.captures()[-1].read_bytes()
    assert event["trigger"] == "command"
    rows = index_rows(serve.data_dir, "cam-zz")
    assert [r[1] for r in rows] == [fid]
    assert (serve.data_dir / rows[0][4]).read_bytes() == captured(node)[fid]
    assert node.boots == 2  # power-on, then the timer wake


def test_refused_by_the_node_exits_3_with_the_nodes_reason(broker, observer, serve, cli,
                                                           make_node):
    node = make_node("cam-nocam")
    observer.topic("espcam/cam-nocam/availability", 30, payload=b"online")
    node.camera_fail(True)
    r = cli("capture", "cam-nocam")
    assert r.returncode == REFUSED, r.stdout + r.stderr
    assert r.stdout.startswith("refused: camera:"), r.stdout
    assert node.captures() == [] and node.status == "running"
    node.camera_fail(False)  # the node keeps running and answers the next command
    r = cli("capture", "cam-nocam", "--wait-frame")
    assert r.returncode == OK, r.stdout + r.stderr


def test_reboot_from_the_cli_resets_the_node_which_comes_back(broker, observer, serve, cli,
                                                              make_node):
    node = make_node("cam-rb")
    observer.topic("espcam/cam-rb/availability", 30, payload=b"online")
    start = observer.mark()
    r = cli("reboot", "cam-rb")
    assert r.returncode == OK and r.stdout.startswith("done: reboot"), r.stdout + r.stderr
    node.wait_boots(2)
    gone = observer.topic("espcam/cam-rb/availability", 30, start, payload=b"offline")
    back = observer.topic("espcam/cam-rb/availability", 30, observer.msgs.index(gone) + 1,
                          payload=b"online")
    assert back is not None
    r = cli("status", "cam-rb")  # answering again, after a reset (uptime from zero)
    assert r.returncode == OK, r.stdout + r.stderr
    state = json.loads(r.stdout.split("\n", 1)[1])
    assert state["reset_cause"] != "power_on"
    assert node.boots == 2


def test_capture_wait_frame_without_a_backend_exits_5(broker, observer, make_node, tmp_path):
    node = make_node("cam-alone")
    observer.topic("espcam/cam-alone/availability", 30, payload=b"online")
    r = espcam(broker, tmp_path / "data", "capture", "cam-alone", "--wait-frame", timeout=10)
    assert r.returncode == NO_ANSWER, r.stdout + r.stderr
    assert "captured frame 1, but it was not stored within 10s" in r.stdout, r.stdout
    assert "espcam serve" in r.stdout
    assert len(node.captures()) == 1
