"""`espcam serve` with TCP_NODELAY on its broker socket: a candidate fix measured by bench
item 3 without editing backend/ (paho-mqtt leaves Nagle on). Same arguments as `espcam`."""

from __future__ import annotations

import socket
import sys

_orig = socket.create_connection


def _create_connection(*args, **kwargs):
    s = _orig(*args, **kwargs)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


socket.create_connection = _create_connection

if __name__ == "__main__":
    from backend.cli import main

    sys.exit(main(sys.argv[1:]))
