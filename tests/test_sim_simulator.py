"""Simulator (N nodes of the real node app) and the `python -m espcam.sim.runner` command line,
against a real Mosquitto."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from espcam.sim.runner import ROOT, Simulator
from observer import parse_chunk


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
        procs = [n._proc for n in sim.nodes]
    assert all(p is not None and p.poll() is not None for p in procs)
    assert [n.status for n in sim.nodes] == ["stopped", "stopped"]


def test_command_line_prints_events_and_stops_on_sigterm(broker, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "espcam.sim.runner", "--nodes", "1", "--broker", broker.url]
    cmd += ["--dir", str(tmp_path / "cli"), "--interval", "0", "--frame-size", "QVGA"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    lines = []
    for line in p.stdout:
        lines.append(line)
        if "started" in line:
            break
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    assert "sim-1" in lines[-1] and "PWRON_RESET" in lines[-1]
    assert "stopped" in out
    assert not processes_mentioning(str(tmp_path / "cli")), "a node process outlived the CLI"
    config = (tmp_path / "cli" / "sim-1" / "board" / "config.json").read_text()
    assert '"frame_size": "QVGA"' in config
