"""`espcam console`: the board's console (its REPL and the app's log) through mpremote."""

from __future__ import annotations

import subprocess

from provision.board import mpremote_command


def console_command(port: str) -> list[str]:
    # `resume`: attach without a soft reset, so a running app keeps running and its log shows.
    return [*mpremote_command(), "connect", port, "resume", "repl"]


def console(port: str, say=print) -> int:
    say(f"console on {port}: Ctrl-] to leave, Ctrl-C stops the app (reset to restart it)")
    return subprocess.call(console_command(port))
