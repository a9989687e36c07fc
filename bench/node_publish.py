"""Bench item 1: the node's publish path on MicroPython against one raw socket.write.

Runs bench/mpy/publish.py on the MicroPython unix port with the node's real Sender, Link and
MQTT client (the "before" rows: umqtt.simple 1.3.4 from .deps/node-lib, as the node published
before), connected to the loopback sink of bench/sink.py; once
with the sink reading as fast as it can (the interpreter's own cost, the worst case for the
ratio) and once reading at 1 MB/s (a link slower than the CPU, as on a board).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from bench.common import ROOT, VENV_BIN, table

SIZES = (10240, 61440, 204800)
NAMES = {
    "raw": "limit: one socket.write of the same bytes + 4-byte answer",
    "node": "**node: Sender + Link (2 writes per chunk, TCP_NODELAY)**",
    "writes": "the node's writes alone (same 2 per chunk, raw socket)",
    "chunking": "Sender alone (publish_from a no-op)",
    "before_nodelay": "before: umqtt publish per chunk, TCP_NODELAY",
    "before": "before: umqtt publish per chunk, Nagle on (as of 2026-11-24)",
    "crc": "crc32 of the frame (Frame(), not in the rows above)",
}
NO_RATIO = ("raw", "crc", "chunking")


def run_once(reps: int, rate: float = 0) -> dict[tuple[str, int], tuple[int, int, int]]:
    sink = subprocess.Popen([sys.executable, "-m", "bench.sink", str(rate)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        mport, rport = sink.stdout.readline().split()
        env = dict(os.environ, MICROPYPATH=f"{ROOT / 'node' / 'lib'}:{ROOT / '.deps' / 'node-lib'}")
        p = subprocess.run([str(VENV_BIN / "micropython"), "-X", "heapsize=4m",
                            str(ROOT / "bench/mpy/publish.py"), mport, rport, str(reps),
                            *map(str, SIZES)],
                           capture_output=True, text=True, env=env, timeout=1800)
        if p.returncode != 0 or not p.stdout.rstrip().endswith("done"):
            raise RuntimeError("bench/mpy/publish.py failed:\n" + p.stdout + p.stderr)
        out = {}
        for line in p.stdout.splitlines()[:-1]:
            what, size, med, mn, alloc = line.split()
            out[(what, int(size))] = (int(med), int(mn), int(alloc))
        return out
    finally:
        sink.stdin.close()
        sink.terminate()
        sink.wait()


def report(res: dict, title: str) -> str:
    rows = []
    for size in SIZES:
        lim = res[("raw", size)][0]
        for what in NAMES:
            if (what, size) not in res:
                continue
            med, mn, alloc = res[(what, size)]
            ratio = "" if what in NO_RATIO else f"{med / lim:.2f}"
            if what == "node":
                ratio = f"**{ratio}**"
            rows.append([f"{size // 1024} KB", NAMES[what], f"{med / 1000:.3f}",
                         f"{mn / 1000:.3f}", ratio, "" if what == "crc" else alloc])
    return f"{title}\n\n" + table(
        ["frame", "path", "median ms", "min ms", "ratio to limit", "heap B/frame"], rows)


def run(quick: bool) -> dict[str, Any]:
    fast = run_once(10 if quick else 40)
    slow = run_once(3 if quick else 6, rate=1_000_000)
    stream = {size: fast[("bytes", size)][:2] for size in SIZES}
    note = ("Bytes the node writes per frame (MQTT + protocol + frame) and its writes: "
            + ", ".join(f"{s // 1024} KB: {b} B in {w} writes" for s, (b, w) in stream.items())
            + ". Heap: the most any one run allocated, GC disabled.")
    text = (report(fast, "Loopback, sink reading as fast as it can (interpreter cost):")
            + "\n\n" + report(slow, "Sink reading at 1 MB/s (a link slower than the CPU):")
            + "\n\n" + note)
    return {"text": text, "fast": {f"{k[0]}@{k[1]}": v for k, v in fast.items()},
            "slow": {f"{k[0]}@{k[1]}": v for k, v in slow.items()}, "stream": stream}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
