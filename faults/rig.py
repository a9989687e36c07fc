"""The parts a fault is done to, all real: Mosquitto (tests/broker.py with the shipped
protocol.conf), `espcam serve` as a child process, simulated nodes (the unmodified node app on
MicroPython, espcam.sim.node.SimNode) and, where a fault needs many nodes, CPython light nodes
(tests/lightnode.py, protocol version 2). Plus one MQTT client of the campaign's own that sends
commands and watches what the backend and the nodes publish.

What each node captured is known without asking the node or the backend:

- A simulated node's camera stand-in copies every frame it hands the app into the node's
  `captures/` folder, numbered in order, before the app sees it. The app numbers its frames
  itself (node/lib/espcam/frames.py, FrameIds): after a power-on it starts at the block of ids
  reserved in its `espcam_ids.json` plus one, and counts up by one per capture; deep sleep and
  resets keep counting (RTC memory). So the rig reads that file just before every power-on it
  does, notes how many captures there were, and capture number k of that boot is frame
  `reserved + k`. Two checks keep this honest: the node's own log line for each frame it sent
  (`frame N SIZE bytes`) must name a capture of that size, and a stored frame's bytes must be
  the captured bytes of its id (images are unique, so an id off by one cannot pass).
- A light node's frames are made here, so they are known by id.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from broker import Broker  # noqa: E402  (tests/broker.py: Mosquitto with protocol.conf)
from espcam.backend.protocol import decode_chunk  # noqa: E402
from espcam.sim.node import SimNode  # noqa: E402
from observer import Msg, Observer  # noqa: E402  (tests/observer.py: a recording subscriber)
from polling import wait_until  # noqa: E402

__all__ = ["Backend", "Broker", "Cam", "Light", "Rig", "Watcher"]

PREFIX = "espcam"


class RigError(RuntimeError):
    """Something the campaign needed did not happen (a process that would not start, a node
    that never answered): the fault is reported failed with this sentence."""


def espcam_command() -> list[str]:
    cand = Path(sys.executable).parent / "espcam"
    if cand.exists():
        return [str(cand)]
    found = shutil.which("espcam")
    if found:
        return [found]
    raise RigError("the espcam command is not installed: run ./scripts/setup.sh")


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """tests/polling.py's wait_until, failing the fault (RigError) rather than a test."""
    try:
        return wait_until(pred, timeout, what, every)
    except TimeoutError as e:
        raise RigError(str(e)) from None


# ---------------------------------------------------------------- the backend


class Backend:
    """`espcam serve` as a child process of its own process group, so that SIGKILL and SIGSTOP
    reach it alone. Its log (stderr) is appended to across restarts; `runs` counts starts."""

    def __init__(self, broker: Broker, data_dir: Path, log: Path, client_id: str) -> None:
        self.broker, self.data_dir, self.log, self.client_id = broker, data_dir, log, client_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.env: dict[str, str] = {}  # settings of a fault's own (ESPCAM_<SETTING>)

    def start(self) -> None:
        env = {**os.environ, "ESPCAM_CLIENT_ID": self.client_id, **self.env}
        with open(self.log, "ab") as log:
            log.write(f"=== faults: backend run {self.runs + 1} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*espcam_command(), "serve", "--broker", self.broker.url, "--data-dir",
                 str(self.data_dir)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        self.runs += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9: no goodbye, nothing flushed."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM, as systemd or docker would; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stalled one must be able to hear it
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def kill_broker(broker: Broker) -> None:
    """kill -9 Mosquitto: it saves nothing more (its last autosave is what it restarts from)."""
    if broker.proc is not None and broker.proc.poll() is None:
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait()
    broker.proc = None


# ---------------------------------------------------------------- watching and commanding


class Watcher(Observer):
    """The campaign's own MQTT client (tests/observer.py's, on these topics): commands to
    nodes, and what the backend and the nodes publish (frame chunks only go to `chunk_hooks`,
    not kept). It reconnects by itself when a fault takes the broker away."""

    TOPICS = [f"{PREFIX}/+/ack", f"{PREFIX}/+/state", f"{PREFIX}/+/availability",
              f"{PREFIX}/_backend/#"]

    def __init__(self, host: str, port: int, frames: bool = False) -> None:
        self.chunk_hooks: list[Callable[[str, Any], None]] = []
        try:
            super().__init__(host, port,
                             self.TOPICS + ([f"{PREFIX}/+/frame"] if frames else []))
        except AssertionError:
            raise RigError("the campaign's watcher could not subscribe") from None
        self.c.reconnect_delay_set(0.2, 2)

    def _on_message(self, c, u, m) -> None:
        if not m.topic.endswith("/frame"):
            super()._on_message(c, u, m)
            return
        node = m.topic.split("/")[-2]
        try:
            chunk = decode_chunk(m.payload)
        except ValueError:
            return
        for hook in list(self.chunk_hooks):
            hook(node, chunk)

    def find(self, pred: Callable[[Msg], bool], start: int = 0) -> Msg | None:
        with self.cond:
            return next((m for m in self.msgs[start:] if pred(m)), None)

    def last(self, topic: str) -> Msg | None:
        with self.cond:
            return next((m for m in reversed(self.msgs) if m.topic == topic), None)

    def backend_ready(self, since: float, timeout: float = 60) -> None:
        """The backend publishes its status once the broker granted its subscriptions: from
        then on it gets every chunk. A status of its own time `since` or later (retained, if
        this client subscribed after it was sent) says so."""
        t = f"{PREFIX}/_backend/status"

        def fresh(m: Msg) -> bool:
            try:
                return m.topic == t and json.loads(m.payload).get("time", 0) >= since
            except (ValueError, AttributeError):
                return False

        if self.poll(fresh, timeout) is None:
            raise RigError(f"the backend did not come up within {timeout:.0f} s")

    def command(self, node: str, doc: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Publishes a command (QoS 1: the broker keeps it for a node that is away) and
        returns its ack, or None."""
        start = self.mark()
        self.c.publish(f"{PREFIX}/{node}/cmd", json.dumps(doc), qos=1)
        t = f"{PREFIX}/{node}/ack"

        def mine(m: Msg) -> bool:
            if m.topic != t:
                return False
            try:
                return json.loads(m.payload).get("id") == doc["id"]
            except ValueError:
                return False

        m = self.poll(mine, timeout, start)
        return json.loads(m.payload) if m else None

    def state_after(self, node: str, start: int) -> dict[str, Any] | None:
        t = f"{PREFIX}/{node}/state"
        with self.cond:
            for m in reversed(self.msgs[start:]):
                if m.topic == t:
                    try:
                        return json.loads(m.payload)
                    except ValueError:
                        return None
        return None

    def report(self, node: str) -> dict[str, Any] | None:
        m = self.last(f"{PREFIX}/_backend/nodes/{node}")
        try:
            return json.loads(m.payload) if m and m.payload else None
        except ValueError:
            return None


# ---------------------------------------------------------------- nodes

FRAME_LINE = re.compile(r"espcam: frame (\d+) (\d+) bytes")


class Cam:
    """A simulated node and what its camera captured, each capture mapped to its frame id (see
    the module's doc)."""

    def __init__(self, name: str, workdir: Path, broker: Broker, config: dict[str, Any],
                 images: Path) -> None:
        self.name = name
        self.spool = config.get("spool", "ram")
        self.sim = SimNode(name, workdir, broker.host, broker.port, config=config,
                           images_dir=images)
        self.segments: list[tuple[int, int]] = []  # (first capture number, reserved id block)
        self.cuts = 0
        self.cut_at: list[float] = []  # wall-clock time of each power cut
        self.online_mark = 0
        # A duty-cycle node is stopped asleep, not by command (Rig.park says why).
        self.duty = bool(config.get("sleep_interval"))
        self.parked = False

    def power_on(self) -> None:
        reserved = 0
        try:
            reserved = int(json.loads(self.sim.board_file("espcam_ids.json").read_text())
                           ["reserved"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self.segments.append((len(self.sim.captures()) + 1, reserved))
        self.sim.start()

    def cut_power(self) -> None:
        self.sim.kill()
        self.cuts += 1
        self.cut_at.append(time.time())

    def pid(self) -> int | None:
        p = self.sim.process
        return p.pid if p is not None and p.poll() is None else None

    def frame_id(self, seq: int) -> int:
        first, reserved = max((s for s in self.segments if s[0] <= seq), default=(1, 0))
        return reserved + seq - first + 1

    def ids(self) -> list[int]:
        return [self.frame_id(int(p.stem)) for p in self.sim.captures()]

    def captured(self) -> dict[int, bytes]:
        return {self.frame_id(int(p.stem)): p.read_bytes() for p in self.sim.captures()}

    def mapping_problems(self, captured: dict[int, bytes]) -> list[str]:
        """Frames the node says it sent whose size is not that of the capture mapped to the id."""
        problems = []
        for m in FRAME_LINE.finditer(self.sim.log()):
            fid, size = int(m.group(1)), int(m.group(2))
            if fid not in captured:
                problems.append(f"the node sent frame {fid}, which no capture maps to")
            elif len(captured[fid]) != size:
                problems.append(f"the node sent frame {fid} of {size} bytes; the capture "
                                f"mapped to it has {len(captured[fid])}")
        return sorted(set(problems))[:5]


class Light:
    """A CPython light node of protocol version 2 (tests/lightnode.py): holds every frame until
    confirmed, sends what it holds again after a reconnect and after `confirm_timeout`."""

    spool = "light"

    def __init__(self, name: str, broker: Broker, seed: int) -> None:
        from lightnode import LightNode

        self.name = name
        self.seed = seed
        self.node = LightNode(broker.host, broker.port, name, proto=2, hold=100_000,
                              confirm_timeout=15.0, chunk_size=4096)
        self.frames: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self.node.start(timeout=30)

    def capture(self) -> None:
        from lightnode import make_jpeg

        with self._lock:
            jpeg = make_jpeg(seed=self.seed * 100_000 + len(self.frames))
            fid = self.node.publish_frame(jpeg, wait=False)
            self.frames[fid] = jpeg

    def captured(self) -> dict[int, bytes]:
        with self._lock:
            return dict(self.frames)

    def holding(self) -> int:
        return len(self.node.history)

    def stop(self) -> None:
        self.node.stop()


# ---------------------------------------------------------------- the rig


class Rig:
    """One fault's world: a broker, a backend, nodes, the watcher, in `workdir`. A fault
    function gets it started, does its fault, and the campaign then settles it (settle()) and
    counts (faults.account)."""

    def __init__(self, workdir: Path, images: Path, *, frames_watch: bool = False) -> None:
        self.dir = workdir
        self.images = images
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self.broker = Broker(self.dir / "broker")
        self.backend = Backend(self.broker, self.data, self.dir / "backend.log",
                               f"espcam-faults-{secrets.token_hex(3)}")
        self.frames_watch = frames_watch
        self.watch: Watcher | None = None
        self.cams: list[Cam] = []
        self.lights: list[Light] = []
        self.notes: list[str] = []
        # Counted losses a fault causes on purpose: exact ids per node, or any id lost for
        # one of these reasons (the `lost` table's reason); and whether frames may be lost
        # without being counted (a documented limit), with the ids that may be.
        self.expect_lost: dict[str, set[int]] = {}
        self.allow_reasons: dict[str, set[str]] = {}
        self.may_vanish: dict[str, set[int]] = {}
        self.link: Any = None  # faults.netns.Link, once a fault touches the links
        self.unmount: list[Path] = []  # file systems a fault mounted, undone after counting
        self.problems: list[str] = []  # what a fault saw go wrong besides the counts
        self._capturing = threading.Event()
        self._light_thread: threading.Thread | None = None
        self.light_interval = 2.0

    # -- bring-up ----------------------------------------------------------------------

    def start_server(self) -> None:
        self.broker.start()
        self.watch = Watcher(self.broker.host, self.broker.port, self.frames_watch)
        self.start_backend()

    def start_backend(self) -> None:
        assert self.watch is not None
        since = time.time()
        self.backend.start()
        self.watch.backend_ready(since)

    def restart_broker(self) -> None:
        """Same port and persistence file: from its last save. Returns once the campaign's
        own client is subscribed again (it must see what comes next)."""
        assert self.watch is not None
        n = self.watch.subscriptions
        self.broker.start()
        wait_for(lambda: self.watch is not None and self.watch.subscriptions > n, 30,
                 "the campaign's watcher back on the broker")

    def add_cams(self, n: int, config: dict[str, Any], prefix: str = "sim") -> list[Cam]:
        made = []
        for _ in range(n):
            name = f"{prefix}-{len(self.cams) + 1}"
            cam = Cam(name, self.dir / "nodes" / name, self.broker,
                      {"pir_pin": None, **config}, self.images)
            self.cams.append(cam)
            made.append(cam)
        for cam in made:
            self.power_on(cam, wait=False)
        for cam in made:
            self.wait_online(cam)
        return made

    def power_on(self, cam: Cam, wait: bool = True) -> None:
        assert self.watch is not None
        cam.online_mark = self.watch.mark()
        cam.power_on()
        if wait:
            self.wait_online(cam)

    def wait_online(self, cam: Cam, timeout: float = 60) -> None:
        """Until the node's first `online` since its last power-on."""
        t = f"{PREFIX}/{cam.name}/availability"
        assert self.watch is not None
        if self.watch.poll(lambda m: m.topic == t and m.payload == b"online" and not m.retain,
                           timeout, cam.online_mark) is None:
            raise RigError(f"{cam.name} did not come online within {timeout:.0f} s")

    def add_lights(self, n: int, interval: float) -> None:
        self.light_interval = interval
        for i in range(n):
            light = Light(f"light-{i + 1:03d}", self.broker, seed=i + 1)
            light.start()
            self.lights.append(light)
        self._capturing.set()
        self._light_thread = threading.Thread(target=self._light_loop, daemon=True)
        self._light_thread.start()

    def _light_loop(self) -> None:
        # The light nodes' captures, spread over the interval.
        while self._capturing.is_set():
            for light in self.lights:
                if not self._capturing.is_set():
                    return
                light.capture()
                time.sleep(self.light_interval / max(1, len(self.lights)))

    def network(self) -> Any:
        from faults.netns import Link

        if self.link is None:
            self.link = Link()
        return self.link

    def node_pids(self) -> list[int]:
        return [p for p in (c.pid() for c in self.cams) if p]

    def link_ports(self) -> list[int]:
        """The simulated radio links: each node reaches the broker through its own relay."""
        return [c.sim.proxy.port for c in self.cams if c.sim.proxy is not None]

    # -- coming to rest --------------------------------------------------------------------

    def stop_capturing(self, timeout: float) -> None:
        """Captures off on every node: interval captures by a config command (a node away gets
        it when it is back), duty-cycle nodes parked asleep, light nodes stopped."""
        self._capturing.clear()
        if self._light_thread is not None:
            self._light_thread.join(30)
        assert self.watch is not None
        for cam in self.cams:
            if cam.duty:
                continue
            doc = {"id": f"faults-stop-{secrets.token_hex(3)}", "cmd": "config",
                   "set": {"interval": 0}}
            ack = self.watch.command(cam.name, doc, timeout)
            if not (ack and ack.get("ok")):
                raise RigError(f"{cam.name} did not stop capturing (ack {ack})")
        for cam in self.cams:
            if cam.duty:
                self.park(cam, timeout)

    def park(self, cam: Cam, timeout: float) -> None:
        """A duty-cycle node is powered off while it sleeps, once the state document it
        published before that sleep says it holds nothing: every frame it captured is then
        stored or counted. (`config sleep_interval=0`, the obvious way to keep it awake, sends
        a node in its awake time to sleep for ever: reported as a product bug.)"""
        assert self.watch is not None
        t = f"{PREFIX}/{cam.name}/state"

        def asleep_empty() -> bool:
            if cam.sim.status != "sleeping":
                return False
            m = self.watch.last(t) if self.watch else None
            try:
                st = json.loads(m.payload) if m else {}
            except ValueError:
                return False
            sp = st.get("spool") or {}
            return (st.get("sleep_until") is not None and sp.get("frames") == 0
                    and sp.get("dropped") == 0 and st.get("frame") == max(cam.ids(),
                                                                          default=None))

        wait_for(asleep_empty, timeout, f"{cam.name} asleep holding nothing", every=0.02)
        n = len(cam.sim.captures())
        cam.sim.stop()
        cam.parked = True
        if len(cam.sim.captures()) != n:
            raise RigError(f"{cam.name} woke and captured while it was being powered off")

    def spools(self) -> dict[str, Any]:
        """What each node still holds: a simulated node's spool from a fresh state document,
        a light node's unconfirmed frames."""
        assert self.watch is not None
        out: dict[str, Any] = {}
        for cam in self.cams:
            if cam.parked:
                continue
            mark = self.watch.mark()
            doc = {"id": f"faults-st-{secrets.token_hex(3)}", "cmd": "status"}
            ack = self.watch.command(cam.name, doc, 30)
            state = self.watch.state_after(cam.name, mark) if ack else None
            out[cam.name] = (state or {}).get("spool") if state else None
        for light in self.lights:
            out[light.name] = {"frames": light.holding(), "dropped": 0}
        return out

    def settle(self, timeout: float) -> dict[str, Any]:
        """Until no node holds anything unconfirmed (frames or tombstones): everything it
        captured is then stored or counted lost, or was lost where nothing could count it.
        Returns what was still held if the timeout came first ({} when settled)."""
        deadline = time.monotonic() + timeout
        while True:
            held = {n: s for n, s in self.spools().items()
                    if s is None or s.get("frames") or s.get("dropped")}
            if not held or time.monotonic() > deadline:
                return held
            time.sleep(2)

    def teardown(self) -> None:
        self._capturing.clear()
        if self.link is not None:
            note = self.link.dropped()
            if note:
                self.notes.append(note)
            self.link.clear()
        for cam in self.cams:
            cam.sim.request_poweroff()
        for cam in self.cams:
            if cam.parked:
                continue
            try:
                cam.sim.stop()
            except Exception as e:  # the rest must still stop
                self.notes.append(f"{cam.name} did not stop cleanly: {e!r}")
        for light in self.lights:
            try:
                light.stop()
            except Exception:
                pass
        self.backend.stop()
        if self.watch is not None:
            self.watch.close()
        self.broker.stop()
