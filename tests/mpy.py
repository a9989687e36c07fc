"""Run scripts on the real MicroPython unix port with the node's library on its path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
NODE_LIB = ROOT / "node" / "lib"
SCRIPTS = Path(__file__).resolve().parent / "node_scripts"


def run_mpy(script: str, *args: str, heapsize: str | None = None, cwd: Path | None = None,
            timeout: float = 120, extra_path: list[Path] | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(MICROPYTHON)]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += [str(SCRIPTS / script), *args]
    path = [*(extra_path or []), NODE_LIB]
    e = dict(os.environ, MICROPYPATH=":".join(str(p) for p in path), **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=e)


def lines_ok(proc: subprocess.CompletedProcess) -> list[str]:
    """The script's result lines; fails loudly if it crashed or did not finish."""
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out and out[-1] == "done", proc.stdout + proc.stderr
    return out[:-1]
