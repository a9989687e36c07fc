"""Run the fault campaign and print, per fault and per node: captured, stored, lost and
counted, lost and not counted, and whether captured = stored + counted lost holds.

    .venv/bin/python -m faults                  every fault, full length (about 50 minutes)
    .venv/bin/python -m faults --quick          the short form (a few minutes)
    .venv/bin/python -m faults --only a,b       some faults (names: --list)
    options: --out FILE.md (the report, and the raw figures beside it as .json),
             --json FILE (raw figures only), --workdir DIR (kept afterwards)

As root the campaign runs in a network namespace of its own (faults/netns.py), which the
packet-loss and link-cut faults need. Without root those are skipped with the reason, and the
full campaign then exits 2 (incomplete). Exit status 1 if any fault breaks the invariant or,
with the spool on, stores less than was captured; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from faults import netns
from faults.campaign import Result, describe, run_fault, summary
from faults.catalogue import FAULTS, Scale, by_name

QUICK_POOL = 120
FULL_POOL = 400


def images(folder: Path, count: int) -> Path:
    """One pool of distinct JPEGs (VGA, about 45 KB) for every simulated node: a stored file
    can then only match the capture it came from."""
    from espcam.sim.images import make_pool

    if len(list(folder.glob("*.jpg"))) < count:
        make_pool(folder, "faults", count=count)
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m faults", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short form")
    ap.add_argument("--only", default="", help="comma-separated fault names")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    ap.add_argument("--out", type=Path, default=None, help="write the report here (.md + .json)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep every file here")
    a = ap.parse_args(argv)
    if a.list:
        for f in FAULTS:
            flags = ", ".join(x for x in ("quick" if f.quick else "",
                                          "root" if f.root else "") if x)
            print(f"{f.name:24} {f.title}{f' [{flags}]' if flags else ''}")
        return 0
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    known = by_name()
    for n in names:
        if n not in known:
            ap.error(f"no fault {n!r}; --list shows them")
    chosen = [known[n] for n in names] if names else [f for f in FAULTS
                                                     if f.quick or not a.quick]
    needs_root = [f for f in chosen if f.root]

    if netns.is_root() and not netns.inside():
        missing = netns.missing_tools()
        if missing:
            print(f"faults: missing {' and '.join(missing)}: run ./scripts/setup.sh as root, or "
                  f"apt-get install {' '.join(missing)}", file=sys.stderr)
        if needs_root and missing:
            return 2
        if "iproute2" not in missing:
            return netns.run_inside(argv)
    return campaign(a, chosen)


def campaign(a: argparse.Namespace, chosen: list) -> int:
    scale = Scale(quick=a.quick)
    mode = "quick" if a.quick else "full"
    where = (f"in network namespace {netns.inside()}" if netns.inside()
             else "on the host's loopback (not root: no namespace)")
    head = f"espcam fault campaign, {mode}, {time.strftime('%Y-%m-%d %H:%M')}, {where}"
    print(head, flush=True)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="espcam-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    pool = images(work / "images", QUICK_POOL if a.quick else FULL_POOL)
    results: list[Result] = []
    skipped_root = False
    try:
        for fault in chosen:
            if fault.root and not netns.inside():
                res = Result(fault.name, fault.title, fault.what,
                             skipped=("needs root: " + netns.what_root_needs()))
                skipped_root = True
            else:
                print(f"-- {fault.name}: {fault.what} ...", flush=True)
                res = run_fault(fault, scale, work, pool)
            results.append(res)
            print("\n".join(describe(res)), flush=True)
    except KeyboardInterrupt:
        print("faults: interrupted", file=sys.stderr)
        return 130
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = ["", f"== summary ({mode})", *summary(results)]
    failed = [r for r in results if not r.ok and not r.skipped]
    if failed:
        lines.append(f"FAILED: {', '.join(r.fault for r in failed)}")
    if skipped_root:
        lines.append("skipped (not root): " + ", ".join(r.fault for r in results if r.skipped)
                     + ". " + netns.what_root_needs())
    print("\n".join(lines), flush=True)
    raw = {"mode": mode, "head": head, "faults": [r.as_dict() for r in results]}
    if a.json:
        a.json.write_text(json.dumps(raw, indent=1))
    if a.out:
        body = [f"_{head}_", ""]
        for r in results:
            body += ["```", *describe(r), "```", ""]
        body += ["```", *lines[1:], "```", ""]
        a.out.write_text("\n".join(body))
        a.out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    if failed:
        return 1
    if skipped_root and not a.quick:
        return 2  # a full campaign without the network faults is not the full campaign
    return 0


if __name__ == "__main__":
    sys.exit(main())
