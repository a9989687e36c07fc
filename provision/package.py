"""The node app as an update carries it (`espcam ota`): the files `espcam deploy` copies into
lib/espcam/, compiled by the same mpy-cross the same way, but checked against the MicroPython
version the node reports in its state ("fw") instead of one read from a board on a cable.

boot.py and main.py are not part of an update: they choose the app and take the previous one
back when a new one fails (node/boot.py), so only a deploy over USB changes them.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from espcam.provision.deploy import APP_DIR, NODE_SRC
from espcam.provision.errors import ProvisionError


def app_version(node_src: Path = NODE_SRC) -> str:
    text = (Path(node_src) / "lib" / "espcam" / "__init__.py").read_text()
    m = re.search(r'^VERSION\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise ProvisionError(f"{node_src}/lib/espcam/__init__.py has no VERSION")
    return m.group(1)


def mpy_major_for(fw: str) -> int:
    """The .mpy version a MicroPython release loads (py/persistentcode.h): 6 from 1.19 on,
    5 from 1.12 to 1.18. Bytecode from 1.20 on only needs the major version to match."""
    v = tuple(int(x) for x in re.findall(r"\d+", fw)[:2])
    if len(v) < 2 or v < (1, 12):
        raise ProvisionError(f"MicroPython {fw!r}: too old or unknown for compiled updates; "
                             "use --no-compile")
    return 6 if v >= (1, 19) else 5


def app_files(node_src: Path = NODE_SRC, compile: bool = True,
              fw: str | None = None) -> dict[str, bytes]:
    """{path on the board: bytes} of the app's package, lib/espcam/...: .mpy files when
    compiling (for nodes running MicroPython `fw`), else the .py sources as they are."""
    package = Path(node_src) / "lib" / "espcam"
    if not (package / "__init__.py").is_file():
        raise ProvisionError(f"{node_src} is not the node app: lib/espcam/ is missing")
    if not compile:
        return {f"{APP_DIR}/{py.name}": py.read_bytes() for py in sorted(package.glob("*.py"))}
    from espcam.provision.mpy import compile_package, mpy_cross_binary, mpy_cross_version

    if fw is None:
        raise ProvisionError("the node's MicroPython version is not known (no retained state "
                             "from it): wait for it to report, or use --no-compile")
    exe = mpy_cross_binary()
    with tempfile.TemporaryDirectory(prefix="espcam-ota-") as tmp:
        compiled = compile_package(package, Path(tmp), exe, APP_DIR)
        files = {remote: p.read_bytes() for remote, p in compiled.items()}
    want = mpy_major_for(fw)
    made = next(iter(files.values()))[1]
    if made != want:
        raise ProvisionError(
            f"the nodes run MicroPython {fw}, which loads .mpy v{want}, but "
            f"{mpy_cross_version(exe)} writes .mpy v{made}: use --no-compile, or install the "
            "matching mpy-cross")
    return files
