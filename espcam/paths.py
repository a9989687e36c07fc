"""Where the files that are not Python modules of this interpreter live: the node app (run by
MicroPython, copied onto boards) in a checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def node_app() -> Path:
    """The node app folder (boot.py, main.py, lib/): `espcam/node/` in an installed wheel,
    `node/` beside `espcam/` in a checkout."""
    for cand in (_HERE / "node", _HERE.parent / "node"):
        if (cand / "boot.py").is_file():
            return cand
    raise FileNotFoundError(f"the node app is missing: no boot.py in {_HERE / 'node'} nor in "
                            f"{_HERE.parent / 'node'}")
