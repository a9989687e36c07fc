"""Shared by the tests of the provisioning commands (tests/test_provision_*.py)."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from espcam import provision  # noqa: E402

# Where code of each chip loads (an IRAM address), and its ELF machine: Xtensa or RISC-V.
ELF_TARGETS = {
    "esp32": (94, 0x40080000),
    "esp32s2": (94, 0x40020000),
    "esp32s3": (94, 0x40370000),
    "esp32c3": (243, 0x40380000),
    "esp32c6": (243, 0x40800000),
}
CHIPS = list(ELF_TARGETS)
# Flash layout of a MicroPython firmware file: bootloader at the chip's offset, partition table
# at 0x8000, the app at 0x10000.
PARTITIONS_AT, APP_AT = 0x8000, 0x10000
# `espcam ARGS` in a child process (for tests that need another user, a terminal, or a cwd).
CLI_CODE = (
    "import argparse, sys; from espcam import provision; "
    "p = argparse.ArgumentParser(prog='espcam'); "
    "provision.add_arguments(p.add_subparsers(dest='command', required=True)); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


# The Wi-Fi of the virtual boards the deploy tests use.
WIFI = {"ssid": "espcam-test", "password": "test-wifi-pw"}


def deploy_args(port: str, node: str, broker: str) -> list[str]:
    """`espcam deploy` of a new node with WIFI to the board on `port`."""
    return ["deploy", "--port", port, "--node-id", node, "--wifi-ssid", WIFI["ssid"],
            "--wifi-password", WIFI["password"], "--broker", broker]  # fmt: skip


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


def esptool(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "esptool", *args], check=True, capture_output=True)


def make_app_image(folder: Path, chip: str, name: str = "app") -> Path:
    """An ESP image made by esptool's own elf2image for `chip`: what a MicroPython .app-bin
    (an app image alone, for OTA updates) is."""
    machine, addr = ELF_TARGETS[chip]
    elf = folder / f"{chip}-{name}.elf"
    out = folder / f"{chip}-{name}.bin"
    write_elf(elf, machine, addr)
    esptool("--chip", chip, "elf2image", "-o", str(out), str(elf))
    return out


def partition_table() -> bytes:
    """An ESP-IDF partition table (nvs, phy_init, factory app) as gen_esp32part.py writes it:
    32-byte entries starting AA 50, an MD5 entry, 0xFF up to 0xC00 bytes."""
    rows = [(1, 2, 0x9000, 0x6000, b"nvs"), (1, 1, 0xF000, 0x1000, b"phy_init"),
            (0, 0, APP_AT, 0x1F0000, b"factory")]  # fmt: skip
    table = b"".join(
        struct.pack("<2sBBII16sI", b"\xaa\x50", t, sub, off, size, name, 0)
        for t, sub, off, size, name in rows
    )
    table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table + b"\xff" * (0xC00 - len(table))


def make_firmware(folder: Path, chip: str) -> Path:
    """A full firmware file like MicroPython's .bin: bootloader, partition table and app, put
    together by esptool's own elf2image and merge-bin, starting at the chip's bootloader
    offset (esptool's BOOTLOADER_FLASH_OFFSET)."""
    from esptool.targets import CHIP_DEFS

    start = CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET
    boot = make_app_image(folder, chip, "bootloader")
    app = make_app_image(folder, chip, "app")
    table = folder / "partitions.bin"
    table.write_bytes(partition_table())
    out = folder / f"{chip}.bin"
    parts = [hex(start), str(boot), hex(PARTITIONS_AT), str(table), hex(APP_AT), str(app)]
    esptool("--chip", chip, "merge-bin", "-o", str(out), "--target-offset", hex(start), *parts)
    return out


def cli_process(*argv: str, **kw) -> subprocess.CompletedProcess:
    """Runs `espcam <argv>` in a child process with the provision package of this checkout
    (or of the folder given as root=)."""
    env = dict(kw.pop("env", os.environ), PYTHONPATH=str(kw.pop("root", ROOT)))
    return subprocess.run(
        [*kw.pop("prefix", []), sys.executable, "-c", CLI_CODE, *argv],
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )


def auth_broker_config(passwd: Path) -> str:
    """Broker(extra=...) for a Mosquitto that only lets in the users of `passwd`."""
    return f"password_file {passwd}\n"


SHIPPED_BROKER = ROOT / "deploy" / "mosquitto"
# The settings of the shipped mosquitto.conf that decide who gets in and what each user may do.
AUTH_SETTINGS = ("per_listener_settings", "allow_anonymous", "password_file", "acl_file",
                 "use_username_as_clientid")


def production_broker_config(passwd: Path) -> str:
    """Broker(extra=...) with the authentication of the shipped mosquitto.conf, line for line:
    its password file (here `passwd`), the shipped espcam.acl (copied beside it, where the
    shipped config expects it) and use_username_as_clientid, which follows Broker's listener
    line and so applies to it as in the shipped file."""
    shutil.copy(SHIPPED_BROKER / "espcam.acl", passwd.parent / "espcam.acl")
    lines = [line.replace("/mosquitto/config/", f"{passwd.parent}/")
             for line in (SHIPPED_BROKER / "mosquitto.conf").read_text().splitlines()
             if line.split(" ")[0] in AUTH_SETTINGS]
    missing = set(AUTH_SETTINGS) - {line.split(" ")[0] for line in lines}
    assert not missing, f"the shipped mosquitto.conf no longer sets {missing}"
    return "\n".join(dict.fromkeys(lines)) + "\n"


# Python code that drops the checkout's editable install from the import machinery, so that
# espcam comes from PYTHONPATH alone (an installed_copy) and a module missing there is missing.
FORGET_CHECKOUT = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if not getattr(f, '__module__', '').startswith('__editable__')]; "
)


def installed_command(site: Path, code: str, *argv: str) -> tuple[list[str], dict[str, str]]:
    """(command, environment) running `code` with the espcam installed in `site` only; run it
    outside the checkout (cwd), or the checkout's own folders are importable too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return [sys.executable, "-c", FORGET_CHECKOUT + code, *argv], dict(env, PYTHONPATH=str(site))


def installed_copy(dest: Path) -> Path:
    """espcam laid out in `dest` as its wheel installs it into site-packages, with no checkout
    around it: the packages, package-dir and package-data of pyproject.toml, as setuptools
    reads them (a package's own modules, not its subfolders, plus its data patterns)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in tool["packages"]:
        src = ROOT / tool["package-dir"][package]
        out = dest.joinpath(*package.split("."))
        patterns = ["*.py", *tool.get("package-data", {}).get(package, [])]
        for f in (f for pattern in patterns for f in src.glob(pattern)):
            (out / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out / f.relative_to(src))
    return dest
