"""Bench item 3: backend ingest through a real Mosquitto, against a bare counting subscriber.

Many raw MQTT connections (bench.common.RawPublisher) publish pre-chunked VGA JPEGs; `espcam
serve` reassembles, verifies (CRC, full Pillow decode), stores (fsync, rename, SQLite) and
announces each frame; bench/counter.py, subscribed to the same frame topic on the same broker,
only counts bytes. Phase A: a burst, as fast as the generator can, for throughput. Phase B: a
paced stream well under capacity, for latency from the last chunk published to the frame's
`event` (published by the backend after the file, its directory and the index are durable).
Phase C (optional): phase A again with py-spy sampling the backend. Side by side with the
current backend: the backends of PREV_COMMIT and BEFORE_COMMIT (from git, each on a broker
configured as it was then) and the current one with B3 undone (bench/serve_candidates.py).
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

    def __init__(self, host: str, port: int, conns: int, pool: list[bytes]) -> None:
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
        chunks = encode_chunks(jpeg, fid, CHUNK, meta_for())
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


def burst(load: Load, watcher: EventWatcher, host: str, port: int, frames: int,
          pids: dict[str, int], profile_to: Path | None = None) -> dict[str, Any]:
    want = load.chunks_of(frames)
    counter = subprocess.Popen([sys.executable, "-m", "bench.counter", host, str(port),
                                str(want)], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert counter.stdout.readline().strip() == "ready"
    spy = None
    if profile_to is not None:
        spy = subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--pid",
                                str(pids["backend"]), "--format", "raw", "--rate", "200",
                                "--nonblocking", "-o", str(profile_to)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    cpu0["counter"] = cpu_seconds(counter.pid)
    keys, nbytes = [], 0
    t0 = time.time()
    for _ in range(frames):
        key, _, _ = load.one()
        keys.append(key)
        nbytes += len(load.pool[(load.k - 1) % len(load.pool)])
    t_gen = time.time()
    ok = watcher.wait(keys, 600)
    t_end = max(watcher.arrived.get(k, time.time()) for k in keys)
    cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
    cpu["counter"] = cpu_seconds(counter.pid) - cpu0["counter"]
    out, _ = counter.communicate(timeout=120)
    c = json.loads(out.strip().splitlines()[-1])
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(60)
    stored = sum(1 for k in keys if k in watcher.arrived)
    wall_b = t_end - t0
    wall_c = c["last"] - t0
    return {
        "frames": frames, "jpeg_bytes": nbytes, "stored": stored, "complete": ok,
        "gen_s": t_gen - t0, "backend_s": wall_b, "counter_s": wall_c,
        "counter_msgs": c["n"], "counter_bytes": c["bytes"], "want_msgs": want,
        "backend_fps": stored / wall_b, "backend_mbs": nbytes / wall_b / 1e6,
        "counter_fps": frames / wall_c if c["n"] >= want else float("nan"),
        "counter_mbs": nbytes / wall_c / 1e6,
        "ratio": wall_c / wall_b,
        "cpu_cores": {k: v / wall_b for k, v in cpu.items()},
    }


def paced(load: Load, watcher: EventWatcher, rate: float, seconds: float,
          pids: dict[str, int]) -> dict[str, Any]:
    sent: dict[tuple[str, int], float] = {}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    n = int(rate * seconds)
    for j in range(n):
        delay = t0 + j / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, t, _ = load.one()
        sent[key] = t
    watcher.wait(list(sent), 120)
    wall = time.monotonic() - t0
    lat = [(watcher.arrived[k] - t) * 1000 for k, t in sent.items() if k in watcher.arrived]
    return {"rate": rate, "frames": n, "stored": len(lat), "p50_ms": pct(lat, 50),
            "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": max(lat, default=0),
            "cpu_cores": {k: (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}}


def _frame_name(f: str) -> tuple[str, str]:
    """py-spy's "func (path/file.py:123)" → ("func (dir/file.py)", "dir/file.py:123")."""
    if " (" not in f:
        return f, f
    func, _, where = f.rpartition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    short = "/".join(Path(path).parts[-2:])
    return f"{func} ({short})", f"{short}:{line}"


def summarize_profile(path: Path, top: int = 16) -> dict[str, Any]:
    """py-spy raw output (folded stacks with counts) → for the backend's work loop only (not
    paho's network thread nor idle waits): inclusive share per function, and the share per
    line of backend/ that the time was spent under (its deepest frame in backend/)."""
    incl: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if not any(f.startswith("Backend.run (") for f in frames):
            continue
        if any(f.startswith("MessageQueue.get (") for f in frames):
            idle += n  # the loop waiting for the next message
            continue
        total += n
        seen = set()
        deepest = None
        for f in frames:
            name, where = _frame_name(f)
            if name not in seen:
                incl[name] += n
                seen.add(name)
            if "backend/" in f:
                deepest = f"`{where}` {name.split(' (')[0]}"
        if deepest:
            lines[deepest] += n
    return {"samples": total, "idle": idle, "inclusive": incl.most_common(top),
            "lines": lines.most_common(top)}


class Session:
    """A broker, `espcam serve` on it and an event watcher, in a fresh folder."""

    def __init__(self, broker_extra: str = "", candidates: str = "",
                 tree: Path | None = None) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="espcam-bench-ingest-"))
        self.broker = Broker(self.work / "broker", extra=broker_extra).start()
        if tree is not None:  # another backend/ (the one before the fixes)
            cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); "
                   "from backend.cli import main; sys.exit(main(sys.argv[1:]))"]
        elif candidates:
            cmd = [sys.executable, "-m", "bench.serve_candidates"]
        else:
            cmd = [str(VENV_BIN / "espcam")]
        env = dict(os.environ, ESPCAM_BENCH_CANDIDATES=candidates)
        self.serve = subprocess.Popen(cmd + ["serve",
                                       "--broker", self.broker.url,
                                       "--data-dir", str(self.work / "data")],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, env=env,
                                      stderr=open(self.work / "serve.log", "wb"))
        self.watcher = EventWatcher(self.broker.host, self.broker.port)
        self.load: Load | None = None
        if not self.watcher.online.wait(20):
            self.close()
            raise RuntimeError("espcam serve did not come online: "
                               + (self.work / "serve.log").read_text()[-2000:])
        self.pids = {"backend": self.serve.pid, "broker": self.broker.proc.pid}

    def make_load(self, conns: int, pool: list[bytes]) -> Load:
        self.load = Load(self.broker.host, self.broker.port, conns, pool)
        return self.load

    def close(self) -> None:
        if self.load is not None:
            self.load.close()
        self.watcher.close()
        self.serve.terminate()
        try:
            self.serve.wait(20)
        except subprocess.TimeoutExpired:
            self.serve.kill()
        self.broker.stop()
        # The stored JPEGs (a full run writes some GB); logs and the profile stay.
        shutil.rmtree(self.work / "data", ignore_errors=True)


def _spread(r: dict[str, Any]) -> str:
    v = r.get("fps_runs", [])
    return f"({min(v):.0f}–{max(v):.0f})" if len(v) > 1 else ""


def _median_burst(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The burst of median backend frames/s, with the spread of all of them."""
    ranked = sorted(runs, key=lambda r: r["backend_fps"])
    m = dict(ranked[len(ranked) // 2])
    m["fps_runs"] = [r["backend_fps"] for r in runs]
    m["ratio_runs"] = [r["ratio"] for r in runs]
    m["counter_fps_runs"] = [r["counter_fps"] for r in runs]
    return m


LABELS = {
    "now": "**espcam serve**, as shipped (verified, stored, indexed, announced)",
    "prev": f"before a057350: backend of {PREV_COMMIT}, Mosquitto without set_tcp_nodelay",
    "before": f"before: backend of {BEFORE_COMMIT} (2026-11-24), Mosquitto without "
              "set_tcp_nodelay",
    "full_decode": "the same backend with B3 undone: full JPEG decode (bench/serve_candidates.py)",
}
LAT_LABELS = {
    "now": "**as shipped**: backend TCP_NODELAY, Mosquitto `set_tcp_nodelay true`",
    "now_nagle": "the same backend, Mosquitto without `set_tcp_nodelay` (D1 undone; fresh "
                 "broker and backend)",
    "prev": f"before a057350: backend of {PREV_COMMIT}, Mosquitto without `set_tcp_nodelay`",
    "before": f"before: backend of {BEFORE_COMMIT} (2026-11-24), Nagle on everywhere",
}


def run(quick: bool, profile: bool = True) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    conns = 20 if quick else 50
    frames = 600 if quick else 2000
    paced_s = 10 if quick else 30
    rounds = 1 if quick else 3
    # One broker + backend per variant, all started first; the bursts then take turns, round
    # after round, so that every variant sees the machine in the same states (one burst on
    # this virtual machine varies by +-25 % from one minute to the next). The earlier
    # backends run on a broker configured as it was then (no set_tcp_nodelay).
    specs: dict[str, dict[str, Any]] = {"now": {}}
    for key, commit in (("prev", PREV_COMMIT), ("before", BEFORE_COMMIT)):
        tree = backend_tree(commit)  # None without git
        if tree is not None:
            specs[key] = {"tree": tree, "broker_extra": NAGLE_BROKER}
    specs["full_decode"] = {"candidates": "full_decode"}
    sessions: dict[str, Session] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    lat: dict[str, dict[str, Any]] = {}
    prof = None
    try:
        for k, kw in specs.items():
            sessions[k] = Session(**kw)
            load = sessions[k].make_load(conns, pool)
            burst(load, sessions[k].watcher, sessions[k].broker.host, sessions[k].broker.port,
                  40, sessions[k].pids)  # warm-up
            runs[k] = []
        for _ in range(rounds):
            for k, v in sessions.items():
                runs[k].append(burst(v.load, v.watcher, v.broker.host, v.broker.port, frames,
                                     v.pids))
        res = {k: _median_burst(r) for k, r in runs.items()}
        for k, v in sessions.items():
            res[k]["peak_rss_mb"] = mem_kb(v.serve.pid)[1] / 1024
        sessions.pop("full_decode").close()
        a = res["now"]
        rate = round(min(25.0, a["backend_fps"] * 0.5), 1)
        for k in [k for k in ("now", "prev", "before") if k in sessions]:
            v = sessions[k]
            lat[k] = paced(v.load, v.watcher, rate, paced_s, v.pids)
            if k != "now":
                sessions.pop(k).close()
        s = sessions["now"]
        if profile:
            ptxt = s.work / "profile.txt"
            burst(s.load, s.watcher, s.broker.host, s.broker.port, frames, s.pids, ptxt)
            if ptxt.exists():
                prof = summarize_profile(ptxt)
                prof["file"] = str(ptxt)
        work = s.work
    finally:
        for v in sessions.values():
            v.close()
    # D1 alone: the current backend on a broker without set_tcp_nodelay, fresh.
    v = Session(NAGLE_BROKER)
    try:
        vl = v.make_load(conns, pool)
        burst(vl, v.watcher, v.broker.host, v.broker.port, 40, v.pids)
        lat["now_nagle"] = paced(vl, v.watcher, rate, paced_s, v.pids)
    finally:
        v.close()
    sizes = sorted(len(p) for p in pool)
    b = lat["now"]

    def row(k: str) -> list[Any]:
        c = res[k]
        return [LABELS[k], c["stored"], f"{c['backend_s']:.2f}",
                f"**{c['backend_fps']:.1f}** {_spread(c)}" if k == "now"
                else f"{c['backend_fps']:.1f} {_spread(c)}",
                f"{c['backend_mbs']:.2f}", f"{c['cpu_cores']['backend']:.2f}",
                f"{c['cpu_cores']['broker']:.2f}", f"{c['peak_rss_mb']:.0f}",
                f"{c['ratio']:.2f}"]

    text = (f"{conns} publisher connections, {len(pool)} VGA JPEGs of {sizes[0] // 1000} … "
            f"{sizes[-1] // 1000} KB, chunk size {CHUNK}; each variant on its own broker, "
            f"{rounds} bursts of {frames} frames each, taking turns; the burst of median "
            f"frames/s is shown, with the range of all in brackets. Peak RSS: the backend's "
            f"VmHWM after all bursts; ratio: against the counter on the same broker in the "
            f"same burst.\n\n"
            + table(["consumer", "frames", "wall s", "frames/s", "MB/s (JPEG)",
                     "CPU cores", "broker CPU", "peak RSS MB", "ratio to limit"], [
                ["limit: bare paho counter (broker of the shipped backend)", a["frames"],
                 f"{a['counter_s']:.2f}", f"{a['counter_fps']:.1f} ("
                 + "–".join(f"{x:.0f}" for x in (min(a['counter_fps_runs']),
                                                  max(a['counter_fps_runs']))) + ")",
                 f"{a['counter_mbs']:.2f}", f"{a['cpu_cores']['counter']:.2f}", "", "", ""],
            ] + [row(k) for k in ("now", "prev", "before", "full_decode") if k in res])
            + f"\n\nratio backend/limit: **{a['ratio']:.2f}** "
            f"({', '.join(f'{x:.2f}' for x in a['ratio_runs'])}; target >= 0.8); generator "
            f"finished publishing in {a['gen_s']:.2f} s.\n\n"
            f"Latency at a paced {b['rate']} frames/s for {b['frames']} frames (last chunk "
            f"published → `event` received, i.e. after fsync of file and directory and the "
            f"index commit), each backend on its own broker:\n\n"
            + table(["latency at the same paced rate", "p50 ms", "p90 ms", "p99 ms", "max ms",
                     "stored", "backend CPU", "broker CPU"],
                    [[LAT_LABELS[k], f"{v['p50_ms']:.1f}", f"{v['p90_ms']:.1f}",
                      f"{v['p99_ms']:.1f}", f"{v['max_ms']:.1f}",
                      f"{v['stored']}/{v['frames']}", f"{v['cpu_cores']['backend']:.2f}",
                      f"{v['cpu_cores']['broker']:.2f}"]
                     for k in ("now", "now_nagle", "prev", "before") if k in lat
                     for v in [lat[k]]]))
    if prof:
        tot = prof["samples"] or 1
        text += ("\n\nProfile of the backend's work loop during a fourth burst (py-spy, "
                 f"{prof['samples']} samples busy in `Backend.run`, {prof['idle']} waiting for "
                 "a message), by the line of backend/ the time was spent under:\n\n"
                 + table(["where (deepest frame in backend/)", "share"],
                         [[f, f"{100 * n / tot:.1f} %"] for f, n in prof["lines"]])
                 + "\n\n" + table(["function (inclusive)", "share"],
                                    [[f, f"{100 * n / tot:.1f} %"] for f, n in prof["inclusive"]
                                     if n < 0.95 * tot]))
    return {"text": text, "burst": a, "paced": b, "latency": lat,
            "candidates": {"full_decode": res["full_decode"]}, "before": res.get("before"),
            "prev": res.get("prev"), "profile": prof, "workdir": str(work)}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
