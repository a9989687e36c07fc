"""Bench item 4: N light nodes (tests/lightnode.py, a paho client per node speaking protocol v1)
at one VGA frame every 5 s, plus real MicroPython nodes (sim.runner.SimNode, interval 5 s),
into one `espcam serve` through one Mosquitto: frames sent against stored, backend RSS over
time, broker and backend CPU."""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Sampler, jpeg_pool, mem_kb, table
from bench.ingest import CACHE, Session

INTERVAL = 5.0


def run(quick: bool, nodes: int | None = None, seconds: float | None = None,
        sims: int = 5) -> dict[str, Any]:
    from espcam.sim.node import SimNode
    from lightnode import LightNode

    n = nodes or (50 if quick else 200)
    dur = seconds or (60.0 if quick else 600.0)
    pool = jpeg_pool(CACHE, 16)
    s = Session()
    light: list[Any] = []
    simn: list[Any] = []
    sent: dict[str, int] = {}
    try:
        host, port = s.broker.host, s.broker.port
        for i in range(n):
            ln = LightNode(host, port, f"light-{i:03d}", chunk_size=4096)
            ln.capture_source = lambda fid, i=i: pool[(i + fid) % len(pool)]
            light.append(ln.start())
        simdir = Path(tempfile.mkdtemp(prefix="espcam-bench-sim-"))
        for i in range(sims):
            sn = SimNode(f"mpy-{i}", simdir / f"mpy-{i}", host, port,
                         config={"interval": int(INTERVAL), "pir_pin": None}, proxy=False)
            simn.append(sn)
        sampler = Sampler(s.pids, every=5.0).start()
        for sn in simn:
            sn.start()
        stop = threading.Event()

        def drive() -> None:
            # Node k publishes at k/n of the interval, every interval: an even stream.
            t0 = time.monotonic()
            k = 0
            while not stop.is_set():
                due = t0 + k * INTERVAL / n
                d = due - time.monotonic()
                if d > 0 and stop.wait(d):
                    return
                ln = light[k % n]
                fid = ln.next_frame_id
                ln.publish_frame(ln.capture_source(fid), wait=False)
                sent[ln.node] = sent.get(ln.node, 0) + 1
                k += 1

        t = threading.Thread(target=drive, daemon=True)
        t_start = time.monotonic()
        t.start()
        time.sleep(dur)
        stop.set()
        t.join()
        for sn in simn:
            sn.stop()
        t_send = time.monotonic() - t_start
        for sn in simn:
            sent[sn.name] = len(re.findall(r"^espcam: frame \d+ ", sn.log(), re.M))
        # let the backend drain, then count what it announced as stored
        want = sum(sent.values())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(s.watcher.arrived) < want:
            time.sleep(0.5)
        samples = sampler.stop()
        stored_by = {}
        for node, _fid in s.watcher.arrived:
            stored_by[node] = stored_by.get(node, 0) + 1
        peak = mem_kb(s.serve.pid)[1] / 1024
        work = s.work
    finally:
        for ln in light:
            try:
                ln.stop()
            except Exception:
                pass
        for sn in simn:
            sn.stop()
        s.close()
    sl = sum(v for k, v in sent.items() if k.startswith("light-"))
    ss = sum(v for k, v in sent.items() if k.startswith("mpy-"))
    stl = sum(v for k, v in stored_by.items() if k.startswith("light-"))
    sts = sum(v for k, v in stored_by.items() if k.startswith("mpy-"))
    first, last = samples[0], samples[-1]
    wall = last["t"] - first["t"] or 1
    rss = [(r["t"], r["backend_rss_kb"] / 1024) for r in samples]
    # Growth per 5 minutes over the second half of the run: flat if it stays near zero.
    half = [(t_, v) for t_, v in rss if t_ >= wall / 2]
    slope = ((half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) * 300
             if len(half) > 1 and half[-1][0] > half[0][0] else float("nan"))
    step = max(1, len(rss) // 12)
    text = (f"{n} light nodes + {len(simn)} MicroPython nodes, one VGA frame each every "
            f"{INTERVAL:g} s, for {t_send:.0f} s.\n\n"
            + table(["nodes", "frames sent", "frames stored", "lost"], [
                [f"{n} light (CPython)", sl, stl, sl - stl],
                [f"{len(simn)} MicroPython (SimNode)", ss, sts, ss - sts],
            ])
            + f"\n\nBackend CPU {(last['backend_cpu'] - first['backend_cpu']) / wall:.2f} "
            f"cores, broker CPU {(last['broker_cpu'] - first['broker_cpu']) / wall:.2f} cores "
            f"(averages over {wall:.0f} s). Backend RSS at the start {rss[0][1]:.1f} MB, at "
            f"the end {rss[-1][1]:.1f} MB, peak (VmHWM) {peak:.1f} MB; growth over the "
            f"second half {slope:+.2f} MB per 5 min.\n\nBackend RSS over time (MB): "
            + ", ".join(f"{t_:.0f}s {v:.1f}" for t_, v in rss[::step])
            + ("" if (len(rss) - 1) % step == 0 else f", {rss[-1][0]:.0f}s {rss[-1][1]:.1f}"))
    return {"text": text, "sent": sent, "stored": stored_by, "samples": samples,
            "rss_growth_mb_per_5min": slope,
            "workdir": str(work)}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
