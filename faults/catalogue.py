"""The faults. Each function gets a Rig (faults/rig.py), brings up what it needs, does its fault
to real processes while the nodes keep capturing, and brings things back; the campaign
(faults/campaign.py) then stops the captures, waits until no node holds anything unconfirmed,
and counts. Durations come from Scale: the short form (`--quick`, tests/test_faults.py) and the
full campaign (docs/reliability.md).

Outages are sized so that what a node captures meanwhile fits its RAM spool (1.5 MB by
default, about 32 of the simulator's 45 KB VGA frames): past that a node drops its oldest
frames and says so, which is `spool-full`'s subject, not the other faults'.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faults.rig import Cam, Rig, RigError, kill_broker, wait_for


@dataclass(frozen=True)
class Scale:
    quick: bool

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


@dataclass
class Fault:
    name: str
    title: str
    run: Callable[[Rig, Scale], None]
    quick: bool = False          # part of the short form
    root: bool = False           # iptables in the campaign's namespace
    frames_watch: bool = False   # the watcher must see frame chunks (to cut mid-frame)
    what: str = ""               # one sentence for the table: what is done
    limit: str = ""              # a documented limit this fault shows (frames lost uncounted)
    settle: float | None = None  # seconds to wait for the nodes to hold nothing (full form)


def ram(interval: int, **extra: Any) -> dict[str, Any]:
    return {"interval": interval, "spool": "ram", **extra}


def sd(interval: int, **extra: Any) -> dict[str, Any]:
    return {"interval": interval, "spool": "sd", **extra}


def pause(seconds: float) -> None:
    time.sleep(seconds)


def down_for(rig: Rig, seconds: float) -> None:
    rig.notes.append(f"fault lasted {seconds:.0f} s")
    pause(seconds)


def without_wifi(rig: Rig, cams: list[Cam], seconds: float) -> None:
    """The simulator's Wi-Fi gone for these nodes (connect fails, open connections go deaf)
    for `seconds`, then back."""
    for cam in cams:
        cam.sim.wifi_down(True)
    down_for(rig, seconds)
    for cam in cams:
        cam.sim.wifi_down(False)


# ---------------------------------------------------------------- the home server


def home_server_power_cut(rig: Rig, s: Scale) -> None:
    """The ordinary home failure: the server loses power. The backend dies first (SIGKILL),
    the broker a moment later (SIGKILL: no last save), the nodes go on capturing; then both
    come back, broker first."""
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 3)))
    if not s.quick:
        rig.add_lights(30, interval=3.0)
    pause(s.pick(5, 30))
    rig.backend.kill()
    pause(s.pick(2, 5))
    kill_broker(rig.broker)
    down_for(rig, s.pick(8, 45))
    rig.restart_broker()
    rig.start_backend()
    pause(s.pick(8, 60))


def backend_kill(rig: Rig, s: Scale) -> None:
    """`kill -9` of the backend while frames arrive, several times; the broker stays up and
    queues for the backend's persistent session."""
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 2)))
    for _ in range(s.pick(1, 3)):
        pause(s.pick(5, 30))
        rig.backend.kill()
        down_for(rig, s.pick(8, 30))
        rig.start_backend()
    pause(s.pick(8, 30))


def broker_kill(rig: Rig, s: Scale) -> None:
    """`kill -9` of Mosquitto while frames flow: what it had not saved (autosave every 30 s)
    is gone, including chunks it had acknowledged to the nodes."""
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 2)))
    for _ in range(s.pick(1, 2)):
        pause(s.pick(5, 30))
        kill_broker(rig.broker)
        down_for(rig, s.pick(8, 30))
        rig.restart_broker()
    pause(s.pick(8, 40))


def backend_stall(rig: Rig, s: Scale) -> None:
    """The backend stops reading (SIGSTOP: a process swapped out, a disk that hangs) and comes
    back (SIGCONT)."""
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 3)))
    pause(s.pick(5, 30))
    rig.backend.signal(signal.SIGSTOP)
    down_for(rig, s.pick(10, 60))
    rig.backend.signal(signal.SIGCONT)
    pause(s.pick(8, 30))


# ---------------------------------------------------------------- the link


def wifi_down(rig: Rig, s: Scale) -> None:
    """The access point vanishes (the simulator's Wi-Fi: connect fails, open connections go
    deaf) and comes back."""
    rig.start_server()
    # A node that could not reconnect waits up to 60 s before it tries again (its back-off):
    # captures every 6 s keep what it holds meanwhile within its spool.
    cams = rig.add_cams(s.pick(2, 3), ram(s.pick(1, 6)))
    pause(s.pick(5, 30))
    without_wifi(rig, cams, s.pick(10, 60))
    pause(s.pick(8, 30))


def link_cut(rig: Rig, s: Scale) -> None:
    """Every packet between the nodes and the broker dropped (iptables DROP, no RST): past the
    node's socket timeout and, in the full form, the broker's keepalive (1.5 x 60 s)."""
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 8)))
    link = rig.network()
    pause(s.pick(5, 30))
    link.cut(rig.link_ports())
    down_for(rig, s.pick(15, 100))
    link.clear()
    pause(s.pick(8, 40))


def packet_loss(rig: Rig, s: Scale, probability: float = 0.05) -> None:
    """Each packet on the nodes' links dropped at random (iptables statistic), both ways, the
    whole time: while capturing and until everything is confirmed."""
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 2)))
    link = rig.network()
    link.lossy(rig.link_ports(), probability)
    rig.notes.append(f"{probability:.0%} of packets dropped on the nodes' links")
    pause(s.pick(20, 180))


def packet_loss_heavy(rig: Rig, s: Scale) -> None:
    packet_loss(rig, s, 0.20)


# ---------------------------------------------------------------- the node's own power


def freeze_mid_frame(rig: Rig, cam: Cam, tries: int = 30) -> tuple[int, int, int]:
    """Stops the node (SIGSTOP) at the first chunk of its next new frame, and returns
    (frame id, chunks seen, chunks in the frame) once that frame is caught half sent; a frame
    that got out whole before the stop is let go on, and the next one tried."""
    assert rig.watch is not None
    seen: Counter[int] = Counter()
    lock = threading.Lock()
    caught: dict[str, Any] = {}
    armed = threading.Event()
    hit = threading.Event()

    def hook(node: str, chunk: Any) -> None:
        if node != cam.name or chunk.flags & 2:
            return
        with lock:
            seen[chunk.frame_id] += 1
            if armed.is_set() and chunk.index == 0:
                pid = cam.pid()
                if pid:
                    os.kill(pid, signal.SIGSTOP)
                    caught.update(pid=pid, fid=chunk.frame_id, count=chunk.count)
                    armed.clear()
                    hit.set()

    rig.watch.chunk_hooks.append(hook)
    try:
        for _ in range(tries):
            hit.clear()
            armed.set()
            if not hit.wait(60):
                raise RigError(f"{cam.name} sent no new frame to cut in the middle of")
            time.sleep(0.5)  # what the node wrote before it stopped reaches the watcher
            with lock:
                n = seen[caught["fid"]]
            if n < caught["count"]:
                return caught["fid"], n, caught["count"]
            os.kill(caught["pid"], signal.SIGCONT)
        raise RigError(f"{cam.name}: never caught a frame half sent in {tries} tries")
    finally:
        rig.watch.chunk_hooks.remove(hook)


def node_cut_mid_frame(rig: Rig, s: Scale) -> None:
    """Power cut of a node in the middle of sending a frame (SD spool), again and again: the
    frame is on the card and is sent again after the boot."""
    rig.start_server()
    # Small chunks: a frame takes long enough to send to be caught half way.
    cams = rig.add_cams(s.pick(1, 3), sd(s.pick(1, 2), chunk_size=256))
    for i in range(s.pick(2, 6)):
        cam = cams[i % len(cams)]
        pause(s.pick(3, 10))
        fid, n, count = freeze_mid_frame(rig, cam)
        cam.cut_power()
        rig.notes.append(f"{cam.name} lost power in frame {fid} after {n} of {count} chunks")
        pause(2)
        rig.power_on(cam)
    pause(s.pick(5, 20))


def node_cut_spool_write(rig: Rig, s: Scale) -> None:
    """Power cut of a node while it writes a frame to its SD card (the simulator's card stops
    half way through the write and the node is killed there): that frame is gone before it
    was ever sent, and the node says so after the boot."""
    rig.start_server()
    cams = rig.add_cams(s.pick(1, 2), sd(s.pick(1, 2)))
    for i in range(s.pick(1, 4)):
        cam = cams[i % len(cams)]
        pause(s.pick(3, 10))
        (cam.sim.ctl / "sd_cut").touch()
        wait_for(lambda c=cam: (c.sim.ctl / "sd_frozen").exists(), 60,
                 f"{cam.name} writing a frame to its card")
        # The camera hands a frame to the app before the app writes it: the newest capture
        # is the frame in the write.
        fid = max(cam.ids())
        cam.cut_power()
        (cam.sim.ctl / "sd_frozen").unlink()
        rig.expect_lost.setdefault(cam.name, set()).add(fid)
        rig.allow_reasons.setdefault(cam.name, set()).add(
            "dropped by the node: power lost while saving it")
        rig.notes.append(f"{cam.name} lost power while writing frame {fid} to its card")
        pause(2)
        rig.power_on(cam)
    pause(s.pick(5, 20))


def node_cut_holding(rig: Rig, s: Scale, spool: str) -> None:
    """The nodes lose Wi-Fi, so they hold every frame they capture (nothing reaches the
    broker); then they lose power, and come back with Wi-Fi."""
    rig.start_server()
    config = sd(s.pick(1, 2)) if spool == "sd" else ram(s.pick(1, 2))
    cams = rig.add_cams(s.pick(1, 2), config)
    pause(s.pick(3, 10))
    for cam in cams:
        cam.sim.wifi_down(True)
    at_cut = {cam.name: set(cam.ids()) for cam in cams}
    # The node finds its link dead only when a read times out (socket_timeout, 10 s), and
    # captures nothing while it waits.
    pause(s.pick(20, 40))
    for cam in cams:
        cam.cut_power()
        boot = set(cam.ids())  # every capture so far is of the one boot just ended
        if spool == "ram":
            # What that boot held in RAM and had not seen confirmed is gone, and nothing can
            # count it (docs/protocol.md, "Limits a node cannot get round").
            rig.may_vanish.setdefault(cam.name, set()).update(boot)
        rig.notes.append(f"{cam.name} lost power holding the {len(boot - at_cut[cam.name])} "
                         f"frames it captured without Wi-Fi, and any before ({spool} spool)")
    pause(2)
    for cam in cams:
        cam.sim.wifi_down(False)
        rig.power_on(cam)
    pause(s.pick(5, 20))


def node_cut_holding_sd(rig: Rig, s: Scale) -> None:
    node_cut_holding(rig, s, "sd")


def node_cut_holding_ram(rig: Rig, s: Scale) -> None:
    node_cut_holding(rig, s, "ram")


def node_reset(rig: Rig, s: Scale) -> None:
    """A node reset (the simulator's soft reset; a watchdog reset or a crash is the same to
    the spool) while it holds frames in RAM it could not send (Wi-Fi down): RAM is gone, but
    the ids it held are in RTC memory, which a reset keeps, and are said after the boot."""
    rig.start_server()
    cams = rig.add_cams(s.pick(1, 2), ram(s.pick(1, 2)))
    for cam in cams:
        rig.allow_reasons.setdefault(cam.name, set()).add(
            "dropped by the node: node reset before it was confirmed")
    pause(s.pick(3, 10))
    for cam in cams:
        cam.sim.wifi_down(True)
    pause(s.pick(20, 40))
    for cam in cams:
        cam.sim.soft_reset()
    rig.notes.append("nodes reset while holding frames without Wi-Fi")
    pause(3)
    for cam in cams:
        cam.sim.wifi_down(False)
    pause(s.pick(8, 20))


# ---------------------------------------------------------------- beyond the spool


def spool_full(rig: Rig, s: Scale) -> None:
    """An outage longer than the spool holds: a RAM spool of 250 KB (five frames) and the
    broker away for 20 captures. The oldest frames are dropped, said on `dropped`, and counted
    lost by the backend once it hears of them."""
    rig.start_server()
    cams = rig.add_cams(2, ram(1, spool_bytes=250_000))
    for cam in cams:
        rig.allow_reasons.setdefault(cam.name, set()).add("dropped by the node: spool full")
    pause(5)
    kill_broker(rig.broker)
    down_for(rig, 20)
    rig.restart_broker()
    pause(15)


def fill(path: os.PathLike[str]) -> int:
    """Writes `path` until the file system is full; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for block in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    n += f.write(b"\0" * block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
        os.fsync(f.fileno())
    return n


def disk_full(rig: Rig, s: Scale, lanes: int | None = None) -> None:
    """The backend's disk fills up (a 256 MB tmpfs of its own in the campaign's namespace,
    filled to the last byte) while frames arrive; later room is made again. Frames wait in the
    backend's lanes and in the nodes' spools, unconfirmed, for as long as it lasts. `lanes`:
    the backend's max_pending_frames, for frames past that bound."""
    if lanes is not None:
        rig.backend.env["ESPCAM_MAX_PENDING_FRAMES"] = str(lanes)
        rig.notes.append(f"backend with max_pending_frames = {lanes}")
    rig.data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "faults-data", str(rig.data)],
                   check=True, capture_output=True)
    rig.unmount.append(rig.data)
    rig.start_server()
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 3)))
    pause(s.pick(5, 20))
    filler = rig.data / "filler"
    fill(filler)
    down_for(rig, s.pick(15, 30 if lanes else 60))
    filler.unlink()
    pause(s.pick(10, 30))


def storage_stall(rig: Rig, s: Scale) -> None:
    """The backend's disk hangs (fsfreeze of an ext4 file system of its own: every write
    waits) while the nodes send, then thaws. Storing stops, the lanes and the intake fill and
    the backend stops reading; the broker keeps the rest and the nodes hold every frame. The
    backend's session has no MQTT keepalive, so the broker must not disconnect it."""
    image = rig.dir / "disk.img"
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    rig.data.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(rig.data)], check=True,
                   capture_output=True)
    rig.unmount.append(rig.data)
    rig.start_server()
    # Captures every 6 s keep what a node holds within its RAM spool for the whole stall.
    rig.add_cams(s.pick(2, 3), ram(s.pick(1, 6)))
    if not s.quick:
        rig.add_lights(30, interval=3.0)
    pause(s.pick(5, 20))
    subprocess.run(["fsfreeze", "-f", str(rig.data)], check=True, capture_output=True)
    try:
        down_for(rig, s.pick(15, 120))
    finally:
        subprocess.run(["fsfreeze", "-u", str(rig.data)], check=True, capture_output=True)
    dropped = rig.backend.log_text().count("disconnected from")
    if dropped:
        rig.problems.append(f"the backend was disconnected {dropped} times in the stall")
    else:
        rig.notes.append("the backend stayed connected through the stall")
    pause(s.pick(8, 30))


def disk_full_past_lanes(rig: Rig, s: Scale) -> None:
    # The default bound, 256 frames, is reached the same way by ten nodes with full spools.
    disk_full(rig, s, lanes=4)


def deep_sleep(rig: Rig, s: Scale) -> None:
    """Battery nodes on a duty cycle (wake every 5 s, capture, up to 2 s awake) that cannot
    reach the broker for a while (Wi-Fi down: each wake gives up after 60 s and sleeps
    again). One has its spool in RAM, which deep sleep empties: each frame it could not send
    is dropped and said after Wi-Fi returns. One has the SD spool, which keeps them."""
    rig.start_server()
    cfg = {"interval": 0, "sleep_interval": 5, "awake": 2}
    cams = [rig.add_cams(1, {**cfg, "spool": "ram"}, prefix="ram")[0],
            rig.add_cams(1, {**cfg, "spool": "sd"}, prefix="sd")[0]]
    rig.allow_reasons.setdefault(cams[0].name, set()).add(
        "dropped by the node: not confirmed before deep sleep")
    pause(s.pick(12, 20))
    without_wifi(rig, cams, s.pick(75, 150))
    pause(s.pick(15, 30))


FAULTS: list[Fault] = [
    Fault("home-server-power-cut", "home server power cut", home_server_power_cut, quick=True,
          what="backend SIGKILL, then broker SIGKILL, nodes capturing; both restarted"),
    Fault("backend-kill", "backend crash", backend_kill,
          what="backend SIGKILL while frames arrive, restarted"),
    Fault("broker-kill", "broker crash", broker_kill,
          what="Mosquitto SIGKILL (no last save) while frames flow, restarted"),
    Fault("backend-stall", "backend stall", backend_stall,
          what="backend SIGSTOP, then SIGCONT"),
    Fault("wifi-down", "Wi-Fi outage", wifi_down,
          what="the access point vanishes and comes back"),
    Fault("link-cut", "link cut", link_cut, root=True,
          what="iptables DROP of every packet on the nodes' links, then cleared"),
    Fault("packet-loss", "5 % packet loss", packet_loss, quick=True, root=True,
          what="iptables statistic: 5 % of packets dropped both ways on the nodes' links"),
    Fault("packet-loss-20", "20 % packet loss", packet_loss_heavy, root=True,
          what="iptables statistic: 20 % of packets dropped both ways on the nodes' links"),
    Fault("node-cut-mid-frame", "node power cut mid-frame (SD spool)", node_cut_mid_frame,
          quick=True, frames_watch=True,
          what="node SIGKILL half way through sending a frame, powered on again"),
    Fault("node-cut-spool-write", "node power cut mid-spool-write (SD spool)",
          node_cut_spool_write, quick=True,
          what="node SIGKILL half way through writing a frame to its card"),
    Fault("node-cut-holding-sd", "node power cut holding frames (SD spool)",
          node_cut_holding_sd,
          what="Wi-Fi down, nodes hold frames on the card, then lose power"),
    Fault("node-cut-holding-ram", "node power cut holding frames (RAM spool)",
          node_cut_holding_ram,
          what="Wi-Fi down, nodes hold frames in RAM, then lose power",
          limit="a node without an SD spool that loses power loses what it held in RAM"),
    Fault("node-reset", "node reset holding frames (RAM spool)", node_reset,
          what="Wi-Fi down, nodes hold frames in RAM, then reset (RTC memory kept)"),
    Fault("spool-full", "outage longer than the spool", spool_full,
          what="RAM spool of 250 KB, broker away for 20 captures"),
    Fault("disk-full", "disk full", disk_full, root=True,
          what="the backend's data disk full to the last byte, then room made"),
    Fault("storage-stall", "storage stall", storage_stall, root=True,
          what="the backend's disk frozen (fsfreeze) while nodes send, then thawed"),
    Fault("disk-full-past-lanes", "disk full, more frames than the backend holds",
          disk_full_past_lanes, root=True, settle=300,
          what="the disk full with more frames waiting than max_pending_frames (4 here)"),
    Fault("deep-sleep", "deep sleep through a Wi-Fi outage", deep_sleep,
          what="duty-cycle nodes (RAM and SD spool) without Wi-Fi for a while"),
]


def by_name() -> dict[str, Fault]:
    return {f.name: f for f in FAULTS}
