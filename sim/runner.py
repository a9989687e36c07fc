"""Runs simulated espcam nodes: the node's own boot.py/main.py and espcam library, unmodified,
on the MicroPython unix port, with host stand-ins for camera/machine/network/esp32/ntptime
(sim/board). A supervisor thread per node plays the chip: it restarts the process after a
deep sleep (timer or pin wake), machine.reset() and a watchdog timeout, and reports a node
whose main.py raised (a board would sit at the REPL). See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
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

from espcam.sim.linkproxy import LinkProxy

from espcam.paths import node_app

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BOARD_LIB = HERE / "board"
LAUNCH = HERE / "launch.py"
NODE_SRC = node_app()

# machine module values of the ESP32 port (sim/board/machine.py uses the same).
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
EXT0_WAKE, TIMER_WAKE = 2, 4
RESET_NAMES = {
    1: "PWRON_RESET",
    2: "HARD_RESET",
    3: "WDT_RESET",
    4: "DEEPSLEEP_RESET",
    5: "SOFT_RESET",
}
WAKE_NAMES = {0: "none", 2: "EXT0_WAKE", 4: "TIMER_WAKE"}

# Heap the stand-in modules themselves take on the unix port (measured: about 31 KB), added to
# a requested heapsize so that the app gets what it would have on a board.
STANDIN_HEAP = 36 * 1024

EventFn = Callable[["SimNode", str, str], None]


def micropython_binary() -> str:
    """The `micropython` next to this interpreter (the venv), else the one on PATH."""
    cand = Path(sys.executable).parent / "micropython"
    if cand.exists():
        return str(cand)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython is not installed: run ./scripts/setup.sh")
    return found


def _die_with_parent() -> None:
    # Linux: the node process gets SIGKILL if the runner (the thread that started it) dies, so
    # a killed runner leaves no orphan nodes behind.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def parse_size(s: str) -> int:
    """'150k' -> 153600, '2m' -> 2097152, '4096' -> 4096 (MicroPython's -X heapsize syntax)."""
    s = s.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def node_mac(name: str) -> str:
    """A deterministic MAC per node name, under Espressif's 24:0a:c4 prefix."""
    h = hashlib.sha256(name.encode()).digest()
    return "24:0a:c4:" + ":".join(f"{b:02x}" for b in h[:3])


def default_config(name: str, broker_host: str, broker_port: int) -> dict[str, Any]:
    return {
        "wifi": {"ssid": "espcam-sim", "password": "simulated-wifi"},
        "broker": {"host": broker_host, "port": broker_port, "user": None, "password": None},
        "node_id": name,
        "prefix": "espcam",
        "interval": 0,
        "frame_size": "VGA",
        "quality": 80,
        "flash_on_capture": False,
        "pir_pin": 13,
        "chunk_size": 4096,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class SimNode:
    """One simulated ESP32-CAM. `workdir` is this node's own folder:

    board/      the board's filesystem (cwd of the app: config.json, files the app writes)
    images/     generated JPEG pool (unless `images_dir` is given)
    captures/   every frame the camera handed to the app, 000001.jpg, ...
    ctl/        injected conditions: motion (one-shot), wifi_down, camera_fail, camera_stuck,
                pir_high; poweroff (stop() asking the node to power off between frames)
    node.log    the app's stdout and stderr, appended across boots
    sim.json, boot.json, pins.json, rtc.bin, wdt.json, wdt, exit.json, camera.on: stand-in state

    With `proxy` (the default) the node reaches the broker through a LinkProxy, so that
    wifi_down() breaks its open connections as a lost access point would.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        broker_host: str,
        broker_port: int,
        *,
        config: dict[str, Any] | None = None,
        camera_api: str = "module",
        heapsize: str | None = None,
        images_dir: Path | None = None,
        env: dict[str, str] | None = None,
        on_event: EventFn | None = None,
        node_src: Path = NODE_SRC,
        wifi_connect_ms: int = 300,
        wifi_ap: dict[str, str] | None = None,
        proxy: bool = True,
    ) -> None:
        if camera_api not in ("module", "class"):
            raise ValueError("camera_api must be 'module' or 'class'")
        self.name = name
        self.dir = Path(workdir).resolve()
        self.board = self.dir / "board"
        self.ctl = self.dir / "ctl"
        self.node_src = Path(node_src).resolve()
        self.heapsize = heapsize
        self.camera_api = camera_api
        self.env = env or {}
        self.on_event = on_event
        # A shallow merge: a key given replaces the default whole (e.g. all of "wifi").
        self.config = {**default_config(name, broker_host, broker_port), **(config or {})}
        for d in (self.dir, self.board, self.ctl, self.dir / "captures"):
            d.mkdir(parents=True, exist_ok=True)
        if images_dir is None:
            images_dir = self.dir / "images"
            if not any(images_dir.glob("*.jpg")):
                from espcam.sim.images import make_pool

                make_pool(images_dir, name, frame_size=self.config.get("frame_size", "VGA"))
        self.images_dir = Path(images_dir).resolve()
        self.proxy: LinkProxy | None = None
        board_config = self.config
        b = self.config.get("broker")
        if proxy and isinstance(b, dict) and isinstance(b.get("host"), str) \
                and isinstance(b.get("port"), int):
            self.proxy = LinkProxy(b["host"], b["port"], (self.ctl / "wifi_down").exists)
            board_config = {**self.config, "broker": {**b, "host": "127.0.0.1",
                                                      "port": self.proxy.port}}
        (self.board / "config.json").write_text(json.dumps(board_config, indent=2))
        _write_json(
            self.dir / "sim.json",
            {
                "camera_api": camera_api,
                "images": str(self.images_dir),
                "mac": node_mac(name),
                "wifi": wifi_ap if wifi_ap is not None else self.config.get("wifi", {}),
                "wifi_connect_ms": wifi_connect_ms,
                "ip": "127.0.0.1",
            },
        )
        self.boots = 0
        self.sleeps: list[dict[str, Any]] = []  # each deep sleep: {"ms", "ext0", "held"}
        self.status = "stopped"
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._poweroff = threading.Event()   # an orderly stop is under way (stop())
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SimNode:
        """Power-on: RTC memory cleared, pins low, reset cause PWRON_RESET."""
        if self._thread and self._thread.is_alive():
            raise RuntimeError(f"{self.name} is already running")
        for f in ("rtc.bin", "exit.json", "pins.json"):
            (self.dir / f).unlink(missing_ok=True)
        (self.ctl / "poweroff").unlink(missing_ok=True)
        if self.proxy is not None:
            self.proxy.start()
        self._stop = threading.Event()
        self._poweroff = threading.Event()
        self.status = "running"
        self.returncode = None
        self._thread = threading.Thread(
            target=self._supervise, name=f"sim-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def request_poweroff(self) -> None:
        """Asks the node to power off at its next idle(), between frames; stop() waits for it.
        Stopping many nodes, ask them all first, so that they finish their frames together.
        The supervisor keeps running meanwhile: the node is started with PR_SET_PDEATHSIG, so
        the end of the supervising thread would kill it in the middle of the frame."""
        self._poweroff.set()
        (self.ctl / "poweroff").touch()

    def stop(self, timeout: float = 5.0, grace: float = 3.0) -> None:
        """An orderly power-off and no restart: the node finishes the frame it is sending and
        powers off at its next idle(). One that does not get there within `grace` seconds
        (stuck on a broker that does not answer, say) gets SIGTERM, then SIGKILL. kill() is
        the power cut in the middle of anything."""
        self.request_poweroff()
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        self._stop.set()
        self._signal(signal.SIGTERM)
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.proxy is not None:
            self.proxy.stop()
        self.status = "stopped"

    def kill(self) -> None:
        """Power cut: SIGKILL now, no restart. The broker sees the TCP connection drop."""
        self._stop.set()
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        if self.proxy is not None:
            self.proxy.stop()
        self.status = "stopped"

    def soft_reset(self) -> None:
        """A soft reset, as Ctrl-D at the REPL or `mpremote soft-reset`: the interpreter starts
        again (SOFT_RESET) but the chip does not, so RTC memory, pins' holds and the camera
        driver's state are kept."""
        _write_json(self.dir / "exit.json", {"why": "soft_reset"})
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    # ------------------------------------------------------------------ observing, injecting

    def pins(self) -> dict[int, int]:
        """Levels of the output pins, e.g. {4: 1} while the flash LED is on."""
        d = _read_json(self.dir / "pins.json") or {}
        return {int(k): int(v) for k, v in d.items()}

    def inject_motion(self) -> None:
        """A rising edge on the PIR pin: delivered by machine.idle(), or wakes a node in deep
        sleep whose ext0 wake is armed. Lost if neither happens (e.g. no PIR configured)."""
        (self.ctl / "motion").touch()

    def wifi_down(self, down: bool = True) -> None:
        self._ctl_flag("wifi_down", down)

    def camera_fail(self, fail: bool = True) -> None:
        self._ctl_flag("camera_fail", fail)

    def camera_stuck(self, stuck: bool = True) -> None:
        """The camera does not probe in a boot that followed a soft reset, until a chip reset."""
        self._ctl_flag("camera_stuck", stuck)

    def pir_high(self, high: bool = True) -> None:
        """Every input pin (the PIR's output) reads 1: a level-high ext0 wake fires at once."""
        self._ctl_flag("pir_high", high)

    def _ctl_flag(self, name: str, on: bool) -> None:
        p = self.ctl / name
        if on:
            p.touch()
        else:
            p.unlink(missing_ok=True)

    def captures(self) -> list[Path]:
        return sorted((self.dir / "captures").glob("[0-9]" * 6 + ".jpg"))

    def flash_at_captures(self) -> list[int]:
        """The flash LED's level at each capture, in the order of captures()."""
        return [
            int((_read_json(p.with_suffix(".json")) or {}).get("flash", 0))
            for p in self.captures()
        ]

    def log(self) -> str:
        try:
            return (self.dir / "node.log").read_text(errors="replace")
        except OSError:
            return ""

    def board_file(self, name: str) -> Path:
        return self.board / name

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        """Polls predicate() until it returns something truthy and returns that; raises
        TimeoutError (with the node's log tail) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {what} within {timeout} s (status {self.status}, "
                    f"boots {self.boots}); log tail:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def wait_status(self, status: str, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self.status == status, timeout, f"status {status!r}")

    def wait_boots(self, n: int, timeout: float = 30.0) -> None:
        self.wait_for(lambda: self.boots >= n and self.status == "running", timeout, f"boot #{n}")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        self.wait_for(lambda: text in self.log(), timeout, f"log line {text!r}")

    def effective_heap(self) -> int:
        """The MicroPython heap given to the process for `heapsize`: on a board the camera,
        machine, network and esp32 modules are built in and the class driver's frame buffer
        lives outside the MicroPython heap; here they are Python code and a bytearray on the
        heap, so their share is added to what the app gets."""
        want = parse_size(self.heapsize or "0")
        extra = STANDIN_HEAP
        if self.camera_api == "class":
            extra += max((p.stat().st_size for p in self.images_dir.glob("*.jp*g")), default=0)
        return want + extra

    # ------------------------------------------------------------------ the supervisor

    def _event(self, event: str, detail: str = "") -> None:
        if self.on_event is not None:
            try:
                self.on_event(self, event, detail)
            except Exception:  # a broken printer must not kill the supervisor
                pass

    def _spawn(self, reset_cause: int, wake: int) -> subprocess.Popen[bytes]:
        for f in ("exit.json", "wdt.json", "wdt"):
            (self.dir / f).unlink(missing_ok=True)
        if reset_cause != SOFT_RESET:
            (self.dir / "camera.on").unlink(missing_ok=True)  # a chip reset clears the driver
        (self.ctl / "motion").unlink(missing_ok=True)  # an edge before boot is lost
        _write_json(self.dir / "boot.json", {"reset_cause": reset_cause, "wake_reason": wake})
        self.boots += 1
        cmd = [micropython_binary()]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.effective_heap()}"]
        cmd += [str(LAUNCH), str(self.board), str(self.node_src)]
        path = ":".join(
            str(p) for p in (BOARD_LIB, self.node_src / "lib", ROOT / ".deps" / "node-lib")
        )
        env = {**os.environ, **self.env, "ESPCAM_SIM_DIR": str(self.dir), "MICROPYPATH": path}
        with open(self.dir / "node.log", "ab") as log:
            log.write(
                f"=== simulator: boot {self.boots}, {RESET_NAMES[reset_cause]}, wake "
                f"{WAKE_NAMES.get(wake, wake)} ===\n".encode()
            )
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
        self._event(
            "started",
            f"boot {self.boots} ({RESET_NAMES[reset_cause]}, wake {WAKE_NAMES.get(wake, wake)})",
        )
        return proc

    def _watch(self, proc: subprocess.Popen[bytes]) -> str:
        """Waits for the process to end; returns 'exit', 'wdt' or 'stop'."""
        while True:
            if proc.poll() is not None:
                return "stop" if self._ending() else "exit"
            if self._stop.is_set():
                return "stop"
            wdt = _read_json(self.dir / "wdt.json")
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
        _write_json(self.dir / "pins.json", why.get("held") or {})
        (self.ctl / "motion").unlink(missing_ok=True)
        ms, ext0, level = why.get("ms"), why.get("ext0"), why.get("level")
        self.sleeps.append({"ms": ms, "ext0": ext0, "held": why.get("held") or {}})
        self.status = "sleeping"
        self._event(
            "slept", f"{ms} ms" + (f", ext0 wake on GPIO{ext0}" if ext0 is not None else "")
        )
        deadline = None if ms is None else time.monotonic() + ms / 1000
        while not self._ending():
            if ext0 is not None:
                # ext0 wakes on a level: at once if the input is already at it (idle low, or the
                # PIR held high by pir_high())
                if level == 0 or (self.ctl / "pir_high").exists():
                    return EXT0_WAKE
                p = self.ctl / "motion"
                if p.exists():
                    p.unlink(missing_ok=True)
                    return EXT0_WAKE
            if deadline is not None and time.monotonic() >= deadline:
                return TIMER_WAKE
            self._stop.wait(0.02)
        return None

    def _ending(self) -> bool:
        # No restart, no wake: stopped, or powering off (which ends the process by itself).
        return self._stop.is_set() or self._poweroff.is_set()

    def _supervise(self) -> None:
        reset_cause, wake = PWRON_RESET, 0
        while not self._ending():
            with self._lock:
                if self._ending():
                    break
                self._proc = proc = self._spawn(reset_cause, wake)
            outcome = self._watch(proc)
            if outcome == "stop":
                break
            if outcome == "wdt":
                self._event("wdt", "watchdog timeout: reset")
                reset_cause, wake = WDT_RESET, 0
                self._release_pins()
                continue
            why = _read_json(self.dir / "exit.json") or {}
            kind = why.get("why")
            if kind == "deepsleep":
                w = self._sleep(why)
                if w is None:
                    break
                self._event("woke", "timer" if w == TIMER_WAKE else "pin (ext0)")
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
        _write_json(self.dir / "pins.json", {})


class Simulator:
    """N nodes named sim-1 … sim-N, each with its own generated JPEG pool (or `images_dir`)."""

    def __init__(
        self,
        nodes: int,
        broker_host: str,
        broker_port: int,
        workdir: Path,
        *,
        camera_api: str = "module",
        config: dict[str, Any] | None = None,
        heapsize: str | None = None,
        images_dir: Path | None = None,
        on_event: EventFn | None = None,
        pool: int = 8,
    ) -> None:
        from espcam.sim.images import make_pool

        self.dir = Path(workdir).resolve()
        self.nodes: list[SimNode] = []
        fs = (config or {}).get("frame_size", "VGA")
        for i in range(1, nodes + 1):
            name = f"sim-{i}"
            ndir = self.dir / name
            imgs = images_dir
            if imgs is None:
                imgs = ndir / "images"
                if not any(imgs.glob("*.jpg")):
                    make_pool(imgs, name, count=pool, frame_size=fs)
            self.nodes.append(
                SimNode(
                    name,
                    ndir,
                    broker_host,
                    broker_port,
                    config=config,
                    camera_api=camera_api,
                    heapsize=heapsize,
                    images_dir=imgs,
                    on_event=on_event,
                )
            )
        self._stopped = False

    def start(self) -> Simulator:
        atexit.register(self.stop)
        for n in self.nodes:
            n.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for n in self.nodes:
            n.request_poweroff()
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, name: str) -> SimNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (sim-1 …)")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of Mosquitto")
    parser.add_argument(
        "--dir", type=Path, default=None, help="working folder (default: a new temporary folder)"
    )
    parser.add_argument(
        "--camera",
        choices=("module", "class"),
        default="module",
        help="camera driver API to simulate",
    )
    parser.add_argument(
        "--interval", type=int, default=10, help="capture interval in seconds (0: off)"
    )
    parser.add_argument("--frame-size", default="VGA", help="frame size setting, e.g. QVGA")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of JPEG files to serve instead of generated ones",
    )
    parser.add_argument(
        "--heapsize",
        default=None,
        help="MicroPython heap per node, e.g. 110k (board without PSRAM)",
    )
    parser.add_argument("--prefix", default="espcam", help="topic prefix")


def _split_broker(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host:
        return s, 1883
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    import tempfile

    host, port = _split_broker(args.broker)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="espcam-sim-"))
    lock = threading.Lock()

    def printer(node: SimNode, event: str, detail: str) -> None:
        with lock:
            print(f"{time.strftime('%H:%M:%S')} {node.name:<10} {event:<8} {detail}", flush=True)

    config = {"interval": args.interval, "frame_size": args.frame_size, "prefix": args.prefix}
    sim = Simulator(
        args.nodes,
        host,
        port,
        workdir,
        camera_api=args.camera,
        config=config,
        heapsize=args.heapsize,
        images_dir=args.images,
        on_event=printer,
    )
    print(f"espcam sim: {args.nodes} node(s), broker {host}:{port}, folder {workdir}", flush=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        sim.start()
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        signal.signal(signal.SIGTERM, old)
        print("espcam sim: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="espcam sim", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
