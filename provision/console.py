"""`espcam console`: the board's console (its REPL and the app's log) through mpremote."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from espcam.provision.board import check_port, mpremote_command


def console_command(port: str) -> list[str]:
    # `resume`: attach without a soft reset, so a running app keeps running and its log shows.
    return [*mpremote_command(), "connect", port, "resume", "repl"]


def console(port: str, say: Callable[[str], None] = print) -> int:
    cmd = console_command(port)  # says so if mpremote is missing, before the port is looked at
    # mpremote says only "failed to access PORT" whatever the cause: find out first.
    check_port(port)
    say(f"console on {port}: Ctrl-] to leave, Ctrl-C stops the app (reset to restart it)")
    return subprocess.call(cmd)
