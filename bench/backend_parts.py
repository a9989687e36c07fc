"""Bench item 3b: the backend's per-frame stages timed one at a time, as shipped, against what
they cost before the fixes (re-created here: SQLite's rollback journal) and one candidate that
is not applied (a JPEG check at 1/8 scale); and the storage path against the size of the
node's history in the index."""

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

from PIL import Image

from backend.jpeg import inspect_jpeg
from backend.storage import Storage
from bench.common import ROOT, jpeg_pool, pct, table
from bench.ingest import BEFORE_COMMIT, CACHE, before_tree

NODE = "bench-node"
HISTORY = (0, 8640, 100_000)
SHIPPED_RETENTION = Storage.apply_retention  # kept: bench.serve_candidates replaces it


def draft_check(data: bytes) -> tuple[int, int]:
    # Candidate: decode every entropy-coded block (so truncated or corrupt scans still fail)
    # but let libjpeg scale by 1/8 in the IDCT instead of producing all 640x480 pixels.
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
        img.draft("RGB", (size[0] // 8, size[1] // 8))
        img.load()
        return size


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


def retention_candidate(st: Storage, node: str, now: float | None = None) -> int:
    """Candidate for Storage.apply_retention (measured here, not applied): without a byte
    limit, first ask the (node, taken_at) index whether any frame is past the age limit, in
    O(log n), instead of counting the node's rows (O(n)) on every stored frame; only then run
    the shipped walk. Same result: with nothing too old and no byte limit it deletes nothing."""
    ret = st.retention
    if ret.max_bytes <= 0:
        if ret.max_age_days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - ret.max_age_days * 86400
        if st.db.execute("SELECT 1 FROM frames WHERE node = ? AND taken_at < ? LIMIT 1",
                         (node, cutoff)).fetchone() is None:
            return 0
    return SHIPPED_RETENTION(st, node, now)


def _fill(st: Storage, existing: int, now: float) -> None:
    with st.db:
        st.db.executemany(
            "INSERT INTO frames (node, frame_id, captured_at, received_at, taken_at, "
            "bytes, width, height, trigger, crc, path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(NODE, 10_000_000 + i, None, now - 86400 + i * 0.1, now - 86400 + i * 0.1,
              45000, 640, 480, "interval", i, f"{NODE}/old/{i}.jpg") for i in range(existing)])


def store_times() -> dict[str, tuple[float, float]]:
    """Storage.store and apply_retention, p50 ms, against the history size, for whichever
    backend/ is imported: run in a subprocess with an older tree first on sys.path."""
    pool = jpeg_pool(CACHE, 16)
    out = {}
    for existing in HISTORY:
        with tempfile.TemporaryDirectory(prefix="espcam-bench-store-") as d:
            st = Storage(Path(d))
            now = time.time()
            _fill(st, existing, now)
            v = _time(_store(st, now, pool), list(range(1, 31)))
            t_ret = _time(lambda _x, st=st, now=now: st.apply_retention(NODE, now),
                          list(range(10)))
            st.close()
        out[str(existing)] = (pct(v, 50), pct(t_ret, 50))
    return out


def store_times_before() -> dict[str, tuple[float, float]]:
    tree = before_tree()
    if tree is None:
        return {}
    code = (f"import sys, json; sys.path[:0] = [{str(tree)!r}, {str(ROOT)!r}]; "
            "from bench.backend_parts import store_times; print(json.dumps(store_times()))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tree, timeout=900)
    if p.returncode:
        print("backend of", BEFORE_COMMIT, "failed:", p.stderr[-1000:], file=sys.stderr)
        return {}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _index_reads(st: Storage, fid: int, crc: int) -> None:
    # What the service reads from the index per stored frame besides Storage.store: has() for
    # the first chunk and again for the whole frame, latest() (is it the newest?), count().
    st.has(NODE, fid, crc)
    st.has(NODE, fid, crc)
    st.latest(NODE)
    st.count(NODE)


def run(quick: bool) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    n = 100 if quick else 300
    rows = []
    res: dict[str, Any] = {}
    full = _time(inspect_jpeg, pool, n // 16 + 1)
    draft = _time(draft_check, pool, n // 16 + 1)
    crc = _time(lambda d: zlib.crc32(d), pool, n // 16 + 1)
    bad = pool[0][: len(pool[0]) // 2]
    try:
        draft_check(bad)
        refused = False
    except OSError:
        refused = True
    res["draft_refuses_truncated"] = refused
    for name, v in (("inspect_jpeg (full decode, as shipped)", full),
                    ("draft decode at 1/8 (candidate, not applied)", draft),
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
    # frame every 30 s, 86 400. The history is a day old, so retention deletes nothing.
    before = store_times_before()
    hist_rows = []
    for existing in HISTORY:
        with tempfile.TemporaryDirectory(prefix="espcam-bench-store-") as d:
            st = Storage(Path(d))
            now = time.time()
            _fill(st, existing, now)
            v = _time(_store(st, now, pool), list(range(1, 31)))
            t_ret = _time(lambda _x, st=st, now=now: st.apply_retention(NODE, now),
                          list(range(50)))
            t_cnt = _time(lambda _x, st=st: st.count(NODE), list(range(50)))
            t_rd = _time(lambda _x, st=st: _index_reads(st, 5, zlib.crc32(pool[5])),
                         list(range(50)))
            t_cand = _time(lambda _x, st=st, now=now: retention_candidate(st, NODE, now),
                           list(range(50)))
            st.apply_retention = lambda node, now=None, st=st: retention_candidate(st, node, now)
            v_cand = _time(_store(st, now, pool), list(range(31, 61)))
            st.close()
        b_store, b_ret = before.get(str(existing), (float("nan"), float("nan")))
        hist_rows.append([f"{existing:,}".replace(",", " "), f"{b_store:.2f}", f"{b_ret:.2f}",
                          f"**{pct(v, 50):.2f}**", f"{pct(t_ret, 50):.2f}",
                          f"{pct(t_cnt, 50):.2f}", f"{pct(t_rd, 50):.2f}",
                          f"{pct(t_cand, 50):.3f}", f"{pct(v_cand, 50):.2f}"])
        res[f"store_before_with_{existing}_rows"] = b_store
        res[f"retention_before_with_{existing}_rows"] = b_ret
        res[f"store_with_{existing}_rows"] = pct(v, 50)
        res[f"retention_with_{existing}_rows"] = pct(t_ret, 50)
        res[f"count_with_{existing}_rows"] = pct(t_cnt, 50)
        res[f"reads_with_{existing}_rows"] = pct(t_rd, 50)
        res[f"retention_candidate_with_{existing}_rows"] = pct(t_cand, 50)
        res[f"store_candidate_with_{existing}_rows"] = pct(v_cand, 50)
    text = table(["stage (per VGA frame)", "p50 ms", "p99 ms"], rows)
    text += ("\n\nAgainst the node's history (p50 ms; \"before\": backend/ of "
             f"{BEFORE_COMMIT} in a subprocess, same run):\n\n" + table(
                 ["rows of the node already indexed", "store, before", "retention, before",
                  "**store, now**", "retention, now", "one count()",
                  "subscriber's reads (2 has, latest, count)", "candidate retention",
                  "store with it"], hist_rows))
    text += (f"\n\nThe 1/8 draft decode still refuses a truncated JPEG: {refused}.")
    return {"text": text, **res}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
