"""Bench item 2: one wake-capture-publish-sleep cycle of the real node on the simulator, split
into sections by ticks_us timers around the node's own functions (bench/mpy/duty_main.py), and
the battery life that awake time implies at one frame every 5 minutes.

The simulator's Wi-Fi association is a stand-in (sim.json wifi_connect_ms) and its network is
loopback, so Wi-Fi and round-trip times here are those of the stand-in; the table also shows the
estimate used for a real board, with its source.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Broker, table

PERIOD = 300  # one frame every 5 minutes

# Current draw of an AI-Thinker ESP32-CAM at its 5 V pin (estimates; see docs/benchmarks.md):
ACTIVE_MA = 190.0   # awake, Wi-Fi on, no flash: 180 mA (AI-Thinker ESP32-CAM spec), 190 measured
SLEEP_MA = 5.0      # deep sleep, stock board: 4.4 to 6 mA (AMS1117 LDO, camera supply)
SLEEP_MA_MOD = 0.5  # deep sleep after the LDO swap and camera power cut people report
BATTERY_MAH_5V = 3000 * 3.7 / 5 * 0.85  # one 3000 mAh 18650 through an 85 % boost to 5 V
BOOT_MS = 300       # ROM bootloader + MicroPython start before main.py after a deep-sleep wake
WIFI_REAL_MS = (700, 2500)  # association + DHCP on a home AP: fast (static IP) … typical


def node_src(work: Path) -> Path:
    src = work / "node_src"
    src.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "node" / "boot.py", src / "boot.py")
    (src / "main.py").write_text(f"REAL_MAIN = {str(ROOT / 'node' / 'main.py')!r}\n"
                                 + (ROOT / "bench" / "mpy" / "duty_main.py").read_text())
    lib = src / "lib"
    if not lib.exists():
        lib.symlink_to(ROOT / "node" / "lib")
    return src


def parse(log: str) -> list[dict[str, float]]:
    """Per boot: section -> ms (sums when a section runs twice), plus 'awake' = sleep_call."""
    boots = []
    for part in log.split("=== simulator: boot")[1:]:
        d: dict[str, float] = {}
        for m in re.finditer(r"^bench: (\w+) (-?\d+) (-?\d+)$", part, re.M):
            name, start, dur = m.group(1), int(m.group(2)), int(m.group(3))
            if name in ("sleep_call", "goodbye_start"):
                d[name] = start / 1000
            else:
                d[name] = d.get(name, 0) + dur / 1000
        boots.append(d)
    return boots


def battery(awake_s: float, sleep_ma: float) -> tuple[float, float]:
    avg = (ACTIVE_MA * awake_s + sleep_ma * (PERIOD - awake_s)) / PERIOD
    return avg, BATTERY_MAH_5V / avg / 24


def run(quick: bool) -> dict[str, Any]:
    from sim.runner import SimNode

    work = Path(tempfile.mkdtemp(prefix="espcam-bench-duty-"))
    cycles = 3 if quick else 6
    keys = ("camera_init", "wifi", "broker_connect", "state", "capture", "crc", "publish",
            "ack_wait")
    results = {}
    for variant, env in (("as shipped", {}), ("TCP_NODELAY (candidate)",
                                              {"BENCH_NODELAY": "1"})):
        vdir = work / variant.split()[0].lower()
        broker = Broker(vdir / "broker").start()
        try:
            node = SimNode("duty-1", vdir / "node", broker.host, broker.port,
                           config={"sleep_interval": 2, "awake": 0, "interval": 0,
                                   "pir_pin": None},
                           node_src=node_src(vdir), env=env)
            node.start()
            node.wait_for(lambda n=node: n.log().count("bench: sleep_call") >= cycles,
                          60 + 10 * cycles, f"{cycles} duty cycles")
            node.stop()
            log = node.log()
        finally:
            broker.stop()
        boots = [b for b in parse(log) if "sleep_call" in b]
        wakes = boots[1:] or boots  # boot 1 is a power-on (NTP, id block reservation)

        def mean(k: str, wakes=wakes) -> float:
            return sum(b.get(k, 0) for b in wakes) / len(wakes)

        awake_v = mean("sleep_call")
        parts_v = {k: mean(k) for k in keys}
        parts_v["goodbye (state, sleeping, DISCONNECT)"] = awake_v - mean("goodbye_start")
        parts_v["other (imports, config, RTC, loop)"] = awake_v - sum(parts_v.values())
        parts_v["**wake to deepsleep() (simulated)**"] = awake_v
        results[variant] = (awake_v, parts_v, len(wakes))
    awake, parts, nwakes = results["as shipped"]
    fixed = results["TCP_NODELAY (candidate)"][1]
    rows = [[k, f"{v:.1f}", f"{100 * v / awake:.0f} %", f"{fixed[k]:.1f}"]
            for k, v in parts.items()]
    sim_wifi = parts["wifi"]
    est = []
    for label, wifi_ms in (("fast AP, static IP", WIFI_REAL_MS[0]),
                           ("typical, DHCP", WIFI_REAL_MS[1])):
        board_s = (awake - sim_wifi + wifi_ms + BOOT_MS) / 1000
        for awake_setting in (0, 5):
            t = board_s + awake_setting
            avg, days = battery(t, SLEEP_MA)
            _, days_mod = battery(t, SLEEP_MA_MOD)
            est.append([label, f"{awake_setting} s", f"{t:.2f}", f"{avg:.2f}", f"{days:.0f}",
                        f"{days_mod:.0f}"])
    text = (f"Mean of {nwakes} timer wakes (sleep_interval 2 s, awake 0), VGA frame "
            f"~45 KB, broker on loopback:\n\n"
            + table(["section", "ms as shipped", "share", "ms with TCP_NODELAY"], rows)
            + f"\n\nEstimated battery life at one frame every {PERIOD // 60} min "
            f"(awake {ACTIVE_MA:.0f} mA, deep sleep {SLEEP_MA:g} mA stock / "
            f"{SLEEP_MA_MOD:g} mA modified board, {BATTERY_MAH_5V:.0f} mAh at 5 V; the "
            f"simulated Wi-Fi time replaced by the real-board estimate, plus {BOOT_MS} ms "
            f"boot):\n\n"
            + table(["Wi-Fi", "`awake` setting", "awake s/frame", "avg mA", "days (stock)",
                     "days (modified)"], est))
    return {"text": text, "parts": parts, "awake_ms": awake, "fixed": fixed,
            "estimates": est, "when": time.time()}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
