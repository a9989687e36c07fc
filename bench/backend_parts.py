"""Bench item 3b: the backend's per-frame stages timed one at a time, as shipped, against what
they cost before the fixes (re-created here: SQLite's rollback journal; or the earlier backend/
itself, from git, in a subprocess; the full JPEG decode of before B3); and the storage path
against the size of the node's history in the index."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from espcam.backend.jpeg import NotAJpeg, inspect_jpeg
from espcam.backend.storage import Storage
from PIL import Image

from bench.common import ROOT, jpeg_pool, pct, table
from bench.ingest import BEFORE_COMMIT, CACHE, PREV_COMMIT, backend_tree

NODE = "bench-node"
HISTORY = (0, 8640, 100_000)


def full_check(data: bytes) -> tuple[int, int]:
    # The JPEG check before B3: Pillow's full decode, every pixel.
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size


def _time(fn, items: list[Any], reps: int = 1) -> list[float]:
    out = []
    for _ in range(reps):
        for it in items:
            t = time.perf_counter()
            fn(it)
            out.append((time.perf_counter() - t) * 1000)
    return out


def _store(st: Storage, now: float, pool: list[bytes]):
    def f(i: int) -> None:
        data = pool[i % len(pool)]
        st.store(NODE, i, data, crc=zlib.crc32(data), received_at=now + i, width=640,
                 height=480, trigger="interval")
    return f


def _fill(st: Storage, existing: int, now: float) -> None:
    with st.db:
        st.db.executemany(
            "INSERT INTO frames (node, frame_id, captured_at, received_at, taken_at, "
            "bytes, width, height, trigger, crc, path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(NODE, 10_000_000 + i, None, now - 86400 + i * 0.1, now - 86400 + i * 0.1,
              45000, 640, 480, "interval", i, f"{NODE}/old/{i}.jpg") for i in range(existing)])


def _index_reads(st: Storage, fid: int, crc: int) -> None:
    # What the service reads from the index per stored frame besides Storage.store: has() for
    # the first chunk and again for the whole frame, is_latest() (is it the newest? latest()
    # in a backend that has no is_latest), count() for the node's report.
    st.has(NODE, fid, crc)
    st.has(NODE, fid, crc)
    if hasattr(st, "is_latest"):
        st.is_latest(NODE, f"{NODE}/none.jpg")
    else:
        st.latest(NODE)
    st.count(NODE)


def store_times() -> dict[str, dict[str, float]]:
    """Per history size, for whichever backend/ is imported (run in a subprocess with an older
    tree first on sys.path): the first store after opening (it pays for whatever the backend
    reads once per node), then p50 ms of Storage.store, apply_retention, count() and the
    subscriber's other index reads per frame."""
    pool = jpeg_pool(CACHE, 16)
    crc5 = zlib.crc32(pool[5])
    out = {}
    for existing in HISTORY:
        with tempfile.TemporaryDirectory(prefix="espcam-bench-store-") as d:
            st = Storage(Path(d))
            now = time.time()
            _fill(st, existing, now)
            st.close()
            st = Storage(Path(d))  # a fresh process's view: nothing about the node read yet
            v = _time(_store(st, now, pool), list(range(1, 31)))
            t_ret = _time(lambda _x, st=st, now=now: st.apply_retention(NODE, now),
                          list(range(50)))
            t_cnt = _time(lambda _x, st=st: st.count(NODE), list(range(50)))
            t_rd = _time(lambda _x, st=st: _index_reads(st, 5, crc5), list(range(50)))
            st.close()
        out[str(existing)] = {"first_store": v[0], "store": pct(v[1:], 50),
                              "retention": pct(t_ret, 50), "count": pct(t_cnt, 50),
                              "reads": pct(t_rd, 50)}
    return out


def _ms3(x: float) -> str:
    return "< 0.001" if x < 0.0005 else f"{x:.3f}"


def store_times_of(commit: str) -> dict[str, dict[str, float]]:
    tree = backend_tree(commit)
    if tree is None:
        return {}
    code = (f"import sys, json; sys.path[:0] = [{str(tree)!r}, {str(ROOT)!r}]; "
            "from bench.backend_parts import store_times; print(json.dumps(store_times()))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tree, timeout=900)
    if p.returncode:
        print("backend of", commit, "failed:", p.stderr[-1000:], file=sys.stderr)
        return {}
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    n = 100 if quick else 300
    rows = []
    res: dict[str, Any] = {}
    shipped = _time(inspect_jpeg, pool, n // 16 + 1)
    full = _time(full_check, pool, n // 16 + 1)
    crc = _time(lambda d: zlib.crc32(d), pool, n // 16 + 1)
    bad = pool[0][: len(pool[0]) // 2]
    try:
        inspect_jpeg(bad)
        refused = False
    except NotAJpeg:
        refused = True
    res["shipped_check_refuses_truncated"] = refused
    for name, v in (("inspect_jpeg, as shipped (every block read, pixels at 1/8 scale, B3)",
                     shipped),
                    ("full decode, every pixel (the check before B3)", full),
                    ("zlib.crc32", crc)):
        rows.append([name, f"{pct(v, 50):.2f}", f"{pct(v, 99):.2f}"])
        res[name] = pct(v, 50)
    for label, pragmas in (("Storage.store, as shipped (WAL, synchronous=NORMAL)", ()),
                           ("Storage.store, before: rollback journal, synchronous=FULL",
                            ("PRAGMA journal_mode=DELETE", "PRAGMA synchronous=FULL"))):
        with tempfile.TemporaryDirectory(prefix="espcam-bench-store-") as d:
            st = Storage(Path(d))
            for p in pragmas:
                st.db.execute(p)
            v = _time(_store(st, time.time(), pool), list(range(1, n + 1)))
            st.close()
        rows.append([label, f"{pct(v, 50):.2f}", f"{pct(v, 99):.2f}"])
        res[label] = pct(v, 50)
    # Against the node's history: 30 days at one frame per 5 min is 8640 rows per node; one
    # frame every 30 s, 86 400. The history is a day old, so retention deletes nothing. The
    # current backend/ in this process, the earlier ones in subprocesses, one after another.
    versions = {"now": store_times(), PREV_COMMIT: store_times_of(PREV_COMMIT),
                BEFORE_COMMIT: store_times_of(BEFORE_COMMIT)}
    names = {"now": "**now**", PREV_COMMIT: f"{PREV_COMMIT} (before a057350)",
             BEFORE_COMMIT: f"{BEFORE_COMMIT} (2026-11-24)"}
    hist_rows = []
    nan = float("nan")
    for existing in HISTORY:
        for ver in (BEFORE_COMMIT, PREV_COMMIT, "now"):
            r = versions[ver].get(str(existing), {})
            f = {k: r.get(k, nan) for k in ("store", "retention", "count", "reads",
                                            "first_store")}
            store = f"**{f['store']:.2f}**" if ver == "now" else f"{f['store']:.2f}"
            hist_rows.append([f"{existing:,}".replace(",", " "), names[ver], store,
                              _ms3(f["retention"]), _ms3(f["count"]),
                              f"{f['reads']:.2f}", f"{f['first_store']:.2f}"])
            for k, x in f.items():
                res[f"{k}_{ver}_with_{existing}_rows"] = x
    text = table(["stage (per VGA frame)", "p50 ms", "p99 ms"], rows)
    text += ("\n\nAgainst the node's history (p50 ms over 29 stores and 50 calls each, after "
             "a first store in a freshly opened index; earlier backend/ trees from git, in "
             "subprocesses of the same run):\n\n" + table(
                 ["rows of the node already indexed", "backend", "Storage.store",
                  "its apply_retention", "one count()",
                  "subscriber's other reads per frame (2 has, is_latest, count)",
                  "first store after opening"], hist_rows))
    text += f"\n\nThe shipped check (1/8 scale) refuses a truncated JPEG: {refused}."
    return {"text": text, **res}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
