"""Shared by the tests of the provisioning commands (tests/test_provision_*.py)."""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `python -m pytest` from the repo root finds the package anyway; plain `pytest` needs this
# until pyproject lists `provision` among the installed packages.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import provision  # noqa: E402

# Where code of each chip loads (an IRAM address), and its ELF machine: Xtensa or RISC-V.
ELF_TARGETS = {"esp32": (94, 0x40080000), "esp32s3": (94, 0x40370000), "esp32c3": (243, 0x40380000)}


def cli(*argv: str) -> int:
    """Runs `espcam <argv>` as the lead's backend/cli.py will: through add_arguments()."""
    parser = argparse.ArgumentParser(prog="espcam")
    provision.add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def write_elf(path: Path, machine: int, addr: int, body: bytes = b"\x00" * 32) -> None:
    """A minimal 32-bit ELF with one executable section, enough for esptool's elf2image."""
    shstr = b"\x00.iram0.text\x00.shstrtab\x00"
    off_text = 52 + 32
    off_shstr = off_text + len(body)
    off_sh = (off_shstr + len(shstr) + 3) & ~3
    head = struct.pack(
        "<4s5B7sHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 0, b"\0" * 7,
        2, machine, 1, addr, 52, off_sh, 0, 52, 32, 1, 40, 3, 2,
    )  # fmt: skip
    prog = struct.pack("<8I", 1, off_text, addr, addr, len(body), len(body), 5, 4)
    text = struct.pack("<10I", 1, 1, 6, addr, off_text, len(body), 0, 0, 4, 0)
    names = struct.pack("<10I", 13, 3, 0, 0, off_shstr, len(shstr), 0, 0, 1, 0)
    data = head + prog + body + shstr
    data += b"\0" * (off_sh - len(data))
    path.write_bytes(data + b"\0" * 40 + text + names)


def make_firmware(folder: Path, chip: str) -> Path:
    """A firmware image made by esptool's own elf2image for `chip`."""
    machine, addr = ELF_TARGETS[chip]
    elf = folder / f"{chip}.elf"
    out = folder / f"{chip}.bin"
    write_elf(elf, machine, addr)
    subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", chip, "elf2image", "-o", str(out), str(elf)],
        check=True,
        capture_output=True,
    )
    return out


def auth_broker_config(passwd: Path) -> str:
    """Broker(extra=...) for a Mosquitto that only lets in the users of `passwd`."""
    return f"password_file {passwd}\n"
