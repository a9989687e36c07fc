"""Is it a JPEG? The check every frame passes before it is stored or indexed.

Bounded before any decoding starts: the file's own markers are walked first (tens of
microseconds for a VGA frame), so a frame that declares more pixels or more scans than any
camera of the protocol makes is refused without being decoded. A decode's work grows with
pixels times scans; a progressive file of thousands of scans took 50 s to decode whatever its
pixel count.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# UXGA, the largest frame size of the protocol, is 1.9 megapixels; 5 MP leaves room for a
# 5 MP sensor (OV5640, 2592x1944) and bounds a decode to about 15 MB (3 bytes a pixel).
DEFAULT_MAX_PIXELS = 5 * 1024 * 1024
# ESP32 camera drivers write baseline JPEGs: one scan. Progressive encoders use about ten
# (libjpeg's default script has 10 for colour); more is no camera's.
DEFAULT_MAX_SCANS = 16

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length


class NotAJpeg(ValueError):
    """Bytes that are not a JPEG Pillow can decode to the end of its scan."""

    counter = "not_jpeg"


class TooManyPixels(NotAJpeg):
    """A JPEG whose header declares more pixels than the limit; it was not decoded."""

    counter = "too_many_pixels"


class TooManyScans(NotAJpeg):
    """A JPEG of more scans than the limit; it was not decoded."""

    counter = "too_many_scans"


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    scans: int = 1


def walk_markers(data: bytes, max_scans: int | None = DEFAULT_MAX_SCANS) -> JpegInfo | None:
    """The frame's declared size (its first SOF) and number of scans, from its markers alone;
    None if they do not say. Raises TooManyScans past `max_scans`. Whether the rest is a JPEG
    is left to the decoder, which skips junk between markers as this walk does."""
    if data[:2] != b"\xff\xd8":
        return None
    n, pos = len(data), 2
    width = height = None
    scans = 0
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE or marker == 0x00:
            pos += 2
            continue
        length = data[pos + 2] << 8 | data[pos + 3]
        if marker in _SOF and width is None and length >= 7 and pos + 9 <= n:
            height = data[pos + 5] << 8 | data[pos + 6]
            width = data[pos + 7] << 8 | data[pos + 8]
        pos += 2 + max(length, 2)
        if marker == _SOS:
            scans += 1
            if max_scans is not None and scans > max_scans:
                raise TooManyScans(f"frame has more than max_scans={max_scans} scans (a "
                                   "camera writes 1); not decoded")
            pos = _after_entropy_data(data, pos)
    if width is None or height is None:
        return None
    return JpegInfo(width, height, scans)


# The marker that ends entropy-coded data: 0xFF followed by anything but a stuffed 0x00, a
# restart marker or another 0xFF (a fill byte; the last 0xFF of a run is the marker's). One C
# search instead of a Python step per 0xFF: a VGA frame has ~400 stuffed bytes, and stepping
# through them held the GIL for 0.46 ms of the store stage's 1.3 ms of CPU per frame.
_END_OF_ENTROPY = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _after_entropy_data(data: bytes, pos: int) -> int:
    """The position of the marker that ends the entropy-coded data starting at `pos`."""
    found = _END_OF_ENTROPY.search(data, pos)
    return len(data) if found is None else found.start()


def inspect_jpeg(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_scans: int | None = DEFAULT_MAX_SCANS) -> JpegInfo:
    """Decode the whole scan; raise NotAJpeg unless it is a decodable JPEG of at most
    `max_pixels` pixels and `max_scans` scans (None: no limit of ours; Pillow's decompression
    bomb limit still holds). Width and height are the file's own."""
    declared = walk_markers(data, max_scans)
    if declared and max_pixels is not None and declared.width * declared.height > max_pixels:
        # The decode's work follows the declared size, not the file's, and no camera of the
        # protocol makes more than UXGA.
        raise TooManyPixels(
            f"frame of {declared.width}x{declared.height} = "
            f"{declared.width * declared.height} pixels is above the limit "
            f"max_pixels={max_pixels}; not decoded")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise NotAJpeg(f"frame is {img.format or 'an unknown format'}, not JPEG")
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(
                    f"frame of {width}x{height} = {width * height} pixels is above the limit "
                    f"max_pixels={max_pixels}; not decoded")
            # libjpeg still reads every block of the scan, so a truncated or corrupt scan fails
            # as in a full decode (checked against one in tests/test_backend_reassembly.py), but
            # builds the pixels at 1/8 scale: the full decode was a third of the backend's work
            # per frame and its memory width x height x 3 (docs/benchmarks.md, B3).
            img.draft(None, (max(1, width // 8), max(1, height // 8)))
            img.load()
            return JpegInfo(width, height, declared.scans if declared else 1)
    except NotAJpeg:
        raise
    except Image.DecompressionBombError as e:
        raise TooManyPixels(f"frame rejected as a decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NotAJpeg(f"frame is not a decodable JPEG: {e}") from None
