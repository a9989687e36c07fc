"""`espcam flash-firmware`: MicroPython onto the board with esptool.

esptool runs as a subprocess of this same Python (`python -m esptool`), so its own progress
output reaches the console unchanged, and its messages are mapped to what a user should do.
"""

from __future__ import annotations

import codecs
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from espcam.provision.board import GET_TOOLS, open_error, permission_words, port_hint
from espcam.provision.errors import ProvisionError

# Where the first image of a MicroPython firmware file (its bootloader) goes: the classic ESP32
# and the S2 boot from 0x1000, the newer chips from 0x0 (esptool's BOOTLOADER_FLASH_OFFSET).
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
# The chip id in an ESP image's extended header (esptool's IMAGE_CHIP_ID; what
# `esptool image-info` prints as Chip ID).
CHIP_IDS = {0: "esp32", 2: "esp32s2", 9: "esp32s3", 5: "esp32c3", 13: "esp32c6"}
IMAGE_MAGIC = 0xE9
# A full firmware file holds bootloader, partition table and app; the partition table sits at
# flash address 0x8000 on all these chips, and its entries start with these two bytes.
PARTITION_TABLE_ADDR = 0x8000
PARTITION_MAGIC = b"\xaa\x50"
DEFAULT_BAUD = 460800
ESPTOOL_MAJOR = 5  # the command names (write-flash, image-info) and messages used here

DOWNLOAD_MODE = (
    "the board is not in download mode: tie GPIO0 to GND, press the reset button (or unplug "
    "and replug the 5 V), run this again, and remove the jumper afterwards"
)
NO_ANSWER = (
    "the board does not answer esptool. Is it in download mode (GPIO0 tied to GND while you "
    "press reset)? Check the wiring too (adapter TX to U0R, RX to U0T, GND to GND) and the "
    "power (5 V on the 5V pin from a supply good for 500 mA; a weak supply resets the board)"
)
TX_PATH = (
    "the board is in download mode but does not hear esptool: the adapter's TX must go to the "
    "board's U0R (GPIO3) and its RX to U0T (GPIO1), crossed, with GND connected between them; "
    "check those wires and that the adapter's logic level is 3.3 V"
)


@dataclass
class FlashOptions:
    port: str
    firmware: Path
    chip: str = "auto"
    baud: int = DEFAULT_BAUD
    erase: bool = True


def esptool_major() -> int:
    try:
        version = metadata.version("esptool")
    except metadata.PackageNotFoundError:
        raise ProvisionError(f"esptool is not installed ({GET_TOOLS})") from None
    major = int(version.split(".")[0])
    if major < ESPTOOL_MAJOR:
        raise ProvisionError(
            f"esptool {version} is too old (espcam uses esptool 5's commands): "
            f"{GET_TOOLS}, or pip install 'esptool>=5'"
        )
    return major


def image_chip(path: Path) -> str | None:
    """The chip a firmware file is built for, from its image header; None if not recorded."""
    try:
        head = Path(path).read_bytes()[:16]
    except FileNotFoundError:
        raise ProvisionError(f"firmware file {path} does not exist") from None
    if len(head) < 16 or head[0] != IMAGE_MAGIC:
        raise ProvisionError(
            f"{path} is not an ESP32 firmware image (it does not start with the image magic "
            "byte 0xE9); download the .bin for your board from the MicroPython downloads"
        )
    return CHIP_IDS.get(int.from_bytes(head[12:14], "little"))


def check_full_image(path: Path, chip: str) -> None:
    """A firmware file written at the chip's bootloader offset must carry the partition table
    at 0x8000; an app image alone (MicroPython's .app-bin, for OTA updates) has none there and
    would never boot from that offset."""
    at = PARTITION_TABLE_ADDR - OFFSETS[chip]
    with open(path, "rb") as f:
        f.seek(at)
        magic = f.read(2)
    if magic != PARTITION_MAGIC:
        raise ProvisionError(
            f"{path} is not a complete firmware for {chip}: it has no partition table at flash "
            f"address 0x8000 (file offset {hex(at)}). It may be an app-only image (a "
            "MicroPython .app-bin, for over-the-air updates); download the full .bin for your "
            "board"
        )


def choose_chip(opts: FlashOptions) -> str:
    chip = _chip(opts)
    check_full_image(opts.firmware, chip)
    return chip


def _chip(opts: FlashOptions) -> str:
    found = image_chip(opts.firmware)
    if opts.chip == "auto":
        if found is None:
            raise ProvisionError(
                f"cannot tell from {opts.firmware} which chip it is for: give --chip "
                "(esp32 for an ESP32-CAM)"
            )
        return found
    if opts.chip not in OFFSETS:
        raise ProvisionError(f"--chip {opts.chip}: use one of auto, {', '.join(OFFSETS)}")
    if found is not None and found != opts.chip:
        raise ProvisionError(
            f"{opts.firmware} is built for {found}, not {opts.chip}: download the firmware "
            "for your board's chip"
        )
    return opts.chip


def build_command(opts: FlashOptions, chip: str) -> list[str]:
    """The esptool (5.x) command line."""
    esptool_major()
    cmd = [sys.executable, "-m", "esptool", "--chip", chip, "--port", opts.port]
    cmd += ["--baud", str(opts.baud), "write-flash"]
    if opts.erase:
        # Erasing everything also clears an old filesystem, which MicroPython would otherwise
        # mount as is (and old files there could be mistaken for the app).
        cmd.append("--erase-all")
    # esptool verifies what it wrote itself (an MD5 of each region, "Hash of data verified").
    cmd += [hex(OFFSETS[chip]), str(opts.firmware)]
    return cmd


def explain(output: str, port: str, chip: str) -> str:
    """esptool's failure output -> what to do."""
    low = output.lower()
    if "permission denied" in low:
        return permission_words(port)
    if "could not open" in low or "no such file or directory" in low or "port is busy" in low:
        # esptool says "the port is busy or doesn't exist" either way: look at the port.
        return open_error(port) or (
            f"cannot open {port}: is the USB-serial adapter plugged in, and is no other "
            f"program (a console, Thonny) using it? {port_hint()}"
        )
    # esptool 5: "This chip is ESP32-S3, not ESP32. Wrong chip argument?" (4.x: "Wrong --chip
    # argument?").
    if re.search(r"wrong (--)?chip argument", low):
        return (
            f"the board is not an {chip}: use the firmware for its chip (esptool said: "
            + _fatal_line(output)
            + ")"
        )
    # "Download mode successfully detected, but getting no sync reply: The serial TX path
    # seems to be down." The board answers, so GPIO0 is fine: what esptool sends is lost.
    if "tx path" in low:
        return TX_PATH
    # The ROM printed its boot log, not in download mode ("Wrong boot mode detected"), or
    # something other than the ROM bootloader answered (MicroPython running: "Failed to
    # connect to ESP32: Invalid head of packet").
    if "wrong boot mode" in low or ("failed to connect" in low and "invalid head" in low):
        return DOWNLOAD_MODE
    # Nothing came back at all: download mode, wiring or power.
    if "failed to connect" in low or "no serial data received" in low:
        return NO_ANSWER
    if "invalid head of packet" in low or "packet content transfer stopped" in low:
        return (
            "the transfer broke off: try a lower speed (--baud 115200), a shorter USB cable, "
            "and a 5 V supply that can give 500 mA"
        )
    return "esptool failed: " + _fatal_line(output)


def _fatal_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def run_streaming(cmd: list[str], echo: bool = True) -> tuple[int, str]:
    """Runs cmd with its output shown as it comes (esptool's progress), and kept."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    chunks: list[bytes] = []
    # Incremental, so a character split between two reads is not mangled on the console.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = proc.stdout.read1(4096)
        if not data:
            break
        chunks.append(data)
        if echo:
            sys.stdout.write(decoder.decode(data))
            sys.stdout.flush()
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def flash(opts: FlashOptions, say=print, echo: bool = True) -> int:
    chip = choose_chip(opts)
    cmd = build_command(opts, chip)
    say(
        f"flashing {opts.firmware} ({chip}) at {hex(OFFSETS[chip])} on {opts.port}"
        + (", erasing the whole flash first" if opts.erase else "")
    )
    say("$ " + " ".join(cmd[1:]).replace("-m esptool", "esptool", 1))
    code, out = run_streaming(cmd, echo)
    if code != 0:
        raise ProvisionError(explain(out, opts.port, chip))
    verified = "verified" in out.lower()
    say(
        "done: MicroPython is on the board"
        + (" (esptool verified the written data)" if verified else "")
        + "; next: espcam deploy --port "
        + opts.port
    )
    return 0
