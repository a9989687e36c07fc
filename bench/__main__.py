"""Run the espcam benchmarks (issue 6) and print their tables.

    .venv/bin/python -m bench                 everything, full scale (item 4: 200 nodes, 10 min)
    .venv/bin/python -m bench --quick         shorter runs (item 4: 50 nodes, 60 s)
    .venv/bin/python -m bench --only 1,3,5    some items only
    options: --no-profile, --scale-nodes N, --scale-seconds S, --out FILE (Markdown + JSON),
             --wait-idle MIN (first wait up to MIN minutes until no pytest process runs)

Items: 1 node publish path (MicroPython), 2 node duty cycle (simulator), 3 backend ingest
(+ profile, + per-stage timings), 4 scale, 5 wire efficiency, 6 the node's spool (MicroPython),
7 analysis (face candidates on the same frames; ingest with analysis on and off), 8 an update
of the node app over MQTT (time and heap), 9 hostile input (memory, log and a real node's
frames under each attack). The 2-hour soak is a command of its own: python -m bench.soak.
Every ratio compares figures measured side by side in the same run; nothing here is a
pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from bench.common import ROOT, headline, machine, others


class Watch:
    """Polls `others()` every 10 s while an item runs: how often a test suite ran alongside."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            self.seen.append(others())
            if self._stop.wait(10):
                return

    def stop(self) -> str:
        self._stop.set()
        self._t.join()
        busy = sum(1 for o in self.seen if "processes: 0," not in o)
        return (f"test suite running in {busy} of {len(self.seen)} checks (every 10 s)"
                if busy else "no test suite running")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (item 4: 50 nodes, 60 s)")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="comma-separated items to run")
    ap.add_argument("--no-profile", action="store_true", help="skip py-spy in item 3")
    ap.add_argument("--scale-nodes", type=int, default=None)
    ap.add_argument("--scale-seconds", type=float, default=None)
    ap.add_argument("--out", type=Path, default=None,
                    help="write the report here (.md) and the raw figures next to it (.json)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="MIN",
                    help="first wait up to MIN minutes until no pytest process is running")
    a = ap.parse_args(argv)
    if a.wait_idle:
        deadline = time.monotonic() + a.wait_idle * 60
        while "processes: 0," not in others() and time.monotonic() < deadline:
            print(f"waiting for the machine to be idle ({others()})", flush=True)
            time.sleep(30)
    only = {int(x) for x in a.only.split(",") if x.strip()}
    mode = "quick" if a.quick else "full"
    m = machine()
    head = headline(f"espcam benchmarks, mode {mode}", m)
    print(head, flush=True)
    out_md = [f"_{head}_"]
    raw: dict = {"machine": m, "mode": mode}
    items = [
        (1, "1. Node publish path (MicroPython)", "bench.node_publish", {}),
        (2, "2. Node duty cycle (simulator)", "bench.duty", {}),
        (3, "3. Backend ingest", "bench.ingest", {"profile": not a.no_profile}),
        (3, "3b. Backend stages, as shipped and candidate fixes", "bench.backend_parts", {}),
        (4, "4. Scale", "bench.scale", {"nodes": a.scale_nodes, "seconds": a.scale_seconds}),
        (5, "5. Wire efficiency", "bench.wire", {}),
        (6, "6. The node's spool (MicroPython)", "bench.spool", {}),
        (7, "7. Analysis: face candidates, ingest with analysis on and off", "bench.analysis",
         {}),
        (8, "8. An update of the node app over MQTT (simulator)", "bench.ota", {}),
        (9, "9. Hostile input: what each attack costs (docs/security.md)", "bench.hostile", {}),
    ]
    for num, title, mod, kw in items:
        if num not in only:
            continue
        print(f"\n## {title}\n", flush=True)
        t = time.monotonic()
        watch = Watch()
        module = __import__(mod, fromlist=["run"])
        res = module.run(a.quick, **kw)
        res["others"] = watch.stop()
        took = f"({time.monotonic() - t:.0f} s; {res['others']}; at the end: {others()})"
        print(res["text"], flush=True)
        print(f"\n{took}", flush=True)
        out_md.append(f"## {title}\n\n{res['text']}\n\n_{took}_")
        raw[mod] = {k: v for k, v in res.items() if k != "text"}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n\n".join(out_md) + "\n")
        a.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
        print(f"\nreport: {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
