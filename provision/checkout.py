"""The espcam checkout the board tools run from, if they run from one.

In a checkout (an editable install, or the source on PYTHONPATH) this package is provision/ and
the folder above it is the repository, with the broker's files in deploy/mosquitto/ and node
configs in deploy/nodes/. Installed from a wheel, the folder above is the installed espcam
package, which has neither: the tools then want those paths given, and say so.
"""

from __future__ import annotations

from pathlib import Path

_ABOVE = Path(__file__).resolve().parent.parent


def checkout_root() -> Path | None:
    """The repository's folder, or None when espcam is installed."""
    return _ABOVE if (_ABOVE / "pyproject.toml").is_file() else None
