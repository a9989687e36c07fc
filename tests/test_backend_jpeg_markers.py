"""The marker walk that bounds the JPEG check (backend/jpeg.py) finds the end of each scan's
entropy-coded data with one search; it must find exactly what stepping through every 0xFF
byte finds, whatever the bytes: stuffed 0x00, restart markers, runs of fill bytes, a 0xFF as
the very last byte."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.jpeg import _after_entropy_data, walk_markers  # noqa: E402
from lightnode import make_jpeg, many_scans  # noqa: E402


def stepping(data: bytes, pos: int) -> int:
    """The rule written out byte by byte, as the protocol's readers would."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        nxt = data[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1 if nxt == 0xFF else 2
            continue
        return pos


def test_the_end_of_entropy_data_is_where_stepping_byte_by_byte_finds_it():
    rnd = random.Random(14)
    # Bytes rich in exactly what the rule is about.
    alphabet = [0x00, 0xFF, 0xFF, 0xD0, 0xD7, 0xD8, 0xD9, 0xDA, 0xC0, 0x12, 0xCF]
    cases = [b"", b"\xff", b"\xff\xff", b"\xff\x00", b"\xff\xd9", b"\xff\xff\xd9", b"\x00\xff"]
    cases += [bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 64)))
              for _ in range(3000)]
    for data in cases:
        for pos in range(len(data) + 1):
            assert _after_entropy_data(data, pos) == stepping(data, pos), (data.hex(), pos)


def test_real_jpegs_walk_to_the_same_size_and_scans():
    for jpeg, scans in [(make_jpeg(640, 480, seed=s), 1) for s in range(3)] + [
            (many_scans(3), None)]:
        info = walk_markers(jpeg, None)
        assert info is not None
        if scans is not None:
            assert (info.width, info.height, info.scans) == (640, 480, 1)
        ends = []
        pos = 0
        while (pos := jpeg.find(b"\xff\xda", pos)) >= 0:
            ends.append((_after_entropy_data(jpeg, pos + 2), stepping(jpeg, pos + 2)))
            pos += 2
        assert ends and all(a == b for a, b in ends)
