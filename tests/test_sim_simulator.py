"""Simulator (N nodes of the real node app) and its command line, `espcam sim` and
`python -m espcam.sim.runner`, against a real Mosquitto; also from an espcam installed outside
the checkout."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from espcam.sim.simulator import Simulator
from observer import Observer, parse_chunk
from provision_helpers import installed_command, installed_copy

BIN = Path(sys.executable).parent
COMMANDS = {
    "espcam sim": [str(BIN / "espcam"), "sim"],
    "python -m": [sys.executable, "-m", "espcam.sim.runner"],
}


def processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_simulator_runs_n_nodes_with_distinct_frames(broker, observer, tmp_path: Path) -> None:
    sim = Simulator(2, broker.host, broker.port, tmp_path / "sim", config={"interval": 1})
    with sim:
        got: dict[str, bytes] = {}
        for node in sim.nodes:
            chunk = observer.wait(lambda m, n=node.name: m.topic == f"espcam/{n}/frame", 60)
            fid = parse_chunk(chunk.payload).frame_id
            data, meta, _ = observer.frame(node.name, fid)
            assert data == node.captures()[fid - 1].read_bytes()
            got[node.name] = data
        assert got["sim-1"] != got["sim-2"]
        procs = [n.process for n in sim.nodes]
    assert all(p is not None and p.poll() is not None for p in procs)
    assert [n.status for n in sim.nodes] == ["stopped", "stopped"]


def run_until_online(cmd: list[str], folder: Path, broker, observer: Observer,
                     **popen) -> tuple[list[str], str]:  # fmt: skip
    """Runs a simulator command line with one node until the node's birth is on the broker,
    then SIGTERM; returns the lines printed before the birth and the rest of the output."""
    mark = observer.mark()
    cmd = [*cmd, "--nodes", "1", "--broker", broker.url, "--dir", str(folder),
           "--interval", "0", "--frame-size", "QVGA"]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **popen)
    try:
        observer.topic("espcam/sim-1/availability", payload=b"online", start=mark)
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    lines = out.splitlines()
    return lines, out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_line_prints_events_and_stops_on_sigterm(broker, observer, tmp_path: Path,
                                                         command) -> None:  # fmt: skip
    folder = tmp_path / "cli"
    lines, out = run_until_online(COMMANDS[command], folder, broker, observer, cwd=tmp_path)
    started = [line for line in lines if " started " in line]
    assert len(started) == 1
    assert "sim-1" in started[0] and "PWRON_RESET" in started[0]
    assert lines[-1] == "espcam sim: stopped"
    assert not processes_mentioning(str(folder)), "a node process outlived the CLI"
    config = (folder / "sim-1" / "board" / "config.json").read_text()
    assert '"frame_size": "QVGA"' in config


def test_an_installed_espcam_runs_the_node_app_it_ships(broker, observer, tmp_path: Path) -> None:
    # Nothing of the checkout: the node app, the stand-ins and the launcher come from the
    # installed package, and the node's MQTT traffic needs no library fetched into a checkout.
    site = installed_copy(tmp_path / "site-packages")
    show = ("from espcam.sim import chip, node; print(node.NODE_SRC, chip.BOARD_LIB, "
            "chip.LAUNCH, chip.micropython_path(node.NODE_SRC))")
    cmd, env = installed_command(site, show)
    shown = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    package = site / "espcam"
    assert shown.stdout.split() == [
        str(package / "node"), str(package / "sim" / "board"), str(package / "sim" / "launch.py"),
        # ".frozen": the interpreter's own frozen modules (ssl), as on a board.
        f"{package / 'sim' / 'board'}:.frozen:{package / 'node' / 'lib'}",
    ]

    code = "import runpy; runpy.run_module('espcam.sim.runner', run_name='__main__')"
    cmd, env = installed_command(site, code)
    folder = tmp_path / "sim"
    run_until_online(cmd, folder, broker, observer, env=env, cwd=tmp_path)
    assert "Traceback" not in (folder / "sim-1" / "node.log").read_text()
