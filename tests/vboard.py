"""A virtual board for `espcam deploy` tests: MicroPython's unix port behind a pseudo-terminal.

socat links a pty (the "serial port") to `micropython -i tests/vboard_boot.py <fs>`, which runs
boot.py and main.py from the board's filesystem folder and then sits at the REPL; mpremote
drives that REPL like a board's (raw REPL; `resume`, because Ctrl-D would end the interpreter).
The host stand-ins of sim/board play camera/machine/network, so the deployed app really runs:
machine.reset() ends the process and the supervisor here powers the board up again on the same
port path, the way a board with native USB drops off and comes back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from espcam.sim.chip import BOARD_LIB, micropython_binary
from espcam.sim.images import make_pool
from espcam.sim.node import node_mac

BOOT = Path(__file__).resolve().parent / "vboard_boot.py"
CAUSES = {"reset": 2, "deepsleep": 4, "soft_reset": 5}  # machine.*_RESET values


class VirtualBoard:
    """`fs` is the board's filesystem; `port` is the path to give mpremote."""

    def __init__(self, workdir: Path, name: str = "vboard", wifi: dict | None = None) -> None:
        if not shutil.which("socat"):
            raise RuntimeError("socat is not installed: run ./scripts/setup.sh")
        self.dir = Path(workdir).resolve()
        self.fs = self.dir / "fs"
        self.port = str(self.dir / "tty")
        for d in (self.fs, self.dir / "ctl", self.dir / "captures"):
            d.mkdir(parents=True, exist_ok=True)
        make_pool(self.dir / "images", name, count=3, frame_size="VGA")
        sim = {
            "camera_api": "module",
            "images": str(self.dir / "images"),
            "mac": node_mac(name),
            "wifi": wifi or {"ssid": "espcam-test", "password": "test-wifi-pw"},
            "wifi_connect_ms": 100,
            "ip": "127.0.0.1",
        }
        (self.dir / "sim.json").write_text(json.dumps(sim))
        self.boots = 0
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)

    def start(self) -> VirtualBoard:
        self._thread.start()
        self.wait_port()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)
        self._thread.join(5)

    def wait_port(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not Path(self.port).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the virtual board's port {self.port} did not appear")
            time.sleep(0.05)

    def captures(self) -> list[Path]:
        return sorted((self.dir / "captures").glob("*.jpg"))

    def _spawn(self, cause: int) -> subprocess.Popen:
        (self.dir / "exit.json").unlink(missing_ok=True)
        (self.dir / "boot.json").write_text(json.dumps({"reset_cause": cause, "wake_reason": 0}))
        self.boots += 1
        env = dict(
            os.environ,
            ESPCAM_SIM_DIR=str(self.dir),
            # The filesystem is on the path from the first instruction, as on a board: mpremote
            # may break into a board that is still starting, before vboard_boot.py has put ''
            # first (a probe `import` then found nothing, about once per full run).
            MICROPYPATH=f"{self.fs}:{BOARD_LIB}:{self.fs / 'lib'}",
        )
        # The board side of the pty is left in cooked mode (minus echo and CR insertion):
        # MicroPython switches it to raw for its REPL itself, and while code runs, a Ctrl-C
        # from mpremote must become SIGINT (KeyboardInterrupt), as it does on a board.
        mpy = micropython_binary()
        child = f"exec:{mpy} -i {BOOT} {self.fs},pty,setsid,ctty,stderr,echo=0,onlcr=0"
        return subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.port}", child],
            cwd=self.fs,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "socat.log", "ab"),
        )

    def _supervise(self) -> None:
        cause = 1  # PWRON_RESET
        while not self._stop.is_set():
            self._proc = self._spawn(cause)
            self._proc.wait()
            if self._stop.is_set():
                break
            try:
                why = json.loads((self.dir / "exit.json").read_text())
            except (OSError, ValueError):
                why = {"why": "soft_reset"}  # the interpreter ended (e.g. Ctrl-D at the REPL)
            if why.get("why") == "deepsleep" and why.get("ms"):
                self._stop.wait(why["ms"] / 1000)
            cause = CAUSES.get(why.get("why"), 5)
