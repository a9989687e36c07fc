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

# Current draw of an AI-Thinker ESP32-CAM at its 5 V pin (estimates; sources in
# docs/benchmarks.md, item 2):
ACTIVE_MA = 190.0   # awake, Wi-Fi on, no flash: 190 mA measured (cicciocb.com forum, 2021)
SLEEP_MA = 5.0      # deep sleep, stock board: 4.4 mA (same post), "more than 5 mA" (time4ee.com)
SLEEP_MA_MOD = 0.5  # LDO swapped and camera supply cut (time4ee.com; dimhoff/ESP32-CAM_Interval)
BATTERY_MAH_5V = 3000 * 3.7 / 5 * 0.85  # one 3000 mAh 18650 through an 85 % boost to 5 V
BOOT_MS = 300       # ROM bootloader + MicroPython start before main.py after a deep-sleep wake
WIFI_REAL_MS = (700, 2500)  # association + DHCP on a home AP: fast (static IP) … typical

SECTIONS = ("camera_init", "wifi", "broker_connect", "state", "capture", "crc", "publish",
            "wdt_feed", "ack_wait")
# The same sections in the run of 2026-11-24 (docs/benchmarks.md before the fixes: Nagle on,
# umqtt's publish per chunk, a 100 ms poll before the duty-cycle sleep). Its "state" row was
# the sum of both state documents and its "other" row short by the second one; here the second
# is moved to "goodbye", where it was sent.
BEFORE = {"camera_init": 1.1, "wifi": 300.1, "broker_connect": 87.5, "state": 44.0,
          "capture": 0.3, "crc": 0.2, "publish": 3.7, "ack_wait": 41.1,
          "goodbye (state, `sleeping`, DISCONNECT)": 88.7,
          "other (imports, config, RTC, main loop)": 109.0, "awake": 675.6}


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
    """Per boot: section -> ms (summed when a section runs twice), 'sleep_call' and
    'goodbye_start' as ms since main.py started. The state document Node.sleep publishes is
    part of 'goodbye', so 'state' counts only the calls before Node.sleep began."""
    boots = []
    for part in log.split("=== simulator: boot")[1:]:
        rows = [(m.group(1), int(m.group(2)), int(m.group(3)))
                for m in re.finditer(r"^bench: (\w+) (-?\d+) (-?\d+)$", part, re.M)]
        d: dict[str, float] = {}
        for name, start, _ in rows:
            if name in ("sleep_call", "goodbye_start"):
                d[name] = start / 1000
        bye = d.get("goodbye_start", float("inf")) * 1000
        for name, start, dur in rows:
            if name in ("sleep_call", "goodbye_start") or name == "state" and start >= bye:
                continue
            d[name] = d.get(name, 0) + dur / 1000
        boots.append(d)
    return boots


def sections(log: str) -> tuple[float, dict[str, float], int]:
    """(ms from main.py to deepsleep(), ms per section, wakes) averaged over the timer wakes."""
    boots = [b for b in parse(log) if "sleep_call" in b]
    wakes = boots[1:] or boots  # boot 1 is a power-on (NTP, id block reservation)

    def mean(k: str) -> float:
        return sum(b.get(k, 0) for b in wakes) / len(wakes)

    awake = mean("sleep_call")
    parts = {k: mean(k) for k in SECTIONS}
    parts["goodbye (state, `sleeping`, DISCONNECT)"] = awake - mean("goodbye_start")
    parts["other (imports, config, RTC, main loop)"] = awake - sum(parts.values())
    return awake, parts, len(wakes)


def battery(awake_s: float, sleep_ma: float) -> tuple[float, float]:
    avg = (ACTIVE_MA * awake_s + sleep_ma * (PERIOD - awake_s)) / PERIOD
    return avg, BATTERY_MAH_5V / avg / 24


def run(quick: bool) -> dict[str, Any]:
    from espcam.sim.node import SimNode

    work = Path(tempfile.mkdtemp(prefix="espcam-bench-duty-"))
    cycles = 3 if quick else 6
    measured = {}
    # "direct": the node talks to the broker directly (proxy=False), as a board on Wi-Fi does.
    # "relay": through the simulator's LinkProxy (SimNode's default, for Wi-Fi loss tests),
    # which sets TCP_NODELAY on both its sockets since a057350; "relay_nagle": the same relay
    # with that undone (its `_no_delay` made a no-op in this process), as it was before.
    from confirmer import Confirmer  # tests/confirmer.py: the backend's part of protocol v2
    from espcam.sim import linkproxy

    for mode in ("direct", "relay", "relay_nagle"):
        d = work / mode
        broker = Broker(d / "broker").start()
        # Confirms each frame as it arrives, as the backend does once it has stored it: a node
        # with awake 0 sleeps before the confirmation and finds it queued at its next wake.
        confirmer = Confirmer(broker.host, broker.port, auto=True)
        no_delay = linkproxy._no_delay
        if mode == "relay_nagle":
            linkproxy._no_delay = lambda s: None
        try:
            node = SimNode("duty-1", d / "node", broker.host, broker.port,
                           config={"sleep_interval": 2, "awake": 0, "interval": 0,
                                   "pir_pin": None},
                           node_src=node_src(d), proxy=mode != "direct")
            node.start()
            node.wait_for(lambda n=node: n.log().count("bench: sleep_call") >= cycles,
                          60 + 10 * cycles, f"{cycles} duty cycles")
            node.stop()
            measured[mode] = sections(node.log())
        finally:
            linkproxy._no_delay = no_delay
            confirmer.close()
            broker.stop()
    awake, parts, nwakes = measured["direct"]
    p_awake, p_parts, _ = measured["relay"]
    n_awake, n_parts, _ = measured["relay_nagle"]
    rows = [[k, f"{v:.1f}", f"{100 * v / awake:.0f} %",
             "" if k not in BEFORE else f"{BEFORE[k]:.1f}", f"{p_parts[k]:.1f}",
             f"{n_parts[k]:.1f}"]
            for k, v in parts.items()]
    rows.append(["**wake to deepsleep() (simulated)**", f"**{awake:.1f}**", "100 %",
                 f"{BEFORE['awake']:.1f}", f"**{p_awake:.1f}**", f"{n_awake:.1f}"])
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
            f"~45 KB, broker on loopback. \"before\": the run of 2026-11-24 (Nagle on, umqtt's "
            f"publish per chunk, 100 ms poll before the sleep); its state row (88.0 ms) held "
            f"both state documents and is halved here, and its other row (65.0) was short by "
            f"the second one, added here; its publish row included the watchdog feeds. The node "
            f"talks to the broker directly (SimNode proxy=False), as a board on Wi-Fi does; "
            f"the last two columns are the same node through the simulator's relay "
            f"(sim/linkproxy.py, SimNode's default), as shipped (TCP_NODELAY on both its "
            f"sockets) and with its TCP_NODELAY undone (Nagle on, as before a057350):\n\n"
            + table(["section", "ms", "share", "ms before", "ms via sim relay",
                     "via sim relay, Nagle on"], rows)
            + "\n\nA frame is confirmed (tests/confirmer.py, as the backend does once it has "
            "stored it); with `awake` 0 the node sleeps before the confirmation and finds it "
            "queued at its next wake, and with more it sleeps as soon as the confirmation "
            "arrives, so the `awake` rows below are the longest such a wake can take."
            + f"\n\nEstimated battery life at one frame every {PERIOD // 60} min "
            f"(awake {ACTIVE_MA:.0f} mA, deep sleep {SLEEP_MA:g} mA stock / "
            f"{SLEEP_MA_MOD:g} mA modified board, {BATTERY_MAH_5V:.0f} mAh at 5 V; the "
            f"simulated Wi-Fi time replaced by the real-board estimate, plus {BOOT_MS} ms "
            f"boot):\n\n"
            + table(["Wi-Fi", "`awake` setting", "awake s/frame", "avg mA", "days (stock)",
                     "days (modified)"], est))
    return {"text": text, "parts": parts, "awake_ms": awake, "wakes": nwakes,
            "via_relay": p_parts, "via_relay_awake_ms": p_awake,
            "via_relay_nagle": n_parts, "via_relay_nagle_awake_ms": n_awake,
            "estimates": est, "when": time.time()}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
