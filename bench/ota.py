"""Bench item 8: an update of today's node app over MQTT (`espcam ota`), on the simulator and a
real Mosquitto and backend: how long from the offer to the new app's confirmed birth, split at
the node's reset, and the heap the transfer leaves the app (the node's own gc.mem_free() after
a collection, in each `downloading` status), for the app compiled to .mpy (as deploy and ota
send it) and as .py, in the heap of a board without PSRAM (150 KB, as tests/test_e2e_heap.py)
and in the port's default heap. The node starts from the app as deploy leaves it (.mpy).

The network is loopback and the flash the host's disk: on a board Wi-Fi round trips (one per
8 KB window) and flash writes add to the transfer time; the heap figures are the app's own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Broker, table

KEY = "5a" * 32


def _app(dest: Path, version: str) -> Path:
    shutil.copytree(ROOT / "node", dest)
    init = dest / "lib" / "espcam" / "__init__.py"
    text = init.read_text()
    old = text.split('VERSION = "', 1)[1].split('"', 1)[0]
    init.write_text(text.replace(f'VERSION = "{old}"', f'VERSION = "{version}"'))
    return dest


def _deployed(dest: Path) -> Path:
    """The app as `espcam deploy` leaves it on a board (lib/espcam as .mpy): what runs when the
    first update comes."""
    from espcam.provision.mpy import compile_package, mpy_cross_binary

    (dest / "lib" / "espcam").mkdir(parents=True)
    for f in ("boot.py", "main.py"):
        shutil.copy(ROOT / "node" / f, dest / f)
    compile_package(ROOT / "node" / "lib" / "espcam", dest / "lib" / "espcam",
                    mpy_cross_binary(), "lib/espcam")
    return dest


def one(work: Path, compiled: bool, heap: str | None, rounds: int) -> dict[str, Any]:
    from espcam.backend.config import Settings
    from espcam.backend.subscriber import Backend
    from espcam.sim.node import SimNode
    from observer import Observer  # tests/observer.py

    from espcam import cli

    broker = Broker(work / "broker").start()
    data, keys = work / "data", work / "keys"
    keys.mkdir(parents=True)
    (keys / "ota-1.json").write_text(json.dumps({"ota_key": KEY}))
    backend = Backend(Settings(broker=broker.url, data_dir=str(data))).start()
    obs = Observer(broker.host, broker.port, "espcam/#")
    node = SimNode("ota-1", work / "node", broker.host, broker.port, heapsize=heap,
                   config={"ota_key": KEY, "interval": 0, "pir_pin": None}, proxy=False,
                   node_src=_deployed(work / "deployed"))
    runs = []
    try:
        assert backend.connected.wait(10)
        node.start()
        state = obs.json_on("espcam/ota-1/state", lambda d: "app" in d, 60)
        for r in range(rounds):
            version = f"9.0.{r + 1}"
            src = _app(work / f"app{r}", version)
            start = obs.mark()
            t0 = time.monotonic()
            argv = ["ota", "ota-1", "--from", str(src), "--broker", broker.url,
                    "--data-dir", str(data), "--keys", str(keys)]
            assert cli.main(argv + ([] if compiled else ["--no-compile"])) == 0
            tc = time.monotonic()
            restart = obs.wait(lambda m: m.topic == "espcam/ota-1/ota/status"
                               and b'"restarting"' in m.payload, 120, start)
            t1 = time.monotonic()
            obs.wait(lambda m: m.topic == "espcam/ota-1/ota/status" and b'"done"' in m.payload,
                     120, obs.msgs.index(restart))
            t2 = time.monotonic()
            statuses = [json.loads(m.payload) for m in obs.msgs[start:]
                        if m.topic == "espcam/ota-1/ota/status"]
            free = [s["heap_free"] for s in statuses if "heap_free" in s]
            pkg = max((data / "ota" / "packages").iterdir(), key=lambda p: p.stat().st_mtime)
            files = json.loads((pkg / "manifest.json").read_text())["files"]
            runs.append({"pack_s": tc - t0, "offer_to_reset_s": t1 - tc,
                         "reset_to_birth_s": t2 - t1,
                         "total_s": t2 - t0, "bytes": sum(f[1] for f in files),
                         "files": len(files), "heap_free_min": min(free),
                         "heap_free_before": state.get("heap_free")})
            state = obs.json_on("espcam/ota-1/state", lambda d, v=version: d.get("app") == v,
                                60, start)
        return {"runs": runs, "pieces": backend.ota.counters["pieces"]}
    finally:
        node.stop()
        obs.close()
        backend.stop()
        broker.stop()


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return sorted(x[key] for x in runs)[len(runs) // 2]


def run(quick: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="espcam-bench-ota-"))
    rounds = 1 if quick else 3
    cases = [("mpy", True, "150k"), ("py", False, "150k"), ("mpy", True, None)]
    out: dict[str, Any] = {}
    rows = []
    try:
        for name, compiled, heap in cases:
            key = f"{name}, heap {heap or 'default'}"
            res = one(work / key.replace(", ", "-").replace(" ", ""), compiled, heap, rounds)
            out[key] = res
            r = res["runs"]
            rows.append([key, r[0]["files"], r[0]["bytes"], f"{_median(r, 'pack_s'):.2f}",
                         f"{_median(r, 'offer_to_reset_s'):.2f}",
                         f"{_median(r, 'reset_to_birth_s'):.2f}", f"{_median(r, 'total_s'):.2f}",
                         r[0]["heap_free_before"],
                         min(x["heap_free_min"] for x in r)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(["app sent as", "files", "bytes", "pack + sign s", "offer → reset s",
                  "reset → birth s",
                  "total s", "heap free before (1st update)", "heap free in transfer (min)"],
                 rows)
    text += (f"\n\nMedian of {rounds} update(s) each. pack + sign: `espcam ota` until it has "
             "told the backend (mpy-cross included); offer → reset: the transfer and the "
             "check of every hash on the node; reset → birth: the new app's start until its "
             "`done`. Heap free: the node's gc.mem_free() after a collection: in its state "
             "document before the first update (the app as deployed, ota.py not loaded), and "
             "the lowest in its `downloading` statuses (ota.py loaded, a transfer under way).")
    return {"text": text, "cases": out}
