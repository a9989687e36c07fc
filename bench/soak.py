"""Soak (issue 14, item 3): is the backend's memory flat over hours?

    .venv/bin/python -m bench.soak --hours 2 --out bench/results/soak-2h.md
    .venv/bin/python -m bench.soak --minutes 5 --nodes 20 --out /tmp/soak-try.md   # a try
    options: --nodes N (light nodes, 200), --sims N (MicroPython nodes, 5), --interval S (5),
             --every S (sample period, 60), --variants plain,arena2,trim (also: tracemalloc),
             --retention-mb MB (per node, 16; 0 = none), --trace-every S (600)

One Mosquitto, N light nodes (tests/lightnode.py, protocol v1, one VGA frame every `interval`
seconds each, spread evenly) and `sims` MicroPython nodes (sim.node.SimNode, the real node app,
protocol v2), as bench item 4. Several `espcam serve` take the same stream side by side, each
with its own client id (so its own persistent session) and data directory; they differ only in
how their memory is handled:

    plain        espcam serve as shipped
    arena2       the same with MALLOC_ARENA_MAX=2 (glibc: 2 malloc arenas instead of up to
                 8 per core, one per thread that allocates)
    trim         the same calling malloc_trim(0) every 60 s from a thread (ctypes)
    tracemalloc  the same with tracemalloc on (8 frames) and a snapshot every --trace-every s

Each backend runs under a thin wrapper (`python -m bench.soak _serve ... -- serve ...`) that
is `espcam serve` unchanged plus a thread writing, every `every` s, its allocator's figures
(glibc mallinfo2: heap from the system, in use, free but held; mmapped), Python's allocated
blocks and, every 10th time, the number of malloc arenas (malloc_info). The soak samples every
backend's RSS and CPU, the broker's, and its own (the load generator) every `every` s; counts
each backend's `event`s (told apart by the stored file's path); and rewrites its report (.md,
.json and a .png plot of RSS over time) every 10 samples, so an interrupted run leaves its
figures so far. The slope of RSS over the last hour is a least-squares fit with its standard
error (also one robust to autocorrelated samples, Newey-West), so "flat" has an uncertainty.

Retention (per node, by bytes) keeps the disk bounded and makes the run a steady state: after
`retention-mb` MB a node's oldest frame is deleted for each new one, as on a home server that
has run for months.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# -------------------------------------------------------------------- the backend's wrapper


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> Any:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


def _status_kb(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB: VmRSS = RssAnon (heap, arenas, Python's own
    arenas, mmapped blocks) + RssFile (libraries paged in) + RssShmem."""
    out = dict.fromkeys(keys, 0)
    for line in Path("/proc/self/status").read_text().splitlines():
        k = line.split(":", 1)[0]
        if k in out:
            out[k] = int(line.split()[1])
    return out


def _rss_kb() -> int:
    return _status_kb("VmRSS")["VmRSS"]


def _arenas(libc: Any, path: Path) -> int:
    """How many malloc arenas the process has (malloc_info's <heap> elements)."""
    fp = libc.fopen(str(path).encode(), b"w")
    if not fp:
        return -1
    try:
        libc.malloc_info(0, fp)
    finally:
        libc.fclose(fp)
    return len(re.findall(r"<heap nr=", path.read_text()))


def serve_wrapper(argv: list[str]) -> int:
    """`espcam serve` unchanged, plus the memory probes above (the soak's `_serve`)."""
    ap = argparse.ArgumentParser(prog="python -m bench.soak _serve")
    ap.add_argument("--stats", type=Path, required=True)
    ap.add_argument("--every", type=float, default=60.0)
    ap.add_argument("--trim", type=float, default=0.0, help="malloc_trim(0) every S s")
    ap.add_argument("--trace", type=Path, default=None, help="tracemalloc snapshots here")
    ap.add_argument("--trace-every", type=float, default=600.0)
    ap.add_argument("--trace-frames", type=int, default=8)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    libc = _libc()
    if a.trace:
        import tracemalloc

        tracemalloc.start(a.trace_frames)
        a.trace.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def probe() -> None:
        k = 0
        next_trim = a.trim
        next_snap = a.trace_every
        out = open(a.stats, "a", buffering=1)
        while True:
            now = time.monotonic() - t0
            mi = libc.mallinfo2()
            st = _status_kb("VmRSS", "RssAnon", "RssFile")
            row: dict[str, Any] = {
                "t": round(now, 1), "rss_kb": st["VmRSS"], "anon_kb": st["RssAnon"],
                "file_kb": st["RssFile"],
                "heap": mi.arena, "in_use": mi.uordblks, "free_held": mi.fordblks,
                "mmapped": mi.hblkhd, "top_pad": mi.keepcost,
                "py_blocks": sys.getallocatedblocks(),
            }
            if k % 10 == 0:
                row["arenas"] = _arenas(libc, a.stats.with_suffix(".malloc_info.xml"))
            if a.trim and now >= next_trim:
                before = row["rss_kb"]
                row["trimmed"] = int(libc.malloc_trim(0))
                row["trim_freed_kb"] = before - _rss_kb()
                next_trim = now + a.trim
            if a.trace:
                import tracemalloc

                row["traced"], row["traced_peak"] = tracemalloc.get_traced_memory()
                if now >= next_snap:
                    t = time.monotonic()
                    snap = tracemalloc.take_snapshot()
                    snap.dump(str(a.trace / f"snap-{int(now):06d}.pickle"))
                    del snap
                    row["snapshot_s"] = round(time.monotonic() - t, 2)
                    next_snap = now + a.trace_every
            out.write(json.dumps(row) + "\n")
            k += 1
            time.sleep(a.every - (time.monotonic() - t0) % a.every)

    threading.Thread(target=probe, name="bench-probe", daemon=True).start()
    from espcam.cli import main

    return main(rest)


# -------------------------------------------------------------------- the fit


def _t975(df: int) -> float:
    """Student's t, two-sided 95 %, close enough for df >= 5 (within 1 %)."""
    return 1.959964 + 2.37 / df + 2.8 / df ** 2 if df > 0 else float("nan")


def fit_slope(ts: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line through (t, y); the slope with its ordinary standard error and a
    Newey-West one (Bartlett kernel, lag 4 (n/100)^(2/9)), which does not take neighbouring
    samples of a slowly wandering RSS for independent evidence; 95 % interval from the
    latter."""
    n = len(ts)
    if n < 3:
        return {"n": n, "slope": float("nan"), "se_ols": float("nan"),
                "se_hac": float("nan"), "lo": float("nan"), "hi": float("nan"),
                "intercept": float("nan")}
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sxx
    a = my - b * mt
    e = [y - (a + b * t) for t, y in zip(ts, ys, strict=True)]
    s2 = sum(x * x for x in e) / (n - 2)
    se_ols = math.sqrt(s2 / sxx)
    u = [(t - mt) * x for t, x in zip(ts, e, strict=True)]
    lag = max(1, int(4 * (n / 100) ** (2 / 9)))
    s = sum(x * x for x in u)
    for j in range(1, lag + 1):
        w = 1 - j / (lag + 1)
        s += 2 * w * sum(u[i] * u[i - j] for i in range(j, n))
    se_hac = math.sqrt(max(s, 0.0) * n / (n - 2)) / sxx
    se = max(se_ols, se_hac)
    q = _t975(n - 2)
    return {"n": n, "slope": b, "intercept": a, "se_ols": se_ols, "se_hac": se_hac,
            "lag": lag, "lo": b - q * se, "hi": b + q * se}


# -------------------------------------------------------------------- the soak

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"env": {}, "args": [], "label": "espcam serve as shipped"},
    "arena2": {"env": {"MALLOC_ARENA_MAX": "2"}, "args": [],
               "label": "MALLOC_ARENA_MAX=2"},
    "trim": {"env": {}, "args": ["--trim", "60"], "label": "malloc_trim(0) every 60 s"},
    "tracemalloc": {"env": {}, "args": ["--trace", "{dir}/snapshots"],
                    "label": "tracemalloc on (8 frames), snapshots"},
}


class Events:
    """Counts each backend's `event`s: they share the topic, the stored file's path (in the
    backend's own data directory) tells them apart."""

    def __init__(self, host: str, port: int, dirs: dict[str, str]) -> None:
        from espcam.backend.session import make_client

        self.dirs = dirs
        self.count = dict.fromkeys(dirs, 0)
        self.by_node: dict[str, dict[str, int]] = {k: {} for k in dirs}
        self.other = 0
        self._lock = threading.Lock()
        self.c = make_client(f"bench-soak-events-{time.time_ns()}")
        self.c.on_message = self._on_message
        self.c.connect(host, port, 60)
        self.c.subscribe("espcam/+/event", 1)
        self.c.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            ev = json.loads(msg.payload)
            where, node = ev.get("file", ""), ev["node"]
        except (ValueError, KeyError, AttributeError):
            return
        with self._lock:
            for k, d in self.dirs.items():
                if where.startswith(d):
                    self.count[k] += 1
                    self.by_node[k][node] = self.by_node[k].get(node, 0) + 1
                    return
            self.other += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.count)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except OSError:
        return []


def _wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


class Soak:
    def __init__(self, a: argparse.Namespace) -> None:
        from bench.common import ROOT, jpeg_pool, others, quiet_broker
        from bench.ingest import CACHE

        self.a = a
        self.root = ROOT
        self.others = others
        self.seconds = a.hours * 3600 + a.minutes * 60
        self.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
        for v in self.variants:
            if v not in VARIANTS:
                raise SystemExit(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
        self.work = Path(tempfile.mkdtemp(prefix="espcam-soak-"))
        self.out = a.out
        self.pool = jpeg_pool(CACHE, 16)
        self.broker = quiet_broker(self.work / "broker").start()
        self.samples: list[dict[str, Any]] = []
        self.sent: dict[str, int] = {}
        self.serve: dict[str, subprocess.Popen] = {}
        self.started = time.strftime("%Y-%m-%d %H:%M")
        self.notes: list[str] = []
        self.tree = _tree()

    # -- parts ---------------------------------------------------------------------------

    def start_backends(self) -> None:
        for v in self.variants:
            d = self.work / v
            d.mkdir()
            spec = VARIANTS[v]
            cid = f"espcam-backend-{v}"
            env = dict(os.environ, ESPCAM_CLIENT_ID=cid, **spec["env"])
            if self.a.retention_mb:
                env["ESPCAM_RETENTION_BYTES"] = str(int(self.a.retention_mb * 1024 * 1024))
            args = [x.format(dir=d) for x in spec["args"]]
            cmd = [sys.executable, "-m", "bench.soak", "_serve", "--stats", str(d / "stats.jsonl"),
                   "--every", str(self.a.every), "--trace-every", str(self.a.trace_every),
                   *args, "--", "serve", "--broker", self.broker.url,
                   "--data-dir", str(d / "data")]
            self.serve[v] = subprocess.Popen(cmd, cwd=self.root, env=env,
                                             stdout=subprocess.DEVNULL,
                                             stderr=open(d / "serve.log", "wb"))
            _wait_for(lambda cid=cid, log=self.broker.log: log.exists()
                      and f" as {cid} " in log.read_text(), 30,
                      f"backend {v} did not connect: {(d / 'serve.log').read_text()[-2000:]}")
        time.sleep(2.0)  # subscriptions follow the CONNACK at once

    def run(self) -> None:
        from espcam.sim.node import SimNode
        from lightnode import LightNode

        from bench.common import cpu_seconds, mem_kb

        a = self.a
        light: list[Any] = []
        simn: list[Any] = []
        events = None
        stop = threading.Event()
        try:
            self.start_backends()
            dirs = {v: str((self.work / v / "data").resolve()) for v in self.variants}
            events = Events(self.broker.host, self.broker.port, dirs)
            for i in range(a.nodes):
                ln = LightNode(self.broker.host, self.broker.port, f"light-{i:03d}",
                               chunk_size=4096)
                ln.capture_source = lambda fid, i=i: self.pool[(i + fid) % len(self.pool)]
                light.append(ln.start())
            simdir = self.work / "sim"
            for i in range(a.sims):
                simn.append(SimNode(f"mpy-{i}", simdir / f"mpy-{i}", self.broker.host,
                                    self.broker.port, config={"interval": int(a.interval),
                                                              "pir_pin": None},
                                    proxy=False))
            for sn in simn:
                sn.start()

            def drive() -> None:
                t0 = time.monotonic()
                k = 0
                n = len(light)
                while n and not stop.is_set():
                    d = t0 + k * a.interval / n - time.monotonic()
                    if d > 0 and stop.wait(d):
                        return
                    ln = light[k % n]
                    ln.publish_frame(ln.capture_source(ln.next_frame_id), wait=False)
                    self.sent[ln.node] = self.sent.get(ln.node, 0) + 1
                    k += 1

            driver = threading.Thread(target=drive, daemon=True)
            pids = {v: p.pid for v, p in self.serve.items()}
            pids["broker"] = self.broker.proc.pid
            pids["load"] = os.getpid()
            t0 = time.monotonic()
            driver.start()
            k = 0
            while True:
                now = time.monotonic() - t0
                row: dict[str, Any] = {"t": round(now, 1), "others": self.others()}
                for name, pid in pids.items():
                    row[name + "_rss_kb"] = mem_kb(pid)[0]
                    row[name + "_cpu"] = cpu_seconds(pid)
                row["stored"] = events.snapshot()
                row["sent_light"] = sum(self.sent.values())
                for v, p in self.serve.items():
                    if p.poll() is not None:
                        self.notes.append(f"backend {v} exited with {p.returncode} at "
                                          f"{now:.0f} s")
                        raise RuntimeError(self.notes[-1])
                self.samples.append(row)
                k += 1
                if k % 10 == 0:
                    try:
                        self.report(partial=True, events=events, simn=simn)
                    except Exception as e:  # a partial report must not end the soak
                        print(f"soak: partial report failed: {e!r}", flush=True)
                if now >= self.seconds:
                    break
                time.sleep(max(0.0, a.every * k - (time.monotonic() - t0)))
            stop.set()
            driver.join()
            for sn in simn:
                sn.stop()
            for sn in simn:
                self.sent[sn.name] = len(re.findall(r"^espcam: frame \d+ ", sn.log(), re.M))
            want = sum(self.sent.values())
            try:
                _wait_for(lambda: min(events.snapshot().values()) >= want, 120, "drain")
            except TimeoutError:
                self.notes.append(f"after 120 s of draining: stored {events.snapshot()} of "
                                  f"{want} sent")
            self.report(partial=False, events=events, simn=simn)
        finally:
            stop.set()
            for ln in light:
                try:
                    ln.stop()
                except Exception:
                    pass
            for sn in simn:
                try:
                    sn.stop()
                except Exception:
                    pass
            if events is not None:
                events.close()
            for p in self.serve.values():
                p.send_signal(signal.SIGTERM)
            for p in self.serve.values():
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            self.broker.stop()
            for v in self.variants:  # the stored JPEGs (GB); logs, stats and snapshots stay
                shutil.rmtree(self.work / v / "data", ignore_errors=True)

    # -- the report ----------------------------------------------------------------------

    def stats(self, v: str) -> list[dict[str, Any]]:
        return _read_jsonl(self.work / v / "stats.jsonl")

    def report(self, partial: bool, events: Events | None, simn: list[Any]) -> dict[str, Any]:
        from bench.common import table

        s = self.samples
        if len(s) < 2:
            return {}
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        t_end = s[-1]["t"]
        window = min(3600.0, t_end / 2)
        fits = {}
        for name in [*self.variants, "broker", "load"]:
            pts = [(r["t"] / 3600, r[name + "_rss_kb"] / 1024) for r in s
                   if r["t"] >= t_end - window]
            fits[name] = fit_slope([p[0] for p in pts], [p[1] for p in pts])
        cpu = {}
        for name in [*self.variants, "broker", "load"]:
            cpu[name] = (s[-1][name + "_cpu"] - s[0][name + "_cpu"]) / max(1.0, t_end - s[0]["t"])
        stored = s[-1]["stored"]
        sent_mpy = sum(len(re.findall(r"^espcam: frame \d+ ", sn.log(), re.M)) for sn in simn)
        sent_light = s[-1]["sent_light"]
        alloc = {v: self.stats(v) for v in self.variants}
        busy = sum(1 for r in s if "processes: 0," not in r["others"])
        head = (f"Soak {'(in progress, partial figures)' if partial else ''} started "
                f"{self.started}, {t_end / 60:.0f} min so far of {self.seconds / 60:.0f}; "
                f"{self.a.nodes} light nodes + {self.a.sims} MicroPython nodes, one VGA frame "
                f"each every {self.a.interval:g} s "
                f"({(self.a.nodes + self.a.sims) / self.a.interval:.0f} frames/s), retention "
                f"{self.a.retention_mb:g} MB per node; backends side by side on the same "
                f"stream: {', '.join(self.variants)}. Tree: {self.tree}.")
        rows = []
        for v in self.variants:
            f = fits[v]
            first, last = s[0][v + "_rss_kb"] / 1024, s[-1][v + "_rss_kb"] / 1024
            peak = max(r[v + "_rss_kb"] for r in s) / 1024
            ar = [x["arenas"] for x in alloc[v] if "arenas" in x]
            fh = alloc[v][-1]["free_held"] / 2**20 if alloc[v] else float("nan")
            rows.append([f"{v} ({VARIANTS[v]['label']})", f"{first:.1f}", f"{last:.1f}",
                         f"{peak:.1f}",
                         f"**{f['slope']:+.2f}** ± {max(f['se_ols'], f['se_hac']):.2f}",
                         f"{f['lo']:+.2f} … {f['hi']:+.2f}",
                         "yes" if f["lo"] <= 0 <= f["hi"] else "**no**",
                         f"{f['slope'] * 24:+.1f}", str(ar[-1]) if ar else "?",
                         f"{fh:.1f}", f"{cpu[v]:.2f}", stored.get(v, 0)])
        for name, label in (("broker", "Mosquitto"), ("load", "load generator (this process)")):
            f = fits[name]
            rows.append([label, f"{s[0][name + '_rss_kb'] / 1024:.1f}",
                         f"{s[-1][name + '_rss_kb'] / 1024:.1f}",
                         f"{max(r[name + '_rss_kb'] for r in s) / 1024:.1f}",
                         f"{f['slope']:+.2f} ± {max(f['se_ols'], f['se_hac']):.2f}",
                         f"{f['lo']:+.2f} … {f['hi']:+.2f}",
                         "yes" if f["lo"] <= 0 <= f["hi"] else "no",
                         f"{f['slope'] * 24:+.1f}", "", "", f"{cpu[name]:.2f}", ""])
        text = (head + "\n\n"
                + table(["process", "RSS start MB", "RSS end MB", "peak MB",
                         f"slope over the last {window / 60:.0f} min, MB/h (± s.e.)",
                         "95 % interval MB/h", "0 inside?", "MB/day at that slope",
                         "malloc arenas", "malloc free-held MB (end)", "CPU cores",
                         "frames stored"], rows)
                + f"\n\nFrames sent: {sent_light} by the light nodes, {sent_mpy} by the "
                f"MicroPython nodes, {sent_light + sent_mpy} in all"
                + (f"; events from no known backend: {events.other}" if events else "")
                + f". Samples: {len(s)}, every {self.a.every:g} s. A test suite was running "
                f"in {busy} of {len(s)} samples (the machine has 2 CPUs and is shared; "
                f"`others` in the JSON has each sample's load average).")
        if self.notes:
            text += "\n\nNotes: " + "; ".join(self.notes)
        trace = self.trace_report()
        if trace:
            text += "\n\n" + trace
        png = self.plot(fits, window, alloc)
        if png:
            text += f"\n\n![RSS over time]({png.name})"
        res = {"partial": partial, "started": self.started, "args": vars(self.a) | {
            "out": str(self.a.out)}, "tree": self.tree, "fits": fits, "cpu_cores": cpu,
            "sent_light": sent_light, "sent_mpy": sent_mpy, "stored": stored,
            "stored_by_node": events.by_node if events else None,
            "samples": s, "allocator": alloc, "notes": self.notes, "workdir": str(self.work),
            "text": text}
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(text + "\n")
            self.out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
        return res

    def plot(self, fits: dict[str, Any], window: float,
             alloc: dict[str, list[dict[str, Any]]]) -> Path | None:
        if not self.out:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.notes.append("no matplotlib: pip install -e '.[bench]' for the plot")
            return None
        s = self.samples
        t_end = s[-1]["t"]
        fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
        ax = axes[0]
        for v in self.variants:
            ts = [r["t"] / 60 for r in s]
            ax.plot(ts, [r[v + "_rss_kb"] / 1024 for r in s], label=f"{v}: "
                    f"{fits[v]['slope']:+.2f} ± {max(fits[v]['se_ols'], fits[v]['se_hac']):.2f}"
                    " MB/h over the last hour" if window >= 3600 else v)
            f = fits[v]
            x0, x1 = (t_end - window) / 3600, t_end / 3600
            ax.plot([x0 * 60, x1 * 60], [f["intercept"] + f["slope"] * x0,
                                         f["intercept"] + f["slope"] * x1], "k--", lw=0.8)
        ax.axvspan((t_end - window) / 60, t_end / 60, color="0.9", zorder=0)
        ax.set_ylabel("backend RSS, MB")
        ax.set_title(f"espcam serve, {self.a.nodes} light + {self.a.sims} MicroPython nodes, "
                     f"1 frame / {self.a.interval:g} s each; shaded: the fitted window")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[1]
        for v in self.variants:
            st = alloc[v]
            ax.plot([x["t"] / 60 for x in st], [x["in_use"] / 2**20 for x in st],
                    label=f"{v}: malloc in use")
            ax.plot([x["t"] / 60 for x in st], [x["free_held"] / 2**20 for x in st], ":",
                    label=f"{v}: malloc free but held")
        ax.set_ylabel("MB (glibc mallinfo2)")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        ax = axes[2]
        ts = [r["t"] / 60 for r in s]
        ax.plot(ts, [r["broker_rss_kb"] / 1024 for r in s], label="Mosquitto RSS")
        for v in self.variants:
            st = alloc[v]
            ax.plot([x["t"] / 60 for x in st], [x["py_blocks"] / 1e4 for x in st], ":",
                    label=f"{v}: Python allocated blocks / 10 000")
        ax.set_ylabel("MB; blocks / 10 000")
        ax.set_xlabel("minutes")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = self.out.with_suffix(".png")
        fig.savefig(png, dpi=90)
        plt.close(fig)
        return png

    def trace_report(self, top: int = 12) -> str:
        """Growth of live Python memory between tracemalloc snapshots: once the bounded
        memories have filled (the snapshot nearest the middle of the run) and the last."""
        d = self.work / "tracemalloc" / "snapshots"
        snaps = sorted(d.glob("snap-*.pickle")) if d.exists() else []
        if len(snaps) < 2:
            return ""
        import tracemalloc

        def load(p: Path) -> Any:
            return tracemalloc.Snapshot.load(str(p)).filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__),
                 tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")])

        ts = [int(p.stem.split("-")[1]) for p in snaps]
        mid = min(range(len(ts)), key=lambda i: abs(ts[i] - ts[-1] / 2))
        if mid == len(ts) - 1:
            mid = len(ts) - 2
        ref, last = load(snaps[mid]), load(snaps[-1])
        total = [(t, sum(x.size for x in load(p).traces)) for t, p in zip(ts, snaps,
                                                                             strict=True)]
        diff = last.compare_to(ref, "traceback")
        rows = []
        for st in diff[:top]:
            # A traceback runs from the oldest frame to the newest: the newest four, newest
            # (where the allocation happened) first.
            fr = [f"{Path(f.filename).name}:{f.lineno}" for f in st.traceback][-4:][::-1]
            rows.append([f"{st.size_diff / 1024:+.0f}", f"{st.size / 1024:.0f}",
                         f"{st.count_diff:+d}", " ← ".join(fr)])
        from bench.common import table

        return ("tracemalloc (backend `tracemalloc`): live Python memory at each snapshot "
                + ", ".join(f"{t / 60:.0f} min {b / 2**20:.2f} MB" for t, b in total)
                + f". Largest changes between {ts[mid] / 60:.0f} and {ts[-1] / 60:.0f} min, by "
                  "where the memory was allocated (innermost frame first):\n\n"
                + table(["KiB change", "KiB now", "blocks change", "allocated at"], rows))


def _tree() -> str:
    from bench.common import ROOT

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "backend"],
                               capture_output=True, text=True).stdout.split("\n")
        n = len([x for x in dirty if x.strip()])
        return f"{head}" + (f" with {n} uncommitted file(s) in backend/" if n else "")
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        return serve_wrapper(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=0.0)
    ap.add_argument("--minutes", type=float, default=0.0)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--sims", type=int, default=5)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--every", type=float, default=60.0)
    ap.add_argument("--variants", default="plain,arena2,trim")
    ap.add_argument("--retention-mb", type=float, default=16.0)
    ap.add_argument("--trace-every", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if not a.hours and not a.minutes:
        a.hours = 2.0
    soak = Soak(a)
    print(f"soak: work in {soak.work}; report: {a.out}", flush=True)
    soak.run()
    if a.out:
        print(a.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
