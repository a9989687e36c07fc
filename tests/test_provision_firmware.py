"""`espcam flash-firmware`: the esptool command per chip, checked against esptool itself, and
the messages for the common failures. No board: esptool runs against firmware files put
together by its own elf2image and merge-bin, a port that does not exist, and the virtual
board (MicroPython answering, i.e. a board not in download mode)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import esptool.loader
import pytest
from espcam.provision import ProvisionError
from espcam.provision.firmware import (
    CHIP_IDS,
    DOWNLOAD_MODE,
    NO_ANSWER,
    OFFSETS,
    TX_PATH,
    FlashOptions,
    build_command,
    choose_chip,
    explain,
    flash,
    run_streaming,
)
from esptool.targets import CHIP_DEFS
from provision_helpers import (
    CHIPS,
    PARTITIONS_AT,
    cli,
    make_app_image,
    make_firmware,
    partition_table,
)


def image_info_chip(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.search(r"Chip ID: \d+ \(([^)]+)\)", out).group(1)


def test_offsets_and_chip_ids_are_esptools_own():
    # The chips flash-firmware offers are exactly those of the table, and for each the flash
    # offset and image chip id are what esptool itself uses for that chip.
    assert set(OFFSETS) == set(CHIPS) == set(CHIP_IDS.values())
    for chip, offset in OFFSETS.items():
        assert offset == CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET, chip
    for chip_id, chip in CHIP_IDS.items():
        assert chip_id == CHIP_DEFS[chip].IMAGE_CHIP_ID, chip


@pytest.mark.parametrize("chip", CHIPS)
def test_chip_and_offset_follow_the_firmware_file(tmp_path, chip):
    fw = make_firmware(tmp_path, chip)
    # What esptool reads from the file is what flash-firmware decides from it.
    assert image_info_chip(fw).lower().replace("-", "") == chip
    opts = FlashOptions(port="/dev/ttyUSB9", firmware=fw)
    assert choose_chip(opts) == chip
    cmd = build_command(opts, chip)
    offset = hex(CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET)
    assert cmd[cmd.index("--chip") + 1] == chip
    assert cmd[-2:] == [offset, str(fw)]
    assert cmd.index("write-flash") < cmd.index("--erase-all") < cmd.index(offset)


@pytest.mark.parametrize("erase", [True, False], ids=["erase", "no-erase"])
@pytest.mark.parametrize("chip", CHIPS)
def test_esptool_parses_every_command_and_reports_the_missing_port(tmp_path, chip, erase):
    # esptool's own parser takes every option of the command (a bad one stops it with a usage
    # error before it touches the port); then it fails on the port, and that is what the user
    # is told.
    fw = make_firmware(tmp_path, chip)
    port = str(tmp_path / "ttyUSB0")
    opts = FlashOptions(port=port, firmware=fw, erase=erase)
    cmd = build_command(opts, chip)
    assert ("--erase-all" in cmd) is erase
    code, out = run_streaming(cmd, echo=False)
    assert code != 0
    assert "usage" not in out.lower() and "no such option" not in out.lower()
    assert f"Could not open {port}" in out
    assert explain(out, port, chip).startswith(f"there is no serial port {port}")


def test_cli_reports_no_port_without_a_traceback(tmp_path, capsys, monkeypatch):
    fw = make_firmware(tmp_path, "esp32")
    monkeypatch.delenv("ESPCAM_PORT", raising=False)
    assert cli("flash-firmware", "--firmware", str(fw)) == 1
    err = capsys.readouterr().err
    assert "give --port" in err and "Traceback" not in err
    assert cli("flash-firmware", "--port", str(tmp_path / "nope"), "--firmware", str(fw)) == 1
    err = capsys.readouterr().err
    assert f"there is no serial port {tmp_path / 'nope'}" in err and "Traceback" not in err


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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
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


def esptool_says(*parts: str) -> str:
    """A fatal error as esptool 5 prints it, after checking that esptool's own source still
    has that wording (each part is one string literal there; these failures need a board)."""
    source = inspect.getsource(esptool.loader)
    for part in parts:
        assert f'"{part}"' in source, f"esptool no longer says {part!r}"
    return "ERROR: A fatal error occurred: Failed to connect to ESP32: " + "".join(parts)


def test_connection_failures_point_at_their_own_cause():
    # Download mode seen, but esptool's bytes do not reach the board: wiring, not GPIO0.
    tx = esptool_says(
        "Download mode successfully detected, but getting no sync reply: ",
        "The serial TX path seems to be down.",
    )
    assert explain(tx, "/dev/x", "esp32") == TX_PATH
    assert "U0R" in TX_PATH and "U0T" in TX_PATH and "GND" in TX_PATH
    assert "download mode:" not in TX_PATH and "tie GPIO0" not in TX_PATH
    # Nothing at all came back: download mode, wiring or power.
    silent = esptool_says("No serial data received.")
    assert explain(silent, "/dev/x", "esp32") == NO_ANSWER
    assert all(w in NO_ANSWER for w in ("GPIO0", "U0R", "GND", "5 V", "500 mA"))
    # The ROM printed its boot log: the board booted normally, GPIO0 was not low.
    boot = esptool_says("Wrong boot mode detected ({})! ", "The chip needs to be in download mode.")
    assert explain(boot.format("0x13"), "/dev/x", "esp32") == DOWNLOAD_MODE


def test_wrong_chip_is_caught_before_flashing_or_from_esptool(tmp_path):
    fw = make_firmware(tmp_path, "esp32")
    with pytest.raises(ProvisionError, match="built for esp32, not esp32s3"):
        choose_chip(FlashOptions(port="/dev/x", firmware=fw, chip="esp32s3"))
    # What esptool 5 prints when the connected chip is another one.
    said = esptool_says("Wrong chip argument?").replace(
        "Failed to connect to ESP32: ", "This chip is ESP32-S3, not ESP32. "
    )
    assert 'f"This chip is {chip_type}, not {self.CHIP_NAME}. "' in inspect.getsource(
        esptool.loader
    )
    msg = explain(said, "/dev/x", "esp32")
    assert msg.startswith("the board is not an esp32") and "ESP32-S3" in msg


def test_files_that_are_not_firmware_are_refused(tmp_path):
    junk = tmp_path / "firmware.bin"
    junk.write_bytes(b"<html>not found</html>" * 4)
    with pytest.raises(ProvisionError, match="not an ESP32 firmware image"):
        choose_chip(FlashOptions(port="/dev/x", firmware=junk))
    with pytest.raises(ProvisionError, match="does not exist"):
        choose_chip(FlashOptions(port="/dev/x", firmware=tmp_path / "missing.bin"))


@pytest.mark.parametrize("chip", ["esp32", "esp32s3"])
def test_an_app_image_alone_is_refused(tmp_path, chip, capsys):
    # A MicroPython .app-bin starts with the image magic too, but written at the bootloader's
    # offset it never boots: no partition table at 0x8000.
    app = make_app_image(tmp_path, chip)
    assert image_info_chip(app).lower().replace("-", "") == chip  # esptool takes it as an image
    assert cli("flash-firmware", "--port", "/dev/x", "--firmware", str(app)) == 1
    err = capsys.readouterr().err
    assert "no partition table at flash address 0x8000" in err and ".app-bin" in err
    # The same app with a partition table where the chip's offset puts it is accepted.
    full = bytearray(app.read_bytes())
    at = PARTITIONS_AT - OFFSETS[chip]
    full += b"\xff" * (at - len(full)) + partition_table()
    app.write_bytes(full)
    assert choose_chip(FlashOptions(port="/dev/x", firmware=app)) == chip
