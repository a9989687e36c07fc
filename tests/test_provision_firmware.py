"""`espcam flash-firmware`: the esptool command per chip, checked against esptool itself, and
the messages for the common failures. No board: esptool runs against firmware files made by
its own elf2image, a port that does not exist, and the virtual board (MicroPython answering,
i.e. a board not in download mode)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from provision_helpers import cli, make_firmware

from provision import ProvisionError
from provision.firmware import (
    DOWNLOAD_MODE,
    FlashOptions,
    build_command,
    choose_chip,
    explain,
    flash,
    run_streaming,
)

OFFSET = {"esp32": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0"}


def image_info_chip(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.search(r"Chip ID: \d+ \(([^)]+)\)", out).group(1)


@pytest.mark.parametrize("chip", ["esp32", "esp32s3", "esp32c3"])
def test_chip_and_offset_follow_the_firmware_file(tmp_path, chip):
    fw = make_firmware(tmp_path, chip)
    # What esptool reads from the file is what flash-firmware decides from it.
    assert image_info_chip(fw).lower().replace("-", "") == chip
    opts = FlashOptions(port="/dev/ttyUSB9", firmware=fw)
    assert choose_chip(opts) == chip
    cmd = build_command(opts, chip, major=5)
    assert cmd[cmd.index("--chip") + 1] == chip
    assert cmd[-2:] == [OFFSET[chip], str(fw)]
    assert cmd.index("write-flash") < cmd.index("--erase-all") < cmd.index(OFFSET[chip])
    assert "write_flash" in build_command(opts, chip, major=4)


@pytest.mark.parametrize("major", [5, 4])
def test_esptool_accepts_the_command_and_reports_a_missing_port(tmp_path, major, capsys):
    # esptool 5 still takes v4's names; either way it gets as far as opening the port.
    fw = make_firmware(tmp_path, "esp32")
    opts = FlashOptions(port=str(tmp_path / "ttyUSB0"), firmware=fw, erase=False)
    code, out = run_streaming(build_command(opts, "esp32", major=major), echo=False)
    assert code != 0
    assert "no such option" not in out.lower() and "usage" not in out.lower()
    msg = explain(out, opts.port, "esp32")
    assert msg.startswith(f"cannot open {opts.port}")


def test_cli_reports_no_port_without_a_traceback(tmp_path, capsys, monkeypatch):
    fw = make_firmware(tmp_path, "esp32")
    monkeypatch.delenv("ESPCAM_PORT", raising=False)
    assert cli("flash-firmware", "--firmware", str(fw)) == 1
    err = capsys.readouterr().err
    assert "give --port" in err and "Traceback" not in err
    assert cli("flash-firmware", "--port", str(tmp_path / "nope"), "--firmware", str(fw)) == 1
    err = capsys.readouterr().err
    assert f"cannot open {tmp_path / 'nope'}" in err and "Traceback" not in err


def test_a_board_running_micropython_is_not_in_download_mode(tmp_path, capsys):
    from vboard import VirtualBoard

    fw = make_firmware(tmp_path, "esp32")
    board = VirtualBoard(tmp_path / "vb").start()
    try:
        with pytest.raises(ProvisionError) as e:
            flash(FlashOptions(port=board.port, firmware=fw), echo=False)
    finally:
        board.stop()
    assert str(e.value) == DOWNLOAD_MODE
    assert "GPIO0" in DOWNLOAD_MODE and "GND" in DOWNLOAD_MODE and "reset" in DOWNLOAD_MODE


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop privileges"
)
def test_permission_denied_names_the_fix(tmp_path):
    # A port this user may not open: esptool run as `nobody` on a root-only file.
    port = tmp_path / "ttyUSB0"
    port.write_bytes(b"")
    port.chmod(0o600)
    tmp_path.chmod(0o755)
    fw = make_firmware(tmp_path, "esp32")
    fw.chmod(0o644)
    cmd = build_command(FlashOptions(port=str(port), firmware=fw), "esp32")
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    proc = subprocess.run(drop + cmd, capture_output=True, text=True)
    assert proc.returncode != 0
    msg = explain(proc.stdout + proc.stderr, str(port), "esp32")
    assert msg.startswith(f"permission denied on {port}") and "dialout" in msg


def test_wrong_chip_is_caught_before_flashing_or_from_esptool(tmp_path):
    fw = make_firmware(tmp_path, "esp32")
    with pytest.raises(ProvisionError, match="built for esp32, not esp32s3"):
        choose_chip(FlashOptions(port="/dev/x", firmware=fw, chip="esp32s3"))
    # What esptool 5 prints when the connected chip is another one (needs a board to produce).
    said = "A fatal error occurred: This chip is ESP32-S3, not ESP32. Wrong --chip argument?"
    assert explain(said, "/dev/x", "esp32").startswith("the board is not an esp32")


def test_files_that_are_not_firmware_are_refused(tmp_path):
    junk = tmp_path / "firmware.bin"
    junk.write_bytes(b"<html>not found</html>" * 4)
    with pytest.raises(ProvisionError, match="not an ESP32 firmware image"):
        choose_chip(FlashOptions(port="/dev/x", firmware=junk))
    with pytest.raises(ProvisionError, match="does not exist"):
        choose_chip(FlashOptions(port="/dev/x", firmware=tmp_path / "missing.bin"))
