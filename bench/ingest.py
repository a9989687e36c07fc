"""Bench item 3: backend ingest through a real Mosquitto, against two limits.

    .venv/bin/python -m bench.ingest --out bench/results/ingest-durable.md     (~6 min)
    .venv/bin/python -m bench.ingest --quick                                   (~1 min)
    .venv/bin/python -m bench.ingest --baseline HEAD --conns 1 --frames 600 --no-profile
    options: --rounds N, --frames N, --variants (some of now, workers1, workers8, overlap1,
             no_check, alone, limits), --no-profile,
             --history (also the backends of c36bdb5 and b1934b5 and the full-decode candidate),
             --baseline REV (also the backend of that commit, e.g. HEAD before a change),
             --conns N (publisher connections, one node each; 1: a node sending its backlog)

Many raw MQTT connections (bench.common.RawPublisher, each announcing its node) publish
pre-chunked VGA JPEGs. In the same burst, on the same broker, three consumers take the same
stream: `espcam serve` (reassembles, verifies, stores durably, indexes, announces each frame),
bench/counter.py (a bare subscriber that only counts bytes: what the broker can deliver) and
bench/durable.py (the simplest durable writer: reassembly, then fsync file, rename, fsync
directory, acknowledge; no check, no index, no announcement). The backend's ratios to both,
medians over rounds. Variants, each on its own broker, take turns: the shipped backend with 1,
4 (default) and 8 store workers, with a node's frames one at a time (`overlap1`), without the
JPEG check (`no_check`: what the check costs; never shipped), alone with no counter or durable
writer beside it (`alone`), and no backend at all (the two limits alone). Then a paced
stream well under capacity, for latency from the last chunk published to the frame's `event`
(published once the file, its directory and the index are durable) and to the frame durable in
the durable writer. Then two more bursts with py-spy on the backend: every thread not waiting,
and only the thread holding the GIL.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from espcam.backend.protocol import VERSION  # noqa: E402
from espcam.backend.session import make_client  # noqa: E402

from bench.common import (
    ROOT,
    VENV_BIN,
    Broker,
    RawPublisher,
    cpu_seconds,
    encode_chunks,
    frame_packets,
    jpeg_pool,
    mem_kb,
    meta_for,
    others,
    pct,
    table,
)

CHUNK = 4096
CACHE = Path(tempfile.gettempdir()) / "espcam-bench-jpegs"
# Earlier backends, taken from git (read only: `git archive`) and run side by side with the
# current one. BEFORE_COMMIT: as the run of 2026-11-24 measured it (Nagle on, rollback
# journal, retention reading the whole history, a count-bounded queue). PREV_COMMIT: the tree
# the run of 2026-12-01 18:39 measured, before a057350 (a COUNT(*) per stored frame, the
# retained image at QoS 1, timers after every message).
BEFORE_COMMIT = "c36bdb5"
PREV_COMMIT = "b1934b5"
# Both ran with a Mosquitto without `set_tcp_nodelay` (added to deploy/mosquitto/protocol.conf
# in a057350); the tests' broker reads today's protocol.conf, and the last setting wins.
NAGLE_BROKER = "set_tcp_nodelay false\n"


# Run as `espcam.backend`, another commit's backend/ must win over the editable install's
# mapping to the work tree: a sitecustomize on PYTHONPATH points that mapping elsewhere.
_SHIM = """import sys
for _m in list(sys.modules.values()):
    _map = getattr(_m, "MAPPING", None)
    if getattr(_m, "__name__", "").startswith("__editable__") and isinstance(_map, dict) \\
            and "espcam.backend" in _map:
        _map.update({mapping!r})
"""


def baseline_env(commit: str) -> dict[str, str] | None:
    """The environment that makes `espcam serve` run backend/ of `commit` (a commit that
    imports itself as `espcam.backend`), or None without git."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    # By hash: HEAD moves, its unpacked copy must not. espcam/ too: its CLI imports what
    # that commit's backend has.
    tree = Path(tempfile.gettempdir()) / f"espcam-bench-base-{commit}"
    if not (tree / "espcam" / "cli.py").exists():
        try:
            tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "backend",
                                  "espcam"], capture_output=True, check=True).stdout
            tree.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=tar, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
    shim = tree / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SHIM.format(mapping={
        "espcam": str(tree / "espcam"), "espcam.backend": str(tree / "backend")}))
    return {"PYTHONPATH": str(shim)}


def backend_tree(commit: str) -> Path | None:
    """backend/ of `commit` unpacked in a temporary folder, or None without git."""
    dest = Path(tempfile.gettempdir()) / f"espcam-bench-backend-{commit}"
    if (dest / "backend" / "cli.py").exists():
        return dest
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "backend"],
                             capture_output=True, check=True).stdout
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return dest


class EventWatcher:
    """Records when each (node, frame) event arrives, and the backend's availability."""

    def __init__(self, host: str, port: int) -> None:
        self.arrived: dict[tuple[str, int], float] = {}
        self.online = threading.Event()
        self._cond = threading.Condition()
        self.c = make_client(f"bench-events-{time.time_ns()}")
        self.c.on_message = self._on_message
        self.c.connect(host, port, 60)
        self.c.subscribe([("espcam/+/event", 1), ("espcam/_backend/availability", 1)])
        self.c.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        if msg.topic.endswith("/availability"):
            if msg.payload == b"online":
                self.online.set()
            return
        ev = json.loads(msg.payload)
        with self._cond:
            self.arrived[(ev["node"], ev["frame"])] = now
            self._cond.notify_all()

    def wait(self, keys: list[tuple[str, int]], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: all(k in self.arrived for k in keys), timeout)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Load:
    """The connections and the frame ids of the load generator."""

    def __init__(self, host: str, port: int, conns: int, pool: list[bytes],
                 version: int | None = None) -> None:
        """`version`: of the chunks (default the protocol's; 1 for backends before 4bf10c4)."""
        self.version = version or VERSION
        self.nodes = [f"load-{i:03d}" for i in range(conns)]
        self.pubs = [RawPublisher(host, port, n) for n in self.nodes]
        self.next_id = [1] * conns
        self.pool = pool
        self.k = 0
        self.sent_acks = [0] * conns

    def one(self) -> tuple[tuple[str, int], float, int]:
        """Publish the next frame on the next connection; (key, time last chunk sent, chunks)."""
        i = self.k % len(self.pubs)
        jpeg = self.pool[self.k % len(self.pool)]
        self.k += 1
        fid = self.next_id[i]
        self.next_id[i] += 1
        chunks = encode_chunks(jpeg, fid, CHUNK, meta_for(), version=self.version)
        pub = self.pubs[i]
        data = frame_packets(f"espcam/{self.nodes[i]}/frame".encode(), chunks, pub.next_pid())
        pub.send(data)
        self.sent_acks[i] += 1
        return (self.nodes[i], fid), time.time(), len(chunks)

    def chunks_of(self, n: int) -> int:
        return sum(math.ceil(len(self.pool[(self.k + j) % len(self.pool)]) / CHUNK)
                   for j in range(n))

    def close(self) -> None:
        for i, p in enumerate(self.pubs):
            p.wait_acks(self.sent_acks[i], 10)
            p.close()


DURABLE_THREADS = 4  # the durable writer's, as the backend's store_workers


class Helper:
    """bench/counter.py or bench/durable.py in a subprocess: "ready", then one JSON line."""

    def __init__(self, cmd: list[str]) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
        self.out: dict[str, Any] | None = None
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            if line.startswith("{"):
                self.out = json.loads(line)

    def result(self, timeout: float) -> dict[str, Any]:
        """Its figures once it has everything, or after `timeout` what it has then."""
        self._t.join(timeout)
        if self._t.is_alive():
            self.p.stdin.close()  # it prints what it has and exits
            self._t.join(30)
        self.p.wait(30)
        return self.out or {"n": 0, "bytes": 0, "last": float("nan")}


def burst(s: Session, frames: int, profile_to: Path | None = None,
          gil: bool = False, threads: int | None = None) -> dict[str, Any]:
    """`frames` frames as fast as the generator goes, taken at once by the backend (if the
    session has one), the counter and the durable writer, all on the session's broker."""
    load, host, port, pids = s.load, s.broker.host, s.broker.port, s.pids
    want = load.chunks_of(frames)
    ddir = s.work / f"durable-{time.time_ns()}"
    counter = durable = None
    if not s.alone:
        counter = Helper(["bench.counter", host, str(port), str(want)])
        durable = Helper(["bench.durable", host, str(port), str(frames), str(ddir),
                          "--threads", str(threads or DURABLE_THREADS)])
    none = {"n": 0, "bytes": 0, "last": float("nan")}
    spy = None
    if profile_to is not None:
        spy = subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--pid",
                                str(pids["backend"]), "--format", "raw", "--rate", "200",
                                "--nonblocking", *(["--gil"] if gil else []),
                                "-o", str(profile_to)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    keys, nbytes = [], 0
    t0 = time.time()
    for _ in range(frames):
        key, _, _ = load.one()
        keys.append(key)
        nbytes += len(load.pool[(load.k - 1) % len(load.pool)])
    t_gen = time.time()
    d = durable.result(600) if durable else none
    ok = s.watcher.wait(keys, 600) if s.watcher else True
    t_end = max((s.watcher.arrived.get(k, time.time()) for k in keys), default=t_gen) \
        if s.watcher else float("nan")
    t_cpu = time.time()
    cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    c = counter.result(120) if counter else none
    # The helpers' own CPU seconds from "ready" to their end, over their own time.
    cpu_c = (c.get("cpu_s", 0) - c.get("cpu_ready", 0)) / max(1e-3, c["last"] - t0)
    cpu_d = (d.get("cpu_s", 0) - d.get("cpu_ready", 0)) / max(1e-3, d["last"] - t0)
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(60)
    shutil.rmtree(ddir, ignore_errors=True)
    stored = sum(1 for k in keys if k in s.watcher.arrived) if s.watcher else 0
    wall_b = t_end - t0
    wall_c = c["last"] - t0
    wall_d = d["last"] - t0
    return {
        "frames": frames, "jpeg_bytes": nbytes, "stored": stored, "complete": ok,
        "durable_stored": d["n"], "durable_incomplete": d.get("incomplete"),
        "gen_s": t_gen - t0, "backend_s": wall_b, "counter_s": wall_c, "durable_s": wall_d,
        "counter_msgs": c["n"], "counter_bytes": c["bytes"], "want_msgs": want,
        "backend_fps": stored / wall_b if s.watcher else float("nan"),
        "backend_mbs": nbytes / wall_b / 1e6,
        "counter_fps": frames / wall_c if c["n"] >= want else float("nan"),
        "counter_mbs": nbytes / wall_c / 1e6,
        "durable_fps": d["n"] / wall_d if d["n"] >= frames else float("nan"),
        "ratio": wall_c / wall_b,
        "ratio_durable": wall_d / wall_b,
        "durable_to_counter": wall_c / wall_d,
        "cpu_cores": {k: v / (t_cpu - t0) for k, v in cpu.items()} | {
            "counter": cpu_c, "durable": cpu_d},
        "profile_s": t_end - t0 if spy is not None else None,
    }


def paced(s: Session, rate: float, seconds: float) -> dict[str, Any]:
    """A stream well under capacity: latency from the last chunk written by the publisher to
    the frame's `event` (the backend) and to the frame durable in the durable writer."""
    load, pids = s.load, s.pids
    sent: dict[tuple[str, int], float] = {}
    n = int(rate * seconds)
    ddir = s.work / f"durable-{time.time_ns()}"
    durable = Helper(["bench.durable", s.broker.host, str(s.broker.port), str(n), str(ddir),
                      "--threads", str(DURABLE_THREADS)])
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    for j in range(n):
        delay = t0 + j / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, t, _ = load.one()
        sent[key] = t
    if s.watcher:
        s.watcher.wait(list(sent), 120)
    d = durable.result(120)
    shutil.rmtree(ddir, ignore_errors=True)
    wall = time.monotonic() - t0
    out: dict[str, Any] = {"rate": rate, "frames": n,
                           "cpu_cores": {k: (cpu_seconds(p) - cpu0[k]) / wall
                                         for k, p in pids.items()}}
    done = d.get("done", {})
    arrived = s.watcher.arrived if s.watcher else {}
    got = {"backend": {k: arrived[k] for k in sent if k in arrived},
           "durable": {k: done[f"{k[0]}/{k[1]}"] for k in sent if f"{k[0]}/{k[1]}" in done}}
    for who, times in got.items():
        lat = [(times[k] - sent[k]) * 1000 for k in times]
        out[who] = {"stored": len(lat), "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
                    "p99_ms": pct(lat, 99), "max_ms": max(lat, default=0)}
    # Per frame, how much later than the durable writer the backend announced it: what the
    # backend adds beyond the two fsyncs, with the disk's own hiccups (which both wait for, at
    # the same moment) taken out. The p99 of each alone follows the disk: 6 to 56 ms here.
    beyond = [(got["backend"][k] - got["durable"][k]) * 1000 for k in sent
              if k in got["backend"] and k in got["durable"]]
    out["beyond"] = {"p50_ms": pct(beyond, 50), "p90_ms": pct(beyond, 90),
                     "p99_ms": pct(beyond, 99), "max_ms": max(beyond, default=0)}
    # As before: the backend's figures at the top level.
    out.update({k: out["backend"][k] for k in ("stored", "p50_ms", "p90_ms", "p99_ms",
                                               "max_ms")})
    return out


def _frame_name(f: str) -> tuple[str, str]:
    """py-spy's "func (path/file.py:123)" → ("func (dir/file.py)", "dir/file.py:123")."""
    if " (" not in f:
        return f, f
    func, _, where = f.rpartition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    short = "/".join(Path(path).parts[-2:])
    return f"{func} ({short})", f"{short}:{line}"


ROLES = (("loop", "Backend.run ("), ("workers", "Lanes._work ("),
         ("paho", "Client._thread_main ("))


def summarize_profile(path: Path, frames: int, rate: int = 200, seconds: float | None = None,
                      top: int = 14) -> dict[str, Any]:
    """py-spy raw output (folded stacks with counts) → per thread role (the loop, the store
    workers, paho's network thread): samples, ms per frame, and the lines of backend/ the time
    was spent under (a stack's deepest frame in backend/; paho's thread: its deepest frame).
    Without --gil a sample is a thread not waiting (py-spy leaves idle threads out), so the
    workers' fsyncs count; with --gil only the thread holding the GIL is sampled, and samples
    / (seconds x rate) is how busy the GIL was."""
    roles: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames_ = stack.split(";")
        role = next((r for r, head in ROLES if any(f.startswith(head) for f in frames_)),
                    "other")
        if ".wait (" in frames_[-1] and "threading.py" in frames_[-1]:
            role = "waiting"  # a Condition or Event wait that py-spy did not call idle
        r = roles.setdefault(role, {"samples": 0, "lines": collections.Counter(),
                                    "inclusive": collections.Counter()})
        r["samples"] += n
        seen = set()
        deepest = None
        for f in frames_:
            name, where = _frame_name(f)
            if name not in seen:
                r["inclusive"][name] += n
                seen.add(name)
            if "backend/" in f:
                deepest = f"`{where}` {name.split(' (')[0]}"
        if deepest is None or role == "paho":
            name, where = _frame_name(frames_[-1])
            deepest = f"`{where}` {name.split(' (')[0]}"
        r["lines"][deepest] += n
    out: dict[str, Any] = {"frames": frames, "rate": rate, "seconds": seconds, "roles": {}}
    for role, r in roles.items():
        per = 1000 / rate / max(1, frames)
        out["roles"][role] = {
            "samples": r["samples"], "ms_per_frame": r["samples"] * per,
            "lines": [(k, v, v * per) for k, v in r["lines"].most_common(top)],
            "inclusive": [(k, v, v * per) for k, v in r["inclusive"].most_common(top)]}
    total = sum(r["samples"] for r in roles.values())
    out["samples"] = total
    if seconds:
        out["busy_fraction"] = total / (seconds * rate)
    return out


def profile_text(prof: dict[str, Any], title: str) -> str:
    rows = []
    for role in ("loop", "workers", "paho", "other", "waiting"):
        r = prof["roles"].get(role)
        if not r:
            continue
        rows.append([f"**{role}**", r["samples"], f"**{r['ms_per_frame']:.3f}**"])
        for k, n, ms in r["lines"]:
            if n >= 0.01 * prof["samples"]:
                rows.append([f"&nbsp;&nbsp;{k}", n, f"{ms:.3f}"])
    busy = (f"; samples / (seconds x rate) = **{prof['busy_fraction']:.2f}**"
            if prof.get("busy_fraction") is not None else "")
    return (f"{title} ({prof['samples']} samples over {prof['seconds']:.1f} s at "
            f"{prof['rate']} Hz, {prof['frames']} frames{busy}):\n\n"
            + table(["thread / where (deepest frame in backend/)", "samples", "ms per frame"],
                    rows))


class Session:
    """A broker, `espcam serve` on it (unless `serve` is False: the limits alone) and an
    event watcher, in a fresh folder."""

    def __init__(self, broker_extra: str = "", candidates: str = "",
                 tree: Path | None = None, env: dict[str, str] | None = None,
                 serve: bool = True, alone: bool = False) -> None:
        self.alone = alone  # no counter or durable writer beside the backend in its bursts
        self.work = Path(tempfile.mkdtemp(prefix="espcam-bench-ingest-"))
        self.broker = Broker(self.work / "broker", extra=broker_extra).start()
        self.load: Load | None = None
        self.serve: subprocess.Popen | None = None
        self.watcher: EventWatcher | None = None
        self.pids = {"broker": self.broker.proc.pid}
        if not serve:
            return
        if tree is not None:  # another backend/ (the one before the fixes)
            cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
                   "from backend.cli import main; sys.exit(main(sys.argv[1:]))"]
        elif candidates:
            cmd = [sys.executable, "-m", "bench.serve_candidates"]
        else:
            cmd = [str(VENV_BIN / "espcam")]
        env = dict(os.environ, ESPCAM_BENCH_CANDIDATES=candidates, **(env or {}))
        self.serve = subprocess.Popen(cmd + ["serve",
                                       "--broker", self.broker.url,
                                       "--data-dir", str(self.work / "data")],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, env=env,
                                      stderr=open(self.work / "serve.log", "wb"))
        self.watcher = EventWatcher(self.broker.host, self.broker.port)
        if not self.watcher.online.wait(20):
            self.close()
            raise RuntimeError("espcam serve did not come online: "
                               + (self.work / "serve.log").read_text()[-2000:])
        self.pids["backend"] = self.serve.pid

    def make_load(self, conns: int, pool: list[bytes], version: int | None = None) -> Load:
        self.load = Load(self.broker.host, self.broker.port, conns, pool, version)
        return self.load

    def close(self) -> None:
        if self.load is not None:
            self.load.close()
        if self.watcher is not None:
            self.watcher.close()
        if self.serve is not None:
            self.serve.terminate()
            try:
                self.serve.wait(20)
            except subprocess.TimeoutExpired:
                self.serve.kill()
        self.broker.stop()
        # The stored JPEGs (a full run writes some GB); logs and the profile stay.
        shutil.rmtree(self.work / "data", ignore_errors=True)


def _median(v: list[float]) -> float:
    v = sorted(x for x in v if x == x)
    if not v:
        return float("nan")
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x == x else ""  # none without a counter and durable writer beside it


def _range(v: list[float]) -> str:
    v = [x for x in v if x == x]
    return f"({min(v):.0f}–{max(v):.0f})" if len(v) > 1 else ""


VARIANTS: dict[str, dict[str, Any]] = {
    "now": {"label": "**espcam serve**, as shipped (verified, stored, indexed, announced; "
                     "store_workers 4)", "kw": {}},
    "workers1": {"label": "the same with store_workers 1", "kw": {"env": {
        "ESPCAM_STORE_WORKERS": "1"}}},
    "workers8": {"label": "the same with store_workers 8", "kw": {"env": {
        "ESPCAM_STORE_WORKERS": "8"}}},
    "overlap1": {"label": "the same with store_overlap 1 (a node's frames one at a time)",
                 "kw": {"env": {"ESPCAM_STORE_OVERLAP": "1"}}},
    "no_check": {"label": "the same without the JPEG check (bench/serve_candidates.py; never "
                          "shipped: what the check costs)", "kw": {"candidates": "no_check"}},
    "alone": {"label": "espcam serve alone on its broker, no counter or durable writer "
                       "beside it (taking turns)", "kw": {"alone": True}},
    "limits": {"label": "no backend on this broker: the counter and the durable writer alone",
               "kw": {"serve": False}},
}
# Earlier backends and candidates (`--history`): what the runs of issue 6 compared.
HISTORY: dict[str, dict[str, Any]] = {
    "prev": {"label": f"before a057350: backend of {PREV_COMMIT}, Mosquitto without "
                      "set_tcp_nodelay", "commit": PREV_COMMIT},
    "before": {"label": f"before: backend of {BEFORE_COMMIT} (2026-11-24), Mosquitto without "
                        "set_tcp_nodelay", "commit": BEFORE_COMMIT},
    "full_decode": {"label": "the shipped backend with B3 undone: full JPEG decode "
                             "(bench/serve_candidates.py)", "kw": {"candidates": "full_decode"}},
}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of each figure (and each ratio: the median of the per-burst
    ratios), with every round's value."""
    out: dict[str, Any] = {"rounds": runs}
    for k in ("backend_fps", "counter_fps", "durable_fps", "backend_mbs", "ratio",
              "ratio_durable", "durable_to_counter"):
        vals = [r[k] for r in runs]
        out[k] = _median(vals)
        out[k + "_runs"] = vals
    for who in ("backend", "broker", "counter", "durable"):
        out[who + "_cpu"] = _median([r["cpu_cores"].get(who, float("nan")) for r in runs])
    out["stored_min"] = min(r["stored"] for r in runs)
    out["durable_stored_min"] = min(r["durable_stored"] for r in runs)
    out["frames"] = runs[0]["frames"]
    out["gen_s"] = _median([r["gen_s"] for r in runs])
    out["others"] = [r.get("others") for r in runs]
    return out


def run(quick: bool, profile: bool = True, history: bool = False, rounds: int | None = None,
        frames: int | None = None, variants: list[str] | None = None,
        baseline: str | None = None, conns: int | None = None,
        old: str | None = None, chunk_version: int | None = None) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    # One connection: one node sending a backlog (its spool after an outage), where only
    # frames of the same node can overlap.
    conns = conns or (20 if quick else 50)
    frames = frames or (600 if quick else 2000)
    paced_s = 10 if quick else 30
    rounds = rounds or (1 if quick else 3)
    # One broker per variant, each with its backend (or none), all started first; the bursts
    # then take turns, round after round, so that every variant sees the machine in the same
    # states (one burst on this virtual machine varies by +-25 % from one minute to the next).
    # In every burst the counter and the durable writer take the same stream as the backend,
    # on the same broker.
    names = variants or (["now", "limits"] if quick else list(VARIANTS))
    specs = {k: dict(VARIANTS[k]) for k in names}
    if history:
        for k, h in HISTORY.items():
            if "commit" in h:
                tree = backend_tree(h["commit"])  # None without git
                if tree is None:
                    continue
                specs[k] = {"label": h["label"], "kw": {"tree": tree,
                                                        "broker_extra": NAGLE_BROKER}}
            else:
                specs[k] = h
    old_tree = backend_tree(old) if old else None
    if old_tree is not None:
        # A commit from before the espcam namespace (c89be9e), with today's broker settings.
        specs["old"] = {"label": f"the backend of {old}, same broker settings",
                        "kw": {"tree": old_tree}}
    env = baseline_env(baseline) if baseline else None
    if env is not None:
        specs["baseline"] = {"label": f"the backend of {baseline} (before this change), same "
                                      "broker settings", "kw": {"env": env}}
    sessions: dict[str, Session] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    lat: dict[str, dict[str, Any]] = {}
    profs: dict[str, Any] = {}
    try:
        for k, spec in specs.items():
            sessions[k] = Session(**spec["kw"])
            sessions[k].make_load(conns, pool, chunk_version)
            burst(sessions[k], 40)  # warm-up
            runs[k] = []
        for _ in range(rounds):
            for k, v in sessions.items():
                o = others()
                r = burst(v, frames)
                r["others"] = o
                runs[k].append(r)
        res = {k: _summary(r) for k, r in runs.items()}
        for k, v in sessions.items():
            if v.serve is not None:
                res[k]["peak_rss_mb"] = mem_kb(v.serve.pid)[1] / 1024
        paced_too = ("now", "baseline", "old", *HISTORY)
        for k in [k for k in sessions if k not in paced_too]:
            sessions.pop(k).close()
        rate = round(min(25.0, res["now"]["backend_fps"] * 0.5), 1)
        for k in [k for k in paced_too if k in sessions]:
            v = sessions[k]
            lat[k] = paced(v, rate, paced_s)
            lat[k]["others"] = others()
            if k != "now":
                sessions.pop(k).close()
        s = sessions["now"]
        if profile:
            for kind in ("wall", "gil"):
                ptxt = s.work / f"profile-{kind}.txt"
                r = burst(s, frames, ptxt, gil=kind == "gil")
                if ptxt.exists():
                    profs[kind] = summarize_profile(ptxt, r["stored"], 200, r["profile_s"])
                    profs[kind]["file"] = str(ptxt)
                    profs[kind]["burst"] = r
        work = s.work
    finally:
        for v in sessions.values():
            v.close()
    return {"text": report(res, lat, profs, specs, conns, pool, rounds, frames),
            "bursts": res, "latency": lat, "profile": profs, "workdir": str(work),
            "burst": res["now"], "paced": lat.get("now")}


def report(res: dict[str, Any], lat: dict[str, Any], profs: dict[str, Any],
           specs: dict[str, Any], conns: int, pool: list[bytes], rounds: int,
           frames: int) -> str:
    sizes = sorted(len(p) for p in pool)
    a = res["now"]
    rows = [["limit: bare paho counter (same burst, same broker)",
             f"{a['counter_fps']:.0f} {_range(a['counter_fps_runs'])}", "", "",
             f"{a['counter_cpu']:.2f}", "", f"{a['durable_to_counter']:.2f} (durable / counter)",
             ""],
            ["**limit: durable writer** (bench/durable.py; same burst, same broker)",
             f"**{a['durable_fps']:.0f}** {_range(a['durable_fps_runs'])}",
             f"{a['durable_stored_min']}/{frames}", "", f"{a['durable_cpu']:.2f}", "",
             "", ""]]
    for k, spec in specs.items():
        r = res[k]
        if k == "limits":
            continue
        rows.append([spec["label"], f"{r['backend_fps']:.0f} {_range(r['backend_fps_runs'])}",
                     f"{r['stored_min']}/{frames}", f"{r.get('peak_rss_mb', 0):.0f}",
                     f"{r['backend_cpu']:.2f}", f"{r['broker_cpu']:.2f}",
                     f"**{r['ratio']:.2f}**" if k == "now" else _ratio(r["ratio"]),
                     f"**{r['ratio_durable']:.2f}**" if k == "now"
                     else _ratio(r["ratio_durable"])])
    if "limits" in res:
        r = res["limits"]
        rows.append(["(own broker, taking turns) counter alone",
                     f"{r['counter_fps']:.0f} {_range(r['counter_fps_runs'])}", "", "",
                     f"{r['counter_cpu']:.2f}", f"{r['broker_cpu']:.2f}", "", ""])
        rows.append(["(own broker, taking turns) durable writer alone, no backend beside it",
                     f"{r['durable_fps']:.0f} {_range(r['durable_fps_runs'])}",
                     f"{r['durable_stored_min']}/{frames}", "", f"{r['durable_cpu']:.2f}", "",
                     f"{r['durable_to_counter']:.2f} (durable / counter)", ""])
    alone = ""
    if "alone" in res and "limits" in res:
        x, y = res["alone"]["backend_fps"], res["limits"]["durable_fps"]
        alone = (f" Each alone on its broker, taking turns: `espcam serve` {x:.0f} frames/s, "
                 f"the durable writer {y:.0f}, a ratio of **{x / y:.2f}**.")
    text = (f"{conns} publisher connections, {len(pool)} VGA JPEGs of {sizes[0] // 1000} … "
            f"{sizes[-1] // 1000} KB, chunk size {CHUNK}; {rounds} round(s) of one burst of "
            f"{frames} frames per variant, taking turns, each variant on its own broker. In "
            f"every burst three consumers take the same stream from the same broker: the "
            f"backend (time to its last `event`), bench/counter.py (time to its last chunk) "
            f"and bench/durable.py (time to its last frame fsynced, renamed, directory "
            f"fsynced, acknowledged; {DURABLE_THREADS} writer threads). frames/s: median over "
            f"the rounds (range); ratios: median of the per-burst ratios. `stored`: frames "
            f"whose `event` arrived (the backend) or that the writer made durable, fewest over "
            f"the rounds.\n\n"
            + table(["consumer", "frames/s", "stored", "peak RSS MB", "CPU cores",
                     "broker CPU", "ratio to counter", "ratio to durable writer"], rows)
            + f"\n\n**Ratios of `espcam serve`: to the counter {a['ratio']:.2f} ("
            + ", ".join(f"{x:.2f}" for x in a["ratio_runs"])
            + f"); to the durable writer {a['ratio_durable']:.2f} ("
            + ", ".join(f"{x:.2f}" for x in a["ratio_durable_runs"])
            + f"); target >= 0.8 of the durable writer.** The durable writer reached "
            f"{a['durable_to_counter']:.2f} of the counter in the same bursts. Generator "
            f"finished publishing in {a['gen_s']:.2f} s (median)." + alone)
    if lat:
        b = lat["now"]
        rows = []
        for k, v in lat.items():
            label = specs[k]["label"] if k in specs else k
            for who, name in (("backend", label), ("durable", "durable writer, same stream")):
                x = v[who]
                rows.append([name, f"{x['p50_ms']:.1f}", f"{x['p90_ms']:.1f}",
                             f"{x['p99_ms']:.1f}", f"{x['max_ms']:.1f}",
                             f"{x['stored']}/{v['frames']}",
                             f"{v['cpu_cores'].get('backend', 0):.2f}" if who == "backend"
                             else "", f"{v['cpu_cores']['broker']:.2f}"
                             if who == "backend" else ""])
            if "beyond" in v:
                x = v["beyond"]
                rows.append([f"{label}: per frame, later than the durable writer",
                             f"{x['p50_ms']:.1f}", f"{x['p90_ms']:.1f}", f"{x['p99_ms']:.1f}",
                             f"{x['max_ms']:.1f}", "", "", ""])
        text += (f"\n\nLatency at a paced {b['rate']} frames/s for {b['frames']} frames, last "
                 f"chunk written by the publisher → the frame's `event` received (after "
                 f"fsync of file and directory and the index commit), and → the frame durable "
                 f"in the durable writer (its two fsyncs done), same frames, same broker:\n\n"
                 + table(["consumer", "p50 ms", "p90 ms", "p99 ms", "max ms", "stored",
                          "backend CPU", "broker CPU"], rows))
    for kind, title in (("wall", "Profile of `espcam serve` during a further burst (py-spy "
                                 "--nonblocking, threads not waiting)"),
                        ("gil", "The same with --gil: only the thread holding the GIL")):
        if kind in profs:
            text += "\n\n" + profile_text(profs[kind], title)
    return text


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.common import headline, machine

    ap = argparse.ArgumentParser(prog="python -m bench.ingest",
                                 description="bench item 3: backend ingest against its limits")
    ap.add_argument("--quick", action="store_true", help="1 round of 600 frames, now + limits")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--history", action="store_true",
                    help="also the backends of earlier commits and the full-decode candidate "
                         "(those commits speak protocol 1: with --chunk-version 1)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--variants", default=None, help=f"some of {', '.join(VARIANTS)}")
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="also the backend of this commit, side by side (e.g. HEAD)")
    ap.add_argument("--old", default=None, metavar="REV",
                    help="also the backend of this commit from before c89be9e (the espcam "
                         "namespace), side by side")
    ap.add_argument("--chunk-version", type=int, default=None, choices=(1, 2),
                    help="protocol version of the chunks sent (default the current one; 1 "
                         "for --old commits before 4bf10c4)")
    ap.add_argument("--conns", type=int, default=None,
                    help="publisher connections, one node each (default 50; quick 20)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown here, JSON beside it")
    a = ap.parse_args(argv)
    m = machine()
    head = headline(f"bench.ingest, {'quick' if a.quick else 'full'}", m, micropython=False)
    print(head, flush=True)
    t = time.monotonic()
    res = run(a.quick, not a.no_profile, a.history, a.rounds, a.frames,
              a.variants.split(",") if a.variants else None, a.baseline, a.conns, a.old,
              a.chunk_version)
    tail = f"({time.monotonic() - t:.0f} s; at the end: {others()})"
    print(res["text"] + "\n\n" + tail)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(f"_{head}_\n\n{res['text']}\n\n_{tail}_\n")
        a.out.with_suffix(".json").write_text(json.dumps(
            {"machine": m, "head": head, "tail": tail} | {k: v for k, v in res.items()
                                                          if k != "text"},
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
