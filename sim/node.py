"""One simulated ESP32-CAM: the node's own boot.py/main.py and espcam library, unmodified, on the
MicroPython unix port, with host stand-ins for camera/machine/network/esp32/ntptime (sim/board)
and a relay that plays its radio link (sim/linkproxy.py). Its chip (sim/chip.py) runs and
restarts the process; SimNode sets up the node's folder, injects conditions and observes what
the node did. See docs/simulator.md.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from espcam.sim.chip import STANDIN_HEAP, Chip, parse_size, read_json, write_json
from espcam.sim.linkproxy import LinkProxy

from espcam.paths import node_app

NODE_SRC = node_app()

EventFn = Callable[["SimNode", str, str], None]


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
        write_json(
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
        self.chip = Chip(self.dir, self.node_src, env=env, on_event=self._event)

    def _event(self, event: str, detail: str) -> None:
        if self.on_event is not None:
            self.on_event(self, event, detail)

    # ------------------------------------------------------------------ what the chip keeps

    @property
    def status(self) -> str:
        """'running', 'sleeping', 'crashed', 'exited' or 'stopped'."""
        return self.chip.status

    @property
    def boots(self) -> int:
        """Process starts so far: power-on, wakes, resets."""
        return self.chip.boots

    @property
    def sleeps(self) -> list[dict[str, Any]]:
        """Every deep sleep so far: {"ms", "ext0", "held"}."""
        return self.chip.sleeps

    @property
    def returncode(self) -> int | None:
        """The exit status of a node that crashed or exited."""
        return self.chip.returncode

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The node's current (or last) MicroPython process."""
        return self.chip.proc

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SimNode:
        """Power-on: RTC memory cleared, pins low, reset cause PWRON_RESET."""
        if self.chip.running():
            raise RuntimeError(f"{self.name} is already running")
        if self.proxy is not None:
            self.proxy.start()
        self.chip.heap = self.effective_heap() if self.heapsize else None
        self.chip.power_on(self.name)
        return self

    def request_poweroff(self) -> None:
        """Asks the node to power off at its next idle(), between frames; stop() waits for it.
        Stopping many nodes, ask them all first, so that they finish their frames together."""
        self.chip.request_poweroff()

    def stop(self, timeout: float = 5.0, grace: float = 3.0) -> None:
        """An orderly power-off and no restart: the node finishes the frame it is sending and
        powers off at its next idle(). One that does not get there within `grace` seconds
        (stuck on a broker that does not answer, say) gets SIGTERM, then SIGKILL. kill() is
        the power cut in the middle of anything."""
        self.chip.power_off(timeout, grace)
        if self.proxy is not None:
            self.proxy.stop()

    def kill(self) -> None:
        """Power cut: SIGKILL now, no restart. The broker sees the TCP connection drop."""
        self.chip.cut_power()
        if self.proxy is not None:
            self.proxy.stop()

    def soft_reset(self) -> None:
        """A soft reset, as Ctrl-D at the REPL or `mpremote soft-reset`: the interpreter starts
        again (SOFT_RESET) but the chip does not, so RTC memory, pins' holds and the camera
        driver's state are kept."""
        self.chip.soft_reset()

    # ------------------------------------------------------------------ observing, injecting

    def pins(self) -> dict[int, int]:
        """Levels of the output pins, e.g. {4: 1} while the flash LED is on."""
        d = read_json(self.dir / "pins.json") or {}
        return {int(k): int(v) for k, v in d.items()}

    def inject_motion(self) -> None:
        """A rising edge on the PIR pin: delivered by machine.idle(), or wakes a node in deep
        sleep whose ext0 wake is armed. Lost if neither happens (e.g. no PIR configured)."""
        (self.ctl / "motion").touch()

    def press_button(self, bounces: int = 1) -> None:
        """A press of the doorbell button (the config's button_pin, pressed to button_level):
        `bounces` edges toward the pressed level at once, as a bouncing contact gives. Delivered
        by machine.idle() to the pin's edge handler, or wakes a node in deep sleep whose wake
        on that pin is armed. Lost if neither happens (e.g. no button configured)."""
        write_json(self.ctl / "button", {**self._button(), "edges": bounces})

    def button_held(self, held: bool = True) -> None:
        """The doorbell button held down: its pin reads the pressed level (a level wake armed
        on it fires at once), and makes no edge of its own (use press_button())."""
        p = self.ctl / "button_held"
        if held:
            write_json(p, self._button())
        else:
            p.unlink(missing_ok=True)

    def _button(self) -> dict[str, int]:
        pin = self.config.get("button_pin")
        if pin is None:
            raise ValueError(f"{self.name} has no button_pin in its config")
        return {"pin": pin, "level": self.config.get("button_level", 0)}

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

    @property
    def card(self) -> Path:
        """The simulated microSD card: what the node sees at /sd."""
        return self.dir / "sd"

    def cut_power_in_sd_write(self, timeout: float = 30.0) -> None:
        """A power cut in the middle of the node's next write of a frame to its SD spool: the
        card stand-in writes half of it, stops the node there, and the power goes."""
        frozen = self.ctl / "sd_frozen"
        frozen.unlink(missing_ok=True)
        (self.ctl / "sd_cut").touch()
        self.wait_for(frozen.exists, timeout, "the node's write to its card")
        self.kill()

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
            int((read_json(p.with_suffix(".json")) or {}).get("flash", 0))
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
