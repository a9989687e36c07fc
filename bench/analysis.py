"""Bench item 7: analysis of stored frames (issue 12).

7a. Two face analysis candidates on the same VGA frames, each in a process of its own (so its
    memory is its own): time per frame (decode, detect, describe, match), model load time and
    memory, and what each makes of the frames: real photos of two people (tests/facephotos.py:
    Eileen Collins from scikit-image, Grace Hopper from matplotlib; only Collins is enrolled,
    from another picture of her), a third person seen from the side (scikit-image's
    cameraman), and frames without anyone (the benchmarks' JPEG pool).
      dlib    dlib's HOG face detector (upsampled once) + its ResNet face embedding after
              5-point alignment (dlib-bin, face_recognition_models): what backend/faces.py
              ships, run through the same code.
      opencv  OpenCV's Haar cascade (frontalface_default, in the opencv wheel) + an LBPH face
              recogniser (opencv-contrib) trained on the enrolment photo; one OpenCV thread,
              as in a worker that leaves the other core to ingest.
    Motion (backend/motion.py, Pillow) is timed on the same frames.
7b. Ingest with analysis on and off in the same run: two brokers, each with an `espcam serve`
    (bench.ingest's Session and load generator: one with the faces extra at work, Collins
    enrolled; one with ESPCAM_ANALYSIS=false), bursts of VGA frames (half with a face) taking
    turns, the order swapped every round; frames/s from the first frame published to the last
    `event`, the backend's CPU time per frame, how many frames were analysed and skipped, the
    worker's CPU; then, idle, the time from a doorbell frame (trigger `button`) to its
    `known_person`.

    .venv/bin/python -m bench --only 7 --out bench/results/analysis.md
    .venv/bin/python -m bench.analysis [--quick]      (this item alone)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from espcam.backend.session import make_client

from bench.common import ROOT, VENV_BIN, cpu_seconds, jpeg_pool, mem_kb, pct, table
from bench.ingest import Session

CACHE = Path(tempfile.gettempdir()) / "espcam-bench-jpegs"
LBPH_THRESHOLD = 100.0  # OpenCV's LBPH distance; under it: the enrolled person
LBPH_SIZE = (100, 100)


# ---------------------------------------------------------------- 7a: the same frames


def bench_frames() -> list[dict[str, Any]]:
    """The frames both candidates see: who is in each, and its JPEG."""
    import facephotos  # tests/facephotos.py (bench.common puts tests/ on the path)
    from PIL import Image

    out = []
    for who in ("collins", "hopper"):
        for scale, left in ((0.9, 60), (0.75, 200), (0.6, 120), (0.45, 300)):
            out.append({"who": who, "label": f"{who} at {scale}",
                        "jpeg": facephotos.frame(who, scale=scale, left=left)})
    cameraman = Path(facephotos.photo("collins")).with_name("camera.png")
    for scale, left in ((0.9, 100), (0.6, 200)):
        img = Image.new("RGB", facephotos.VGA, (96, 104, 112))
        person = Image.open(cameraman).convert("RGB")
        img.paste(person.resize((int(512 * scale), int(512 * scale))), (left, 0))
        out.append({"who": "cameraman", "label": f"cameraman at {scale}",
                    "jpeg": facephotos._jpeg(img, 75)})
    for i, jpeg in enumerate(jpeg_pool(CACHE, 16)[:6]):
        out.append({"who": None, "label": f"no one {i}", "jpeg": jpeg})
    return out


class DlibCandidate:
    name = "dlib"

    def __init__(self) -> None:
        from espcam.backend.faces import Engine

        self.engine = Engine()
        self.gallery: Any = None

    def enrol(self, photo: bytes) -> bool:
        from espcam.backend.people import Gallery

        found = self.engine.faces(photo)
        self.gallery = Gallery(self.engine.model)
        if found:
            self.gallery.add("alice", found[0].embedding, "enrolment")
        return bool(found)

    def analyse(self, jpeg: bytes) -> list[dict[str, Any]]:
        return [{"box": f.box, **dict(zip(("name", "distance"),
                                          self.gallery.match(f.embedding), strict=True))}
                for f in self.engine.faces(jpeg)]


class OpenCVCandidate:
    name = "opencv"

    def __init__(self) -> None:
        import cv2
        import numpy

        cv2.setNumThreads(1)
        self.cv2, self.np = cv2, numpy
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades
                                             + "haarcascade_frontalface_default.xml")
        self.recogniser = cv2.face.LBPHFaceRecognizer_create()
        self.trained = False

    def _faces(self, jpeg: bytes) -> tuple[Any, list[tuple[int, int, int, int]]]:
        cv2 = self.cv2
        grey = cv2.imdecode(self.np.frombuffer(jpeg, self.np.uint8), cv2.IMREAD_GRAYSCALE)
        grey = cv2.equalizeHist(grey)
        found = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(40, 40))
        return grey, sorted((tuple(int(v) for v in b) for b in found),
                            key=lambda b: -b[2] * b[3])

    def enrol(self, photo: bytes) -> bool:
        grey, found = self._faces(photo)
        if not found:
            return False
        x, y, w, h = found[0]
        self.recogniser.train([self.cv2.resize(grey[y:y + h, x:x + w], LBPH_SIZE)],
                              self.np.array([1]))
        self.trained = True
        return True

    def analyse(self, jpeg: bytes) -> list[dict[str, Any]]:
        grey, found = self._faces(jpeg)
        out = []
        for x, y, w, h in found:
            name, distance = None, None
            if self.trained:
                _, distance = self.recogniser.predict(
                    self.cv2.resize(grey[y:y + h, x:x + w], LBPH_SIZE))
                name = "alice" if distance <= LBPH_THRESHOLD else None
            out.append({"box": (x, y, x + w, y + h), "name": name,
                        "distance": round(float(distance), 1) if distance is not None
                        else None})
        return out


def candidate_main(name: str, rounds: int) -> dict[str, Any]:
    """One candidate, in this process: what `python -m bench.analysis --candidate` prints."""
    import facephotos

    rss0 = mem_kb(os.getpid())[0]
    t = time.perf_counter()
    cand: Any = DlibCandidate() if name == "dlib" else OpenCVCandidate()
    load_s = time.perf_counter() - t
    rss_loaded = mem_kb(os.getpid())[0]
    enrolled = cand.enrol(facephotos.enrolment_photo("collins"))
    frames = bench_frames()
    times: list[list[float]] = [[] for _ in frames]
    results: list[Any] = []
    for r in range(rounds):
        for i, f in enumerate(frames):
            t = time.perf_counter()
            found = cand.analyse(f["jpeg"])
            times[i].append((time.perf_counter() - t) * 1000)
            if r == 0:
                results.append(found)
    rss, hwm = mem_kb(os.getpid())
    return {"candidate": name, "load_s": load_s, "rss_before_mb": rss0 / 1024,
            "rss_loaded_mb": rss_loaded / 1024, "rss_mb": rss / 1024, "hwm_mb": hwm / 1024,
            "enrolled": enrolled,
            "frames": [{"label": f["label"], "who": f["who"], "faces": results[i],
                        "ms": statistics.median(times[i])} for i, f in enumerate(frames)]}


def motion_ms(rounds: int) -> dict[str, float]:
    from espcam.backend import motion

    frames = bench_frames()
    times = []
    for _ in range(rounds):
        before = motion.reduce(frames[-1]["jpeg"])
        for f in frames:
            t = time.perf_counter()
            after = motion.reduce(f["jpeg"])
            motion.compare(before, after)
            times.append((time.perf_counter() - t) * 1000)
            before = after
    return {"p50": pct(times, 50), "p90": pct(times, 90)}


def run_candidate(name: str, rounds: int) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-m", "bench.analysis", "--candidate", name,
                        "--rounds", str(rounds)], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"candidate": name, "error": why}
    return json.loads(p.stdout.strip().splitlines()[-1])


def verdicts(res: dict[str, Any]) -> dict[str, str]:
    """Per kind of frame: faces found, and named right (alice for Collins, no one else)."""
    out = {}
    for who in ("collins", "hopper", "cameraman", None):
        fs = [f for f in res["frames"] if f["who"] == who]
        found = sum(1 for f in fs if f["faces"])
        if who == "collins":
            right = sum(1 for f in fs if any(x["name"] == "alice" for x in f["faces"]))
        else:
            right = sum(1 for f in fs if not any(x["name"] for x in f["faces"]))
        dists = [x["distance"] for f in fs for x in f["faces"] if x["distance"] is not None]
        out[str(who)] = (f"{found}/{len(fs)} with a face, {right}/{len(fs)} "
                         + ("named alice" if who == "collins" else "no one named")
                         + (f"; distances {min(dists):g} … {max(dists):g}" if dists else ""))
    return out


# ---------------------------------------------------------------- 7b: ingest, on and off


class Serve:
    """bench.ingest's Session (a broker and `espcam serve` on it, in a folder of its own, its
    events watched) with analysis on or off, and a watcher of the findings and the doorbell."""

    def __init__(self, analysis: bool) -> None:
        self.session = Session(env={"ESPCAM_ANALYSIS": "true" if analysis else "false"})
        self.work, self.broker = self.session.work, self.session.broker
        assert self.session.serve is not None and self.session.watcher is not None
        self.serve, self.events = self.session.serve, self.session.watcher.arrived
        self.analysed: dict[tuple[str, int], float] = {}
        self.skipped = 0
        self.bell: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.c = make_client(f"bench-analysis-{time.time_ns()}")
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect(self.broker.host, self.broker.port, 60)
        self.c.subscribe([("espcam/_backend/analysis/+", 1), ("espcam/+/doorbell", 1)])
        self.c.loop_start()
        if not subscribed.wait(30):
            raise RuntimeError("cannot subscribe to the findings")

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        doc = json.loads(msg.payload)
        with self._cond:
            if "/analysis/" in msg.topic:
                self.analysed[(doc["node"], doc["frame"])] = now
                self.skipped += doc.get("skipped", 0)
            else:
                self.bell.append((now, doc))
            self._cond.notify_all()

    def wait(self, pred, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def worker_pid(self) -> int | None:
        """The analysis worker: a child of the backend's analysis thread, so listed under that
        thread's task, not the main thread's."""
        kids = []
        for task in Path(f"/proc/{self.serve.pid}/task").glob("*"):
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                continue
        return int(kids[0]) if kids else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
        self.session.close()


def burst(s: Serve, pool: list[bytes], frames: int, conns: int) -> dict[str, Any]:
    load = s.session.load or s.session.make_load(conns, pool)
    pids = {"backend": s.serve.pid, "broker": s.broker.proc.pid}
    worker = s.worker_pid()
    if worker:
        pids["worker"] = worker
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    with s._cond:
        analysed0, skipped0 = len(s.analysed), s.skipped
    t0 = time.time()
    keys = [load.one()[0] for _ in range(frames)]
    assert s.session.watcher is not None
    ok = s.session.watcher.wait(keys, 600)
    wall = max(s.events.get(k, time.time()) for k in keys) - t0
    cpu = {k: (cpu_seconds(p) - cpu0[k]) / wall for k, p in pids.items()}
    # Analysis goes on after ingest: until its queue is empty (no findings for 5 s).
    drained = time.time()
    while True:
        seen = len(s.analysed)
        if not s.wait(lambda seen=seen: len(s.analysed) > seen, 5):
            break
        drained = time.time()
    with s._cond:
        analysed = sum(1 for k in keys if k in s.analysed)
        skipped = s.skipped - skipped0
    return {"frames": frames, "stored": sum(1 for k in keys if k in s.events), "complete": ok,
            "wall_s": wall, "fps": frames / wall, "cpu_cores": cpu,
            "backend_cpu_ms_per_frame": cpu["backend"] * wall / frames * 1000,
            "analysed": analysed,
            "skipped": skipped, "drain_s": max(0.0, drained - (t0 + wall)),
            "findings_total": len(s.analysed) - analysed0}


def doorbell_latency(s: Serve, count: int) -> list[float]:
    import facephotos
    from lightnode import LightNode

    cam = LightNode(s.broker.host, s.broker.port, "bench-door").start()
    jpeg = facephotos.frame("collins")
    out = []
    try:
        for fid in range(1, count + 1):
            n = len(s.bell)
            cam.publish_frame(jpeg, fid, trigger="button")  # returns once the broker has it
            sent = time.time()
            if s.wait(lambda n=n: len(s.bell) > n, 60):
                out.append((s.bell[n][0] - sent) * 1000)
            time.sleep(0.5)
    finally:
        cam.stop()
    return out


def enrol(s: Serve) -> None:
    import facephotos

    photo = s.work / "alice.jpg"
    photo.write_bytes(facephotos.enrolment_photo("collins"))
    subprocess.run([str(VENV_BIN / "espcam"), "faces", "add", "alice", str(photo),
                    "--data-dir", str(s.work / "data")], check=True, capture_output=True)


def worker_priority(log: Path) -> str:
    """What the backend's log says the analysis worker runs at."""
    import re

    found = re.search(r"analysis on: .* worker pid \d+ at (.*)", log.read_text(errors="replace"))
    return found.group(1).strip() if found else "?"


def ingest(quick: bool) -> dict[str, Any]:
    import facephotos

    faces_pool = [facephotos.frame(w, scale=sc, left=le) for w in ("collins", "hopper")
                  for sc, le in ((0.75, 200), (0.6, 120))]
    pool = [j for pair in zip(faces_pool, jpeg_pool(CACHE, 16)[:4], strict=True) for j in pair]
    # Long bursts: on a machine that runs other things, a burst of a few seconds measures
    # them as much as the backend.
    frames, rounds, conns = (300, 2, 20) if quick else (3000, 6, 20)
    sessions = {"off": Serve(analysis=False), "on": Serve(analysis=True)}
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        enrol(sessions["on"])
        for s in sessions.values():
            burst(s, pool, 40, conns)  # warm-up (and the worker's models loaded)
        # Taking turns, the order swapped every round: a machine whose other load changes
        # during the run weighs on both alike.
        for r in range(rounds):
            for k in ("off", "on") if r % 2 == 0 else ("on", "off"):
                runs[k].append(burst(sessions[k], pool, frames, conns))
        latency = doorbell_latency(sessions["on"], 5 if quick else 10)
        rss = {k: mem_kb(s.serve.pid)[1] / 1024 for k, s in sessions.items()}
        worker = sessions["on"].worker_pid()
        rss["worker"] = mem_kb(worker)[1] / 1024 if worker else float("nan")
        priority = worker_priority(sessions["on"].work / "serve.log")
    finally:
        for s in sessions.values():
            s.close()
    return {"runs": runs, "latency_ms": latency, "peak_rss_mb": rss, "frames": frames,
            "worker_priority": priority,
            "rounds": rounds, "conns": conns, "pool": len(pool)}


# ---------------------------------------------------------------- the report


def run(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 5
    cands = {n: run_candidate(n, rounds) for n in ("dlib", "opencv")}
    mot = motion_ms(rounds)
    rows, checks = [], []
    for n, r in cands.items():
        if "error" in r:
            rows.append([n, f"not measured: {r['error']}", "", "", "", "", ""])
            continue
        ms = [f["ms"] for f in r["frames"]]
        face_ms = [f["ms"] for f in r["frames"] if f["faces"]]
        none_ms = [f["ms"] for f in r["frames"] if not f["faces"]]
        rows.append([n, f"**{statistics.median(ms):.0f}**", f"{max(ms):.0f}",
                     f"{statistics.median(face_ms):.0f}" if face_ms else "-",
                     f"{statistics.median(none_ms):.0f}" if none_ms else "-",
                     f"{r['load_s']:.2f}", f"{r['rss_loaded_mb'] - r['rss_before_mb']:.0f} / "
                     f"{r['hwm_mb']:.0f}"])
        v = verdicts(r)
        checks.append([n, "yes" if r["enrolled"] else "**no face found**", v["collins"],
                       v["hopper"], v["cameraman"], v["None"]])
    ing = ingest(quick)
    on, off = ing["runs"]["on"], ing["runs"]["off"]
    ratios = [a["fps"] / b["fps"] for a, b in zip(on, off, strict=True)]
    ratio = statistics.median(ratios)
    medians = statistics.median(r["fps"] for r in on) / statistics.median(r["fps"] for r in off)
    ing_rows = []
    for k, rs in (("off", off), ("on", on)):
        m = sorted(rs, key=lambda r: r["fps"])[len(rs) // 2]
        ing_rows.append([
            "analysis off (ESPCAM_ANALYSIS=false)" if k == "off"
            else "**analysis on** (faces extra, alice enrolled, analysis_nice 19: "
                 f"{ing['worker_priority']})",
            f"{m['stored']}/{m['frames']}", f"**{m['fps']:.1f}** ("
            + ", ".join(f"{r['fps']:.0f}" for r in rs) + ")",
            f"{m['cpu_cores']['backend']:.2f}",
            f"{statistics.median(r['backend_cpu_ms_per_frame'] for r in rs):.2f}",
            f"{m['cpu_cores'].get('worker', 0):.2f}",
            f"{m['analysed']} / {m['frames'] - m['analysed']} ({m['skipped']})"
            if k == "on" else "-",
            f"{m['drain_s']:.1f}" if k == "on" else "-",
            f"{ing['peak_rss_mb'][k]:.0f}" + (f" + worker {ing['peak_rss_mb']['worker']:.0f}"
                                              if k == "on" else "")])
    lat = ing["latency_ms"]
    text = (
        "**7a. Candidates, the same 16 VGA frames** (8 with Collins or Hopper at 4 sizes, 2 "
        "with scikit-image's cameraman in profile, 6 without anyone), each candidate in its "
        f"own process, median of {rounds} rounds per frame; Collins enrolled from another "
        "picture of her (mirrored, cropped), no one else.\n\n"
        + table(["candidate", "ms per VGA frame, median", "slowest frame", "frames with a "
                 "face", "frames without", "load s", "MB: models / peak RSS"], rows)
        + "\n\n" + table(["candidate", "enrolment photo", "Collins (enrolled)",
                          "Hopper (not enrolled)", "cameraman (profile)", "no one"], checks)
        + f"\n\nMotion (backend/motion.py, both candidates): {mot['p50']:.2f} ms per VGA "
        f"frame (p90 {mot['p90']:.2f}). dlib's distance: under 0.6 is the same person; "
        f"LBPH's: under {LBPH_THRESHOLD:g} taken as alice here.\n\n"
        f"**7b. Ingest with analysis on and off, same run**: {ing['conns']} publisher "
        f"connections, {ing['pool']} VGA JPEGs (half with a face), {ing['rounds']} bursts of "
        f"{ing['frames']} frames each per backend, taking turns; frames/s from the first "
        "frame published to the last `event` (median, all rounds in brackets; the order "
        "swapped every round); CPU in cores over that burst (the median round), and the "
        "backend's CPU time per stored frame, which depends less on the other load on the "
        "machine; analysed / not analysed: of the burst's frames (while ingest is busy only "
        "doorbell frames are analysed; the others wait in a queue of 16, the oldest skipped; "
        "in brackets the skips the findings reported during the burst and its drain, some of "
        "them of the burst before); drain: seconds analysis went on after the burst.\n\n"
        + table(["backend", "stored", "frames/s", "backend CPU", "backend CPU ms per frame, "
                 "median", "worker CPU",
                 "analysed / not analysed (skips reported)", "drain s", "peak RSS MB"],
                ing_rows)
        + f"\n\n**ratio on / off: {ratio:.3f}**, the median of the rounds' (per round: "
        + ", ".join(f"{x:.3f}" for x in ratios) + f"; of the median rates {medians:.3f}; "
        "target >= 0.95). Doorbell frame "
        f"(trigger `button`, Collins) published → `known_person`, idle backend: p50 "
        f"{pct(lat, 50):.0f} ms, max {max(lat, default=float('nan')):.0f} ms "
        f"({len(lat)} frames).")
    return {"text": text, "candidates": cands, "motion_ms": mot, "ingest": ing,
            "ratio": ratio, "ratios": ratios, "ratio_of_medians": medians}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.analysis")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--candidate", choices=("dlib", "opencv"), help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.candidate:
        print(json.dumps(candidate_main(a.candidate, a.rounds)))
        return 0
    print(run(a.quick)["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
