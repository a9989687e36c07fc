"""Reading the backend's LOST lines as a user would: which frames of a node it says are lost.
One line may name several frames, as ranges (`LOST frames 5-26, 30 of node cam-k: ...`)."""

from __future__ import annotations

import re

_LINE = re.compile(r"LOST frames? ([0-9, -]+?)(?: and \d+ more runs)? of node ([a-z0-9_-]+):")


def lost_ids(text: str, node: str) -> set[int]:
    ids: set[int] = set()
    for m in _LINE.finditer(text):
        if m.group(2) != node:
            continue
        for part in m.group(1).split(","):
            a, _, b = part.strip().partition("-")
            ids.update(range(int(a), int(b or a) + 1))
    return ids
