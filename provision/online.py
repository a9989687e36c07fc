"""The last step of a deploy: reset the board, wait for the node's birth message while reading
its console, and say either that it is online (with its app version, firmware and address) or,
from what the console showed, why it is not."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from espcam.provision.board import Board
from espcam.provision.watch import BirthWatch, ConsoleTail

# Console lines after which the node will not come online by itself: no use waiting longer.
FATAL_CONSOLE = ("CONFIG ERROR", "espcam: crashed", "Traceback (most recent call last)")

# How a node's console says that the broker refused its user or password: the CONNACK codes 4
# and 5 in the words of the node's MQTT client (node/lib/espcam/mqtt.py).
REFUSED_LOGIN = ("bad user name or password", "not authorized")

Say = Callable[[str], None]


def reset_and_watch(
    board: Board, watch: BirthWatch, cfg: dict[str, Any], wait: float, say: Say
) -> int:
    """0 as soon as the node's birth arrives; 1 with the diagnosis and the console's last
    lines after `wait` seconds without one, or at once when the console shows a fatal error."""
    brk, prefix, node = cfg["broker"], cfg.get("prefix", "espcam"), cfg["node_id"]
    where = f"{brk['host']}:{brk.get('port', 1883)}"
    console = ConsoleTail(board.port)
    try:
        watch.arm()
        board.reset()
        console.start()
        say(f"reset; waiting up to {wait:.0f} s for {prefix}/{node}/availability = online")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if watch.wait_online(0.5):
                state = watch.wait_state(5)
                say(f"{node} is online on {where}" + state_words(state))
                return 0
            text = console.text()
            if any(s in text for s in FATAL_CONSOLE):
                time.sleep(1)  # let the rest of the message arrive
                break
        say(f"FAILED: {node} did not come online on {where}: " + diagnose(console.text(), cfg))
        tail = console.tail()
        if tail:
            say("the board's console said:")
            for line in tail:
                say("  | " + line)
        return 1
    finally:
        console.stop()


def state_words(state: bytes | None) -> str:
    try:
        d = json.loads(state or b"")
    except ValueError:
        return ""
    parts = [f"{k} {d[k]}" for k in ("app", "fw", "ip") if d.get(k)]
    return " (" + ", ".join(parts) + ")" if parts else ""


def diagnose(text: str, cfg: dict[str, Any]) -> str:
    """Why a node did not come online, from what its console printed."""
    if "CONFIG ERROR" in text:
        return "the node rejected its config.json (see below)"
    if "Traceback" in text:
        return "the app crashed (see below)"
    if "wifi up" not in text and "espcam:" in text:
        return (
            f"the node did not join Wi-Fi {cfg['wifi']['ssid']!r}: check the name and password "
            "(the ESP32 only sees 2.4 GHz networks)"
        )
    if "connect failed" in text:
        if any(s in text for s in REFUSED_LOGIN):
            return (
                "the node joined Wi-Fi but the broker refused its login: check its user and "
                "password against the broker's password file (`espcam provision`), and that "
                "the broker has read that file since (restart it, or SIGHUP)"
            )
        return (
            "the node joined Wi-Fi but did not get through to the broker: check the broker "
            "address as seen from the node (not localhost) and that the broker runs"
        )
    if not text.strip():
        return "the board printed nothing: press its reset button, check power (5 V, 500 mA)"
    return "no birth message in time"
