"""The `espcam` command as a user runs it (a subprocess), against a real Mosquitto, light nodes
answering, and the backend storing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, Watcher  # noqa: E402

ESPCAM = str(Path(sys.executable).parent / "espcam")
OK, ERROR, USAGE, REFUSED, QUEUED, NO_ANSWER = range(6)


@pytest.fixture
def backend(broker, data_dir):
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="cli-backend"))
    b.start()
    assert b.connected.wait(10)
    yield b
    b.stop()


@pytest.fixture
def cam(broker):
    n = LightNode(broker.host, broker.port, "cam-cli").start()
    yield n
    if n.connected.is_set():
        n.stop()


@pytest.fixture
def espcam(broker, data_dir):
    def run(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ESPCAM, *args, "--broker", broker.url, "--data-dir", str(data_dir),
             "--timeout", str(timeout)],
            capture_output=True, text=True, timeout=60,
        )
    return run


def test_capture_done_and_wait_for_the_stored_frame(backend, cam, espcam, data_dir):
    r = espcam("capture", "cam-cli", "--wait-frame")
    assert r.returncode == OK, r.stderr
    path = Path(r.stdout.split(" stored at ")[1].strip())
    assert path.is_file() and data_dir in path.parents
    assert cam.commands[-1]["cmd"] == "capture"
    r = espcam("frames", "cam-cli", "--json")
    assert r.returncode == OK, r.stderr
    (frame,) = json.loads(r.stdout)
    assert Path(frame["file"]) == path and frame["trigger"] == "command"
    r = espcam("nodes", "--json")
    (node,) = json.loads(r.stdout)
    assert (node["node"], node["availability"], node["last_frame"]) == (
        "cam-cli", "online", frame["frame_id"])
    assert "cam-cli" in espcam("nodes").stdout
    assert str(path) in espcam("frames", "cam-cli", "--since", "1h").stdout


def test_flash_config_status_sleep_reboot_done(cam, espcam):
    r = espcam("flash", "cam-cli", "pulse", "--ms", "300")
    assert r.returncode == OK and r.stdout.startswith("done"), r.stdout + r.stderr
    assert cam.commands[-1] == {"id": cam.commands[-1]["id"], "cmd": "flash", "state": "pulse",
                                "ms": 300}
    r = espcam("config", "cam-cli", "quality=55", "flash_on_capture=true", "frame_size=SVGA")
    assert r.returncode == OK, r.stdout + r.stderr
    assert cam.settings["quality"] == 55 and cam.settings["flash_on_capture"] is True
    r = espcam("status", "cam-cli")
    assert r.returncode == OK
    state = json.loads(r.stdout.split("\n", 1)[1])
    assert state["settings"]["frame_size"] == "SVGA"
    assert espcam("reboot", "cam-cli").returncode == OK
    assert espcam("sleep", "cam-cli", "60").returncode == OK
    assert [c["cmd"] for c in cam.commands] == ["flash", "config", "status", "reboot", "sleep"]


def test_refused_prints_the_nodes_error(cam, espcam):
    cam.refuse["flash"] = "this board has no flash LED"
    r = espcam("flash", "cam-cli", "on")
    assert r.returncode == REFUSED
    assert "refused: this board has no flash LED" in r.stdout


def test_sleeping_node_gets_the_command_queued_and_runs_it_on_wake(broker, cam, espcam):
    cam.sleep()
    r = espcam("config", "cam-cli", "interval=60")
    assert r.returncode == QUEUED, r.stdout + r.stderr
    assert "queued" in r.stdout and "sleeping" in r.stdout
    assert cam.commands == []
    w = Watcher(broker.host, broker.port, "espcam/cam-cli/ack")
    try:
        cam.start()  # wakes up: the broker hands over the queued command
        w.wait_for(lambda _: any(a["cmd"] == "config" and a["ok"]
                                 for a in w.json("espcam/cam-cli/ack")))
    finally:
        w.close()
    assert cam.settings["interval"] == 60


def test_unknown_node_gets_no_answer(espcam):
    r = espcam("capture", "cam-never-seen", timeout=1)
    assert r.returncode == NO_ANSWER
    assert "never announced itself" in r.stdout


@pytest.mark.parametrize("args", [
    ("config", "cam-cli", "quality=500"),
    ("config", "cam-cli", "nosuch=1"),
    ("config", "cam-cli", "quality"),
    ("flash", "cam-cli", "pulse", "--ms", "0"),
    ("flash", "cam-cli", "on", "--ms", "10"),
    ("flash", "cam-cli", "blink"),
    ("sleep", "cam-cli", "0"),
    ("sleep", "cam-cli", "1209601"),  # past the broker's 14-day session expiry
    ("capture", "../cam"),
    ("capture", "Cam-1"),
])
def test_junk_commands_are_refused_locally_and_nothing_is_sent(cam, espcam, args):
    r = espcam(*args)
    assert r.returncode == USAGE, r.stdout + r.stderr
    assert r.stderr.strip()
    # Something valid afterwards: had the junk been sent, the node would have seen it first.
    assert espcam("status", "cam-cli").returncode == OK
    assert [c["cmd"] for c in cam.commands] == ["status"]


def test_unreachable_broker_and_missing_index(tmp_path):
    r = subprocess.run([ESPCAM, "capture", "cam-1", "--broker", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == ERROR and "cannot reach broker" in r.stderr
    r = subprocess.run([ESPCAM, "nodes", "--data-dir", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == ERROR and "no index" in r.stderr
