"""`espcam console`, and what `console` and `deploy` say about a port they cannot open.

mpremote says "failed to access PORT (it may be in use by another program)" whatever the cause;
espcam opens the port first, as mpremote does, and names the cause. The console itself runs in
a pseudo-terminal against the virtual board, the way a user's terminal would run it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
import serial
from provision_helpers import CLI_CODE, ROOT, cli, cli_process
from vboard import VirtualBoard

DEPLOY = ["--node-id", "cam-p", "--wifi-ssid", "home", "--broker", "127.0.0.1:1883", "--no-wait"]
COMMANDS = {"console": [], "deploy": DEPLOY}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_port_is_named_with_the_ports_there_are(tmp_path, command, capsys):
    port = tmp_path / "ttyUSB0"
    assert cli(command, "--port", str(port), *COMMANDS[command]) == 1
    err = capsys.readouterr().err
    assert f"there is no serial port {port}" in err and "serial ports" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_port_another_program_holds_is_reported_as_busy(tmp_path, command, capsys):
    board = VirtualBoard(tmp_path / "vb").start()
    # Another program has the port, locked the way mpremote, esptool and Thonny lock it.
    other = serial.serial_for_url(board.port, exclusive=True)
    try:
        assert cli(command, "--port", board.port, *COMMANDS[command]) == 1
    finally:
        other.close()
        board.stop()
    err = capsys.readouterr().err
    assert f"{board.port} is in use by another program" in err
    assert board.boots == 1  # neither command got to the board: deploy would have reset it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
@pytest.mark.parametrize("command", COMMANDS)
def test_permission_denied_names_the_group(tmp_path, command):
    # A port this user may not open: espcam run as `nobody` on a root-only file.
    port = tmp_path / "ttyUSB0"
    port.write_bytes(b"")
    port.chmod(0o600)
    tmp_path.chmod(0o755)
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    proc = cli_process(command, "--port", str(port), *COMMANDS[command], prefix=drop, timeout=60)
    assert proc.returncode == 1
    assert f"permission denied on {port}" in proc.stderr and "dialout" in proc.stderr
    assert "in use" not in proc.stderr and "Traceback" not in proc.stderr


class Terminal:
    """The user's side of a pseudo-terminal: what the console shows, read in order."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.shown = bytearray()
        self.pos = 0  # everything before this was matched by an earlier expect()

    def expect(self, want: bytes, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        while want not in self.shown[self.pos :]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {want!r} on the console: {bytes(self.shown)!r}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.shown += os.read(self.fd, 4096)
                except OSError:  # the other side closed
                    raise AssertionError(f"console closed: {bytes(self.shown)!r}") from None
        self.pos = self.shown.index(want, self.pos) + len(want)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)


def test_console_shows_the_running_app_and_gives_its_repl(tmp_path):
    board = VirtualBoard(tmp_path / "vb")
    # An app that logs, as the node's does.
    (board.fs / "main.py").write_text(
        "import time\nn = 0\nwhile True:\n    n += 1\n    print('app log line', n)\n"
        "    time.sleep(0.2)\n"
    )
    board.start()
    fd, child_side = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_CODE, "console", "--port", board.port],
        stdin=child_side,
        stdout=child_side,
        stderr=child_side,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )
    os.close(child_side)
    term = Terminal(fd)
    try:
        term.expect(b"Ctrl-] to leave")
        term.expect(b"app log line")  # the running app's output, live
        term.type(b"\x03")  # Ctrl-C stops the app: the REPL answers
        term.expect(b"KeyboardInterrupt")
        term.expect(b">>> ")
        term.type(b"print(6 * 7)\r")
        term.expect(b"42")
        term.type(b"\x1d")  # Ctrl-] leaves
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(fd)
        board.stop()
    assert board.boots == 1  # attaching did not reset the board
