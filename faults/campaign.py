"""Running one fault and judging it: the fault (faults/catalogue.py), then the captures
stopped, everything the nodes hold confirmed, the processes stopped, and every node counted
(faults/account.py).

A node passes when the invariant holds (captured = stored + counted lost, nothing stored that
was not captured under its id, nothing both stored and lost), and, since its spool is on, when
every frame is stored except those the fault loses on purpose and the node says so (a frame
whose write to the card the power cut, a spool too small for the outage, a deep sleep with
frames in RAM). Frames lost without being counted pass only where docs/protocol.md says
nothing can count them (a RAM spool's frames at a power cut), and only those.
"""

from __future__ import annotations

import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faults.account import NodeCount, count_node, logged_losses
from faults.catalogue import Fault, Scale
from faults.rig import Rig, RigError


@dataclass
class Result:
    fault: str
    title: str
    what: str
    ok: bool = False
    skipped: str = ""
    error: str = ""
    seconds: float = 0.0
    nodes: list[NodeCount] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    limit: str = ""
    settle_seconds: float = 0.0  # from captures stopped to nothing held by any node

    def as_dict(self) -> dict[str, Any]:
        return {"fault": self.fault, "title": self.title, "what": self.what, "ok": self.ok,
                "skipped": self.skipped, "error": self.error, "seconds": round(self.seconds, 1),
                "nodes": [n.as_dict() for n in self.nodes], "failures": self.failures,
                "notes": self.notes, "limit": self.limit,
                "settle_seconds": round(self.settle_seconds, 1)}


def run_fault(fault: Fault, scale: Scale, workdir: Path, images: Path) -> Result:
    res = Result(fault.name, fault.title, fault.what, limit=fault.limit)
    rig = Rig(workdir / fault.name, images, frames_watch=fault.frames_watch)
    t0 = time.monotonic()
    held: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    try:
        fault.run(rig, scale)
        rig.stop_capturing(scale.pick(120, 300))
        t1 = time.monotonic()
        # Long enough for a frame's resend timer (15 s doubling, 10 min at most) after the
        # longest outage here; a timeout means a frame is stuck.
        held = rig.settle(scale.pick(240, fault.settle or 900))
        res.settle_seconds = time.monotonic() - t1
        assert rig.watch is not None
        reports = {n.name: rig.watch.report(n.name) for n in [*rig.cams, *rig.lights]}
    except RigError as e:
        res.error = str(e)
    except Exception:
        res.error = traceback.format_exc(limit=6)
    finally:
        try:
            rig.teardown()
        except Exception:
            res.error = res.error or traceback.format_exc(limit=6)
    res.seconds = time.monotonic() - t0
    res.notes = rig.notes
    try:
        judge(res, rig, held, reports)
    finally:
        for path in rig.unmount:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
    return res


def judge(res: Result, rig: Rig, held: dict[str, Any], reports: dict[str, Any]) -> None:
    log = rig.backend.log_text()
    logged, power = logged_losses(log)
    if rig.backend.runs > 1:
        res.notes.append(f"backend started {rig.backend.runs} times")
    fails = res.failures
    if res.error:
        fails.append(f"the fault could not be run to its end: {res.error.strip()}")
    fails.extend(rig.problems)
    for name, spool in held.items():
        fails.append(f"{name} still held {spool} when the campaign stopped waiting")
    for node in [*rig.cams, *rig.lights]:
        captured = node.captured()
        nc = count_node(rig.data, node.name, node.spool, captured)
        if hasattr(node, "mapping_problems"):
            nc.problems += node.mapping_problems(captured)
        nc.logged_lost = logged.get(node.name, 0)
        rep = reports.get(node.name)
        nc.report_lost = rep.get("frames_lost") if isinstance(rep, dict) else None
        res.nodes.append(nc)
        if hasattr(node, "sim"):
            text = node.sim.log()
            res.notes.append(f"{node.name}: {text.count('connected to ')} connections, "
                             f"{text.count('bytes sent again')} frames sent again, "
                             f"{text.count('link lost')} links lost")
        for p in nc.problems:
            fails.append(f"{node.name}: {p}")
        if nc.logged_lost > nc.lost:
            fails.append(f"{node.name}: the log says LOST for {nc.logged_lost} frames, the "
                         f"backend counted {nc.lost}")
        vanish = rig.may_vanish.get(node.name, set())
        if nc.uncounted:
            outside = [f for f in nc.uncounted if f not in vanish]
            if outside:
                fails.append(f"{node.name}: {len(outside)} frames neither stored nor counted "
                             f"lost: {short(outside)}")
            elif not any(t >= int(cut) for cut in getattr(node, "cut_at", [])
                         for t in power.get(node.name, [])):
                # The backend also says it for a node it first sees in a run within 5 min of
                # the node's boot: only a line after the cut counts.
                fails.append(f"{node.name}: frames lost at a power cut with no `lost power` "
                             "line from the backend after it")
            else:
                res.notes.append(f"{node.name}: {len(nc.uncounted)} frames held in RAM gone "
                                 f"with the power ({short(nc.uncounted)}); the backend logged "
                                 "that the node lost power (a documented limit)")
        expected = rig.expect_lost.get(node.name, set())
        allowed = rig.allow_reasons.get(node.name, set())
        unexpected = [f for f in nc.lost_ids if f in captured and f not in expected
                      and not allowed & {reason_of(rig, node.name, f)}]
        if unexpected:
            fails.append(f"{node.name}: spool on, yet {len(unexpected)} frames lost: "
                         f"{short(unexpected)} ({reasons(nc)})")
        missing = sorted(expected - set(nc.lost_ids))
        if missing:
            fails.append(f"{node.name}: frames {short(missing)} should have been counted lost")
    res.ok = not fails


def reason_of(rig: Rig, node: str, fid: int) -> str:
    import sqlite3

    db = sqlite3.connect(f"file:{rig.data / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT reason FROM lost WHERE node = ? AND frame_id = ?",
                         (node, fid)).fetchone()
        return row[0] if row else ""
    finally:
        db.close()


def reasons(nc: NodeCount) -> str:
    return "; ".join(f"{n} x {r}" for r, n in nc.lost_reasons.items()) or "no reason recorded"


def short(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:12])) + (f" and {len(ids) - 12} more" if len(ids) > 12
                                             else "")


# ---------------------------------------------------------------- printing


def node_rows(res: Result) -> list[tuple[str, ...]]:
    """One row per simulated node; light nodes summed in one row."""
    rows = []
    lights = [n for n in res.nodes if n.spool == "light"]
    for n in res.nodes:
        if n.spool != "light":
            rows.append((n.node, n.spool, str(n.captured), str(n.stored), str(n.lost),
                         str(len(n.uncounted)), "holds" if n.holds else "BROKEN"))
    if lights:
        rows.append((f"{len(lights)} light nodes", "light",
                     str(sum(n.captured for n in lights)), str(sum(n.stored for n in lights)),
                     str(sum(n.lost for n in lights)),
                     str(sum(len(n.uncounted) for n in lights)),
                     "holds" if all(n.holds for n in lights) else
                     f"BROKEN ({sum(not n.holds for n in lights)})"))
    return rows


HEAD = ("node", "spool", "captured", "stored", "lost, counted", "lost, not counted",
        "invariant")


def table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    return [line(head), *(line(r) for r in rows)]


def describe(res: Result) -> list[str]:
    out = [f"== {res.fault}: {res.title} ({res.what})"]
    if res.skipped:
        return [*out, f"   SKIPPED: {res.skipped}"]
    out += ["   " + line for line in table(node_rows(res), HEAD)]
    for note in res.notes:
        out.append(f"   - {note}")
    lost = [n for n in res.nodes if n.lost]
    for n in lost:
        if n.spool != "light":
            out.append(f"   - {n.node} counted lost: {reasons(n)}")
    verdict = "PASS" if res.ok else "FAIL"
    out.append(f"   {verdict} in {res.seconds:.0f} s (everything confirmed "
               f"{res.settle_seconds:.0f} s after the captures stopped)")
    for f in res.failures:
        out.append(f"   ! {f}")
    return out


def summary(results: list[Result]) -> list[str]:
    rows = []
    for r in results:
        if r.skipped:
            rows.append((r.fault, "-", "-", "-", "-", "-", "skipped"))
            continue
        rows.append((r.fault, str(len(r.nodes)), str(sum(n.captured for n in r.nodes)),
                     str(sum(n.stored for n in r.nodes)), str(sum(n.lost for n in r.nodes)),
                     str(sum(len(n.uncounted) for n in r.nodes)),
                     ("pass" if r.ok else "FAIL") + (" (limit)" if r.limit and r.ok else "")))
    return table(rows, ("fault", "nodes", "captured", "stored", "lost, counted",
                        "lost, not counted", "result"))
