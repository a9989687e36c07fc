"""Helpers for the end-to-end tests (tests/test_e2e_*.py): `espcam serve` and the `espcam`
command as subprocesses, simulated MicroPython nodes (sim/runner.py) on a real Mosquitto, and
what a user can look at afterwards: the files, the SQLite index, `espcam frames`.

A simulated node powered on with a fresh board folder numbers its frames 1, 2, 3, ... in
capture order (docs/protocol.md, "Frame ids"), and its camera stand-in writes every frame it
hands out to captures/000001.jpg, 000002.jpg, ... before returning it; the camera never fails
unless told to. So, for a node that was never powered off, capture file N is frame N.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
ESPCAM = str(Path(sys.executable).parent / "espcam")
OK, ERROR, USAGE, REFUSED, QUEUED, NO_ANSWER = range(6)  # docs/backend.md, exit codes
PIN_FLASH = 4


class Serve:
    """`espcam serve` as a subprocess with its own data directory and log file."""

    def __init__(self, broker, data_dir: Path, log: Path, client_id: str = "e2e-backend",
                 env: dict[str, str] | None = None) -> None:
        self.broker, self.data_dir, self.log = broker, Path(data_dir), Path(log)
        self.env = dict(os.environ, ESPCAM_CLIENT_ID=client_id, **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Serve:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [ESPCAM, "serve", "--broker", self.broker.url, "--data-dir", str(self.data_dir)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )
        return self

    def kill(self) -> None:
        """kill -9: no goodbye, the broker publishes the backend's last will."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def backend_online(observer, start: int = 0, timeout: float = 30) -> None:
    """The backend announced itself (retained `_backend/availability` = online)."""
    observer.topic("espcam/_backend/availability", timeout, start, payload=b"online")


def espcam(broker, data_dir: Path, *args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    """The `espcam` command as a user types it."""
    return subprocess.run(
        [ESPCAM, *args, "--broker", broker.url, "--data-dir", str(data_dir),
         "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 60,
    )


def captured(node) -> dict[int, bytes]:
    """frame id -> the JPEG the node's camera handed out (see the module docstring)."""
    return {i: p.read_bytes() for i, p in enumerate(node.captures(), start=1)}


def index_rows(data_dir: Path, node: str | None = None) -> list[tuple[str, int, int, str, str]]:
    """(node, frame id, bytes, trigger, path) from the backend's SQLite index."""
    db_path = Path(data_dir) / "index.sqlite3"
    if not db_path.exists():
        return []
    q = "SELECT node, frame_id, bytes, trigger, path FROM frames"
    args: tuple = ()
    if node is not None:
        q += " WHERE node = ?"
        args = (node,)
    for _ in range(50):
        try:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute(q + " ORDER BY node, frame_id", args).fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError:  # the backend is writing (or creating) it right now
            time.sleep(0.1)
    raise AssertionError(f"cannot read {db_path}")


def stored_ids(data_dir: Path, node: str) -> set[int]:
    return {r[1] for r in index_rows(data_dir, node)}


def files_on_disk(data_dir: Path, node: str) -> set[str]:
    """Frame files of a node (not latest.jpg), relative to the data directory."""
    return {str(p.relative_to(data_dir)) for p in Path(data_dir).glob(f"{node}/*/*.jpg")}


def frames_cli(broker, data_dir: Path, node: str) -> list[dict]:
    r = espcam(broker, data_dir, "frames", node, "--json")
    assert r.returncode == OK, r.stdout + r.stderr
    return json.loads(r.stdout)


def command(observer, node: str, cmd: str, timeout: float = 30, **kw) -> dict:
    """A command as with mosquitto_pub; returns the node's ack (asserted ok)."""
    cid = f"e2e-{cmd}-{time.monotonic_ns()}"
    ack = observer.command(node, {"id": cid, "cmd": cmd, **kw}, timeout=timeout)
    assert ack["ok"], ack
    return ack


def wait_captures(node, n: int, timeout: float = 60) -> None:
    """Until the node's camera has handed out at least n frames (it keeps capturing)."""
    try:
        wait_until(lambda: len(node.captures()) >= n, timeout, f"{node.name}: {n} captures")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; node log:\n{node.log()[-2000:]}") from None


def stop_interval(observer, node: str) -> int:
    """Turns the node's interval captures off and returns how many frames it captured.

    The node handles commands between captures, and a frame's last chunk is published at
    QoS 1 and waited for, so once the ack is in, every frame captured before it is with the
    broker, and no further frame is captured."""
    command(observer, node.name, "config", set={"interval": 0})
    return len(node.captures())


def assert_stored_identical(data_dir: Path, node, expected: dict[int, bytes] | None = None):
    """Every frame in the index for `node` is on disk with exactly the captured bytes, once;
    the index and the files agree. Returns the stored frame ids."""
    expected = captured(node) if expected is None else expected
    rows = index_rows(data_dir, node.name)
    ids = [r[1] for r in rows]
    assert len(ids) == len(set(ids)), f"{node.name}: a frame id is indexed twice: {ids}"
    for _, fid, size, _, path in rows:
        assert fid in expected, f"{node.name}: frame {fid} stored but never captured"
        data = (Path(data_dir) / path).read_bytes()
        assert data == expected[fid], f"{node.name}: frame {fid} differs from the capture"
        assert size == len(data)
    assert files_on_disk(data_dir, node.name) == {r[4] for r in rows}
    assert not list(Path(data_dir).rglob(".tmp-*"))
    return set(ids)
