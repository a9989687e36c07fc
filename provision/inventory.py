"""What is on the board, and what a deploy has to change: the board's MicroPython version and
.mpy support, the SHA-256 of the files the deploy would write, the contents of the folders the
app owns, its config.json; and the plan made from that (copy, unchanged, remove)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from espcam.provision.board import MARK, Board

_INFO = """
import sys, os, json
try:
    import hashlib, binascii
except ImportError:
    hashlib = None
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    if hashlib is None:
        f.close()
        return '?'
    d = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        d.update(memoryview(b)[:n])
    f.close()
    return binascii.hexlify(d.digest()).decode()
for _d in %(mkdirs)r:
    try:
        os.mkdir(_d)
    except OSError:
        pass
_r = {'v': [str(x) for x in sys.implementation.version[:3]],
      'mpy': getattr(sys.implementation, '_mpy', getattr(sys.implementation, 'mpy', None)),
      'platform': sys.platform,
      'h': {}, 'ls': {}, 'cfg': None}
for _p in %(paths)r:
    _r['h'][_p] = _h(_p)
for _d in %(dirs)r:
    try:
        _r['ls'][_d] = os.listdir(_d)
    except OSError:
        _r['ls'][_d] = []
if %(want_cfg)r:
    try:
        with open('config.json') as _f:
            _r['cfg'] = _f.read()
    except OSError:
        pass
print(%(mark)r + json.dumps(_r))
"""


@dataclass
class Plan:
    copy: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)


def board_info(board: Board, paths: list[str], dirs: list[str], want_cfg: bool) -> dict[str, Any]:
    """{'v': version parts, 'mpy': sys.implementation._mpy, 'platform', 'h': {path: sha256 or
    None}, 'ls': {dir: names}, 'cfg': config.json's text}. The folders in `dirs` and their
    parents are made where missing."""
    parts = [d.split("/") for d in dirs]
    mkdirs = sorted({"/".join(p[: i + 1]) for p in parts for i in range(len(p))},
                    key=lambda d: d.count("/"))
    code = _INFO % {
        "mkdirs": mkdirs,
        "paths": paths,
        "dirs": dirs,
        "want_cfg": want_cfg,
        "mark": MARK,
    }
    return board.exec_json(code)


def make_plan(local: dict[str, bytes], info: dict[str, Any], managed_dirs: list[str]) -> Plan:
    """Which local files differ from the board's, and which board files in the app's own
    folders are no longer part of the app."""
    plan = Plan()
    for path, data in local.items():
        if info["h"].get(path) == hashlib.sha256(data).hexdigest():
            plan.unchanged.append(path)
        else:
            plan.copy.append(path)
    for d in managed_dirs:
        for name in info["ls"].get(d, []):
            p = f"{d}/{name}"
            if p not in local:
                plan.remove.append(p)
    return plan
