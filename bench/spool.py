"""Bench item 6: what the spool (protocol version 2) costs the node per frame, on MicroPython.

Runs bench/mpy/spool.py on the MicroPython unix port with the node's real Sender, Link, MQTT
client and spools, connected to the loopback MQTT sink of bench/sink.py, and sets side by side,
in one run: the smallest spool (one frame's budget, confirmed as soon as sent: the node as it
was before the spool), a RAM spool and an SD spool each holding 8 frames, and a held frame sent
again from each. The SD spool writes to a folder of this machine, not a card: its times say
what the node's own code costs around the writes, not what a card takes (an SD card in 1-bit
mode writes about 1 to 2 MB/s). Nothing here is a pass/fail test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

from bench.common import ROOT, VENV_BIN, table

SIZES = (10240, 46080, 204800)
NAMES = {
    "smallest": "smallest spool (one frame, confirmed at once): as before the spool",
    "ram": "**RAM spool holding 8 frames: new frame held and sent**",
    "sd": "**SD spool holding 8 frames: new frame written, then sent**",
    "ram_again": "held frame sent again from RAM",
    "sd_again": "held frame sent again from its file (4 KB reads)",
}


def run_once(reps: int) -> tuple[dict[tuple[str, int], tuple[int, int, int]],
                                 dict[tuple[str, int], int]]:
    sink = subprocess.Popen([sys.executable, "-m", "bench.sink", "0"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        mport, _ = sink.stdout.readline().split()
        with tempfile.TemporaryDirectory(prefix="espcam-bench-spool-") as folder:
            env = dict(os.environ, MICROPYPATH=str(ROOT / "node" / "lib"))
            p = subprocess.run([str(VENV_BIN / "micropython"), "-X", "heapsize=8m",
                                str(ROOT / "bench/mpy/spool.py"), mport, folder, str(reps),
                                *map(str, SIZES)],
                               capture_output=True, text=True, env=env, timeout=1800)
        if p.returncode != 0 or not p.stdout.rstrip().endswith("done"):
            raise RuntimeError("bench/mpy/spool.py failed:\n" + p.stdout + p.stderr)
        out, heap = {}, {}
        for line in p.stdout.splitlines()[:-1]:
            f = line.split()
            if f[0] == "heap":
                heap[(f[1], int(f[2]))] = int(f[3])
            else:
                out[(f[0], int(f[1]))] = (int(f[2]), int(f[3]), int(f[4]))
        return out, heap
    finally:
        sink.stdin.close()
        sink.terminate()
        sink.wait()


def report(res: dict, heap: dict) -> str:
    rows = []
    for size in SIZES:
        base = res[("smallest", size)][0]
        for what, name in NAMES.items():
            med, mn, alloc = res[(what, size)]
            held = heap.get((what, size))
            rows.append([f"{size // 1024} KB", name, f"{med / 1000:.3f}", f"{mn / 1000:.3f}",
                         f"{med / base:.2f}", alloc,
                         "" if held is None else f"{held / 1024:.1f} KB"])
    return table(["frame", "path", "median ms", "min ms", "ratio to smallest",
                  "heap B/frame", "heap held (8 frames)"], rows)


def run(quick: bool) -> dict[str, Any]:
    res, heap = run_once(10 if quick else 40)
    text = ("Loopback MQTT sink reading as fast as it can; the SD spool on this machine's disk, "
            "not a card. Heap B/frame: the most one frame allocated, GC disabled; heap held: "
            "what the spool keeps on the heap with 8 frames (a RAM spool the frames "
            "themselves).\n\n" + report(res, heap))
    return {"text": text, "times": {f"{k[0]}@{k[1]}": v for k, v in res.items()},
            "heap": {f"{k[0]}@{k[1]}": v for k, v in heap.items()}}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
