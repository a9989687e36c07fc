"""Shared pieces of the benchmarks: the test broker, process figures from /proc, JPEG pools,
the protocol's chunk encoder, a minimal MQTT publisher over a raw socket, and table output."""

from __future__ import annotations

import json
import os
import platform
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from broker import Broker  # noqa: E402  (tests/broker.py: a real Mosquitto on a free port)
from espcam.backend.protocol import encode_chunks  # noqa: E402

__all__ = ["Broker", "ROOT", "encode_chunks"]

VENV_BIN = ROOT / ".venv" / "bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the machine and processes


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "model": model, "mem_mb": mem,
            "python": platform.python_version(), "kernel": platform.release(),
            "micropython": _version([str(VENV_BIN / "micropython"), "-c",
                                     "import sys; v = sys.implementation.version; "
                                     "print('.'.join(map(str, v[:3])), *v[3:])"]),
            "mosquitto": _version(["mosquitto", "-h"]).removeprefix("mosquitto version "),
            "py_spy": _version([str(VENV_BIN / "py-spy"), "--version"])}


def headline(what: str, m: dict[str, Any], micropython: bool = True) -> str:
    """The first line of a report: what ran, when, on which machine, and what else ran."""
    mpy = f"MicroPython {m['micropython']}, " if micropython else ""
    return (f"{what}, {time.strftime('%Y-%m-%d %H:%M')}; machine: {m['nproc']} CPUs, "
            f"{m['model']}, {m['mem_mb']} MB, Linux {m['kernel']}, Python {m['python']}, "
            f"{mpy}Mosquitto {m['mosquitto']}, {m['py_spy']}; at the start: {others()}")


def _version(cmd: list[str]) -> str:
    import subprocess

    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def others() -> str:
    """What else loads the machine: test-suite processes running now, and the load average."""
    import subprocess

    try:
        p = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True)
        tests = len(p.stdout.split())
    except OSError:
        tests = -1
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() \
        else ["?"]
    return f"pytest processes: {tests}, load average {' '.join(load)}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: current and peak resident set."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class Sampler:
    """Samples CPU seconds and RSS of some processes every `every` seconds in a thread."""

    def __init__(self, pids: dict[str, int], every: float = 1.0) -> None:
        self.pids, self.every = pids, every
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            row: dict[str, Any] = {"t": round(time.monotonic() - t0, 2)}
            for name, pid in self.pids.items():
                row[name + "_cpu"] = cpu_seconds(pid)
                row[name + "_rss_kb"] = mem_kb(pid)[0]
            self.samples.append(row)
            self._stop.wait(self.every)

    def start(self) -> Sampler:
        self._t.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._t.join()
        return self.samples


def quiet_broker(workdir: Path, extra: str = "") -> Broker:
    """The tests' Mosquitto logging connections and errors only, not every PUBLISH: a soak of
    hours at 40 frames/s would otherwise write gigabytes of log (and spend CPU on it)."""
    b = Broker(workdir, extra=extra)
    write = b.write_config

    def write_config() -> Path:
        conf = write()
        conf.write_text(conf.read_text().replace(
            "log_type all\n", "log_type error\nlog_type warning\nlog_type notice\n"
                              "log_type information\n"))
        return conf

    b.write_config = write_config  # type: ignore[method-assign]
    return b


# ---------------------------------------------------------------- frames and chunks


def jpeg_pool(folder: Path, count: int, lo: int = 30_000, hi: int = 60_000) -> list[bytes]:
    """`count` distinct VGA JPEGs of lo … hi bytes, made with Pillow once and cached."""
    from espcam.sim.images import jpeg_of_size

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        p = folder / f"vga-{count}-{i:03d}.jpg"
        if not p.exists():
            target = lo + (hi - lo) * i // max(1, count - 1)
            p.write_bytes(jpeg_of_size(target, seed=i, text=f"bench {i}"))
        out.append(p.read_bytes())
    return out


def meta_for(trigger: str = "interval") -> bytes:
    return json.dumps({"t": time.time(), "up": 1234, "trigger": trigger, "fs": "VGA", "q": 80,
                       "wake": "none"}).encode()


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int = 0) -> bytes:
    var = struct.pack(">H", len(topic)) + topic + (struct.pack(">H", pid) if qos else b"")
    return bytes([0x30 | qos << 1]) + _remaining(len(var) + len(payload)) + var + payload


def mqtt_overhead(topic_len: int, payload_len: int, qos: int) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH packet around its payload."""
    var = 2 + topic_len + (2 if qos else 0)
    return 1 + len(_remaining(var + payload_len)) + var


class RawPublisher:
    """A node's MQTT connection reduced to what a load generator needs: CONNECT, then whole
    pre-encoded PUBLISH packets written with one sendall per frame; a thread counts PUBACKs.
    Costs far less CPU than a paho client, so the generator does not starve what it measures."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = client_id.encode()
        var = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid
        self.sock.sendall(b"\x10" + _remaining(len(var)) + var)
        ack = self._read(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"CONNACK {ack!r}")
        self.pid = 0
        self.acked = 0
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()
        # As every node does after connecting: the backend stores frames of announced nodes.
        avail = publish_packet(f"espcam/{client_id}/availability".encode(), b"online", 0)
        self.sock.sendall(bytes([avail[0] | 1]) + avail[1:])  # retained

    def _read(self, n: int) -> bytes:
        b = b""
        while len(b) < n:
            got = self.sock.recv(n - len(b))
            if not got:
                raise ConnectionError("closed")
            b += got
        return b

    def _reader(self) -> None:
        try:
            while True:
                hdr = self._read(2)  # PUBACK (4 bytes) or PINGRESP (2)
                if hdr[0] == 0x40:
                    self._read(2)
                    with self._cond:
                        self.acked += 1
                        self._cond.notify_all()
        except (OSError, ConnectionError):
            return

    def next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_acks(self, n: int, timeout: float = 60) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.acked >= n, timeout)

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")
            self.sock.close()
        except OSError:
            pass


def frame_packets(topic: bytes, chunks: list[bytes], pid: int) -> bytes:
    """All chunks of one frame as PUBLISH packets: QoS 0, the last at QoS 1 (protocol.md)."""
    last = len(chunks) - 1
    return b"".join(publish_packet(topic, c, 1 if i == last else 0, pid)
                    for i, c in enumerate(chunks))


# ---------------------------------------------------------------- output


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))
    return v[k]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (prints well in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [fmt(r) for r in cells[1:]])
