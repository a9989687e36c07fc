"""`espcam flash-firmware`: MicroPython onto the board with esptool.

esptool runs as a subprocess of this same Python (`python -m esptool`), so its own progress
output reaches the console unchanged, and its messages are mapped to what a user should do.
"""

from __future__ import annotations

import codecs
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from provision.board import port_hint
from provision.errors import ProvisionError

# Where the first image of a MicroPython firmware file (its bootloader) goes: the classic ESP32
# and the S2 boot from 0x1000, the newer chips from 0x0.
OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c6": 0x0}
# The chip id in an ESP image's extended header (what `esptool image-info` prints as Chip ID).
CHIP_IDS = {0: "esp32", 2: "esp32s2", 9: "esp32s3", 5: "esp32c3", 13: "esp32c6"}
IMAGE_MAGIC = 0xE9
DEFAULT_BAUD = 460800

DOWNLOAD_MODE = (
    "the board is not in download mode: tie GPIO0 to GND, press the reset button (or unplug "
    "and replug the 5 V), run this again, and remove the jumper afterwards"
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
        return int(metadata.version("esptool").split(".")[0])
    except metadata.PackageNotFoundError:
        raise ProvisionError("esptool is not installed: run ./scripts/setup.sh") from None


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


def choose_chip(opts: FlashOptions) -> str:
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


def build_command(opts: FlashOptions, chip: str, major: int | None = None) -> list[str]:
    """The esptool command line; v5 names, or v4's underscore names for esptool 4.x."""
    major = esptool_major() if major is None else major
    write = "write-flash" if major >= 5 else "write_flash"
    cmd = [sys.executable, "-m", "esptool", "--chip", chip, "--port", opts.port]
    cmd += ["--baud", str(opts.baud), write]
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
        return (
            f"permission denied on {port}: add yourself to the serial port's group (on "
            "Debian/Ubuntu: sudo usermod -aG dialout $USER, then log out and in again)"
        )
    if "could not open" in low or "no such file or directory" in low or "port is busy" in low:
        return (
            f"cannot open {port}: is the USB-serial adapter plugged in, and is no other "
            f"program (a console, Thonny) using it? {port_hint()}"
        )
    if "wrong --chip" in low or ("this chip is" in low and "not" in low):
        return (
            f"the board is not an {chip}: use the firmware for its chip (esptool said: "
            + _fatal_line(output)
            + ")"
        )
    if (
        "failed to connect" in low
        or "no serial data received" in low
        or "wrong boot mode" in low
        or "download mode" in low
    ):
        return DOWNLOAD_MODE
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
