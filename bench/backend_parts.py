"""The backend's per-frame stages timed side by side, as shipped and with candidate fixes
(measured here only; the fixes themselves belong in backend/): the Pillow check, and
Storage.store with SQLite's default rollback journal against WAL with synchronous=NORMAL."""

from __future__ import annotations

import io
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

from backend.jpeg import inspect_jpeg
from backend.storage import Storage
from bench.common import jpeg_pool, pct, table
from bench.ingest import CACHE


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


def run(quick: bool) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    n = 100 if quick else 300
    rows = []
    res: dict[str, Any] = {}
    full = _time(inspect_jpeg, pool, n // 16 + 1)
    draft = _time(draft_check, pool, n // 16 + 1)
    crc = _time(lambda d: zlib.crc32(d), pool, n // 16 + 1)
    # a truncated JPEG must still be refused by the candidate
    bad = pool[0][: len(pool[0]) // 2]
    try:
        draft_check(bad)
        refused = False
    except OSError:
        refused = True
    res["draft_refuses_truncated"] = refused
    for name, v in (("inspect_jpeg (full decode, as shipped)", full),
                    ("draft decode 1/8 (candidate)", draft), ("zlib.crc32", crc)):
        rows.append([name, f"{pct(v, 50):.2f}", f"{pct(v, 99):.2f}"])
        res[name] = pct(v, 50)
    for label, pragmas in (("Storage.store, as shipped", ()),
                           ("Storage.store, WAL + synchronous=NORMAL (candidate)",
                            ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"))):
        with tempfile.TemporaryDirectory(prefix="espcam-bench-store-") as d:
            st = Storage(Path(d))
            for p in pragmas:
                st.db.execute(p)
            now = time.time()
            items = [(i, pool[i % len(pool)]) for i in range(1, n + 1)]
            v = _time(lambda it, st=st, now=now: st.store(
                "bench-node", it[0], it[1], crc=zlib.crc32(it[1]), received_at=now + it[0],
                captured_at=None, width=640, height=480, trigger="interval"), items)
            st.close()
        rows.append([label, f"{pct(v, 50):.2f}", f"{pct(v, 99):.2f}"])
        res[label] = pct(v, 50)
    # Storage.store against the size of the node's history: apply_retention reads every row of
    # the node on every stored frame. 30 days at one frame per 5 min is 8640 rows per node.
    hist_rows = []
    for existing in (0, 8640, 100_000):
        with tempfile.TemporaryDirectory(prefix="espcam-bench-store-") as d:
            st = Storage(Path(d))
            now = time.time()
            with st.db:
                st.db.executemany(
                    "INSERT INTO frames (node, frame_id, captured_at, received_at, taken_at, "
                    "bytes, width, height, trigger, crc, path) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [("bench-node", 10_000_000 + i, None, now - 86400 + i * 0.1,
                      now - 86400 + i * 0.1, 45000, 640, 480, "interval", i,
                      f"bench-node/old/{i}.jpg") for i in range(existing)])
            items = [(i, pool[i % len(pool)]) for i in range(1, 31)]
            v = _time(lambda it, st=st, now=now: st.store(
                "bench-node", it[0], it[1], crc=zlib.crc32(it[1]), received_at=now + it[0],
                width=640, height=480, trigger="interval"), items)
            t_ret = _time(lambda _x, st=st, now=now: st.apply_retention("bench-node", now),
                          list(range(10)))
            st.close()
        hist_rows.append([existing, f"{pct(v, 50):.2f}", f"{pct(t_ret, 50):.2f}"])
        res[f"store_with_{existing}_rows"] = pct(v, 50)
    text = table(["stage (per VGA frame)", "p50 ms", "p99 ms"], rows)
    text += "\n\n" + table(["rows of the node already indexed", "Storage.store p50 ms",
                             "of which apply_retention p50 ms"], hist_rows)
    text += (f"\n\nThe 1/8 draft decode still refuses a truncated JPEG: {refused}.")
    return {"text": text, **res}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
