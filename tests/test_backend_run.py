"""`./run` as a user runs it: the whole system on this machine (its own Mosquitto, `espcam
serve`, simulated MicroPython cameras), started, used and stopped with Ctrl-C or SIGTERM.

Each test gives ./run its own run and data directories (ESPCAM_RUN_DIR, ESPCAM_DATA_DIR), so
nothing of the checkout's ./run.d and ./data is touched."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from polling import wait_until

ROOT = Path(__file__).resolve().parent.parent


class Run:
    """./run in a session of its own, as from a terminal: Ctrl-C is SIGINT to the terminal's
    foreground process group, which is ./run's group."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.run_dir, self.data_dir = tmp / "run.d", tmp / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESPCAM_")}
        env.update(ESPCAM_RUN_DIR=str(self.run_dir), ESPCAM_DATA_DIR=str(self.data_dir),
                   ESPCAM_NODES="2", ESPCAM_INTERVAL="2", ESPCAM_BROKER_PORT=str(port))
        self.proc = subprocess.Popen([str(ROOT / "run")], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: "Ctrl-C stops everything." in self.output or self.proc.poll()
                   is not None, 180, "./run to start")
        assert self.proc.poll() is None, self.output

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self) -> int:
        rc = self.proc.wait(120)
        self._reader.join(10)
        return rc

    def log(self, name: str) -> str:
        return (self.run_dir / name).read_text(errors="replace")

    def stored(self, node: str) -> list[int]:
        return sorted(int(p.stem.rsplit("_", 1)[1])
                      for p in self.data_dir.glob(f"{node}/*/*.jpg"))


def survivors(tmp: Path) -> list[str]:
    """Processes that still refer to this test's directories (command line, working
    directory or environment): anything ./run started and left behind."""
    mark = str(tmp)
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(d / "cwd")
            env = (d / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if mark in cmd or cwd.startswith(mark) or mark in env:
            found.append(f"{d.name}: {cmd.strip()}")
    return found


def clean_logs(run: Run) -> None:
    for name in ("backend.log", "sim.log"):
        text = run.log(name)
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, f"{name}:\n{text}"
    assert "LOST" not in run.log("backend.log"), run.log("backend.log")
    assert run.log("sim.log").rstrip().endswith("espcam sim: stopped"), run.log("sim.log")


@pytest.fixture
def taken_port():
    """A port something else listens on, as Debian's own Mosquitto service would on 1883."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_run_takes_a_free_port_and_ctrl_c_stops_everything_cleanly(tmp_path, taken_port):
    run = Run(tmp_path, taken_port)
    try:
        port = int((run.run_dir / "port").read_text())
        assert port != taken_port
        assert f"{taken_port} is taken" in run.output and f"using free port {port}" in run.output
        wait_until(lambda: run.stored("sim-1"), 60, "a frame of sim-1")  # it is up
        # The commands it prints work as printed (they carry the port).
        capture = re.search(r"capture now: +(.*)", run.output).group(1)
        assert f"127.0.0.1:{port}" in capture
        r = subprocess.run(shlex.split(capture), cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "stored at" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: len(run.stored("sim-2")) >= 2, 60, "frames of sim-2")
    finally:
        run.ctrl_c()
        run.finish()
    assert survivors(tmp_path) == []  # nothing outlives ./run
    assert "run: stopping" in run.output and "exited" not in run.output, run.output
    clean_logs(run)
    first_run = {n: run.stored(n) for n in ("sim-1", "sim-2")}

    # Again, same folders: the simulated boards power on and number their frames from the
    # next block of ids (257); no frame is reported lost for it.
    run = Run(tmp_path, taken_port)
    try:
        wait_until(lambda: any(i > 256 for i in run.stored("sim-1")), 60, "new frames")
    finally:
        run.ctrl_c()
        run.finish()
    assert survivors(tmp_path) == []
    clean_logs(run)
    for node, ids in first_run.items():
        assert set(ids) <= set(run.stored(node))


def test_a_second_sigterm_while_stopping_still_leaves_nothing_behind(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = Run(tmp_path, port)
    try:
        wait_until(lambda: run.stored("sim-1"), 60, "a frame")
    finally:
        run.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "run: stopping" in run.output, 30, "./run to start stopping")
        run.proc.send_signal(signal.SIGTERM)  # impatient: a second one
        run.finish()
    assert survivors(tmp_path) == []
