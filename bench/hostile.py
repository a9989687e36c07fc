"""Item 9: the hostile-input campaign again, measured (docs/security.md). A real node streams
frames while each attack runs against `espcam serve` and Mosquitto (the shipped protocol
settings); for each attack: the backend's and the broker's peak resident memory, the log
lines it added, and whether every frame of the real node was stored.

    .venv/bin/python -m bench.hostile [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, VENV_BIN, Broker, encode_chunks, table

sys.path.insert(0, str(ROOT / "tests"))

from espcam.backend.session import make_client  # noqa: E402
from lightnode import LightNode, make_jpeg, many_scans  # noqa: E402
from polling import wait_until  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Peak:
    """The highest RSS of some processes, sampled every 50 ms while an attack runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss_mb(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mb(pid))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join()
        return self.peak


def client(broker: Broker, name: str) -> Any:
    c = make_client(name)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def attacks(quick: bool) -> list[tuple[str, Any]]:
    big_times = 2 if quick else 6
    junk_ids = 50 if quick else 200

    def huge_publishes(b: Broker) -> None:
        payload = b"\x00" * (200 * 1024 * 1024)
        cs = [client(b, f"evil-big-{i}") for i in range(big_times)]
        for c in cs:
            c.publish("espcam/cam-x/frame", payload, qos=1)
        time.sleep(3)
        for c in cs:
            c.loop_stop()

    def scans(b: Broker) -> None:
        cam = LightNode(b.host, b.port, "cam-scan", chunk_size=65536).start()
        cam.publish_frame(many_scans(5000))
        cam.stop()

    def junk_frames(b: Broker) -> None:
        c = client(b, "evil-junk")
        big = encode_chunks(b"\x00" * (4 * 1024 * 1024 - 1), 1, 65536, None)[0]
        for rnd in range(1 if quick else 5):
            for i in range(junk_ids):
                c.publish(f"espcam/junk-{rnd}-{i}/frame", big, qos=0)
        c.publish("espcam/junk-end/frame", b"x", qos=1).wait_for_publish(60)
        c.loop_stop()

    def future_clock(b: Broker) -> None:
        cam = LightNode(b.host, b.port, "cam-future").start()
        cam.publish_frame(make_jpeg(seed=1), meta={"t": 4102444800.0, "trigger": "interval"})
        cam.stop()

    def made_up_ids(b: Broker) -> None:
        c = client(b, "evil-ids")
        chunk = encode_chunks(make_jpeg(seed=2), 1, 1024, None)[0]
        for i in range(1005):
            c.publish(f"espcam/id-{i}/frame", chunk, qos=0)
        c.publish("espcam/id-end/frame", b"x", qos=1).wait_for_publish(60)
        c.loop_stop()

    def deep_json(b: Broker) -> None:
        c = client(b, "evil-json")
        deep = b"[" * 5000 + b"]" * 5000
        for t in ("espcam/_backend/forget", "espcam/cam-real/state", "espcam/cam-real/ack"):
            c.publish(t, deep, qos=1).wait_for_publish(30)
        meta = b'{"t": ' + b"1" * 5000 + b"}"
        c.publish("espcam/cam-real/frame", encode_chunks(make_jpeg(seed=3), 99, 4096, meta)[0],
                  qos=1).wait_for_publish(30)
        c.loop_stop()

    return [("6 x 200 MB PUBLISH" if not quick else "2 x 200 MB PUBLISH", huge_publishes),
            ("JPEG of 5000 scans", scans),
            (f"{junk_ids} ids x 4 MB frames never finished", junk_frames),
            ("capture time in 2100", future_clock),
            ("1005 made-up ids", made_up_ids),
            ("JSON nested 5000 deep, 5000-digit integer", deep_json)]


def run(quick: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="espcam-bench-hostile-"))
    broker = Broker(work / "broker").start()
    log = work / "backend.log"
    serve = subprocess.Popen([str(VENV_BIN / "espcam"), "serve", "--broker", broker.url,
                              "--data-dir", str(work / "data")],
                             stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    time.sleep(2)
    cam = LightNode(broker.host, broker.port, "cam-real", proto=2, hold=1000).start()
    sent: list[int] = []
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:
        seed = 0
        while streaming.is_set():
            seed += 1
            sent.append(cam.publish_frame(make_jpeg(seed=seed)))
            time.sleep(0.2)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    rows = []
    try:
        for name, attack in attacks(quick):
            lines = log.read_text().count("\n")
            before = {"backend": rss_mb(serve.pid), "broker": rss_mb(broker.proc.pid)}
            peak = Peak({"backend": serve.pid, "broker": broker.proc.pid})
            attack(broker)
            time.sleep(2)
            p = peak.stop()
            rows.append({"attack": name, "backend_before_mb": round(before["backend"], 1),
                         "backend_peak_mb": round(p["backend"], 1),
                         "broker_peak_mb": round(p["broker"], 1),
                         "log_lines": log.read_text().count("\n") - lines,
                         "backend_alive": serve.poll() is None})
        streaming.clear()
        t.join()
        wait_until(lambda: set(cam.confirmed) >= set(sent), 120, "the real node's frames")
        stored = sum(1 for f in sent if cam.confirmed.get(f) == "stored")
    finally:
        streaming.clear()
        cam.stop()
        serve.terminate()
        serve.wait(30)
        broker.stop()
    return {"rows": rows, "real_sent": len(sent), "real_stored": stored,
            "log_bytes": log.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    r = run(args.quick)
    print(table(["attack", "backend before MB", "backend peak MB", "broker peak MB",
                 "log lines", "backend alive"],
                [[x["attack"], x["backend_before_mb"], x["backend_peak_mb"],
                  x["broker_peak_mb"], x["log_lines"], x["backend_alive"]] for x in r["rows"]]))
    print(f"\nreal node (streaming all along): {r['real_stored']} of {r['real_sent']} frames "
          f"stored; backend log {r['log_bytes']} bytes in all")
    return 0 if r["real_stored"] == r["real_sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
