"""Is it a JPEG? The Pillow check every frame passes before it is stored or indexed."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# UXGA, the largest frame size of the protocol, is 1.9 megapixels; 5 MP leaves room for a
# 5 MP sensor (OV5640, 2592x1944) and bounds a decode to about 15 MB (3 bytes a pixel).
DEFAULT_MAX_PIXELS = 5 * 1024 * 1024


class NotAJpeg(ValueError):
    """Bytes that are not a JPEG Pillow can decode to the end of its scan."""


class TooManyPixels(NotAJpeg):
    """A JPEG whose header declares more pixels than the limit; it was not decoded."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int


def inspect_jpeg(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> JpegInfo:
    """Decode the whole scan; raise NotAJpeg unless it is a decodable JPEG of at most
    `max_pixels` pixels (None: only Pillow's own decompression bomb limit). Width and height
    are the file's own."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise NotAJpeg(f"frame is {img.format or 'an unknown format'}, not JPEG")
            width, height = img.size
            # Checked before load(): the decode's work follows the declared size, not the
            # file's, and no camera of the protocol makes more than UXGA.
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(
                    f"frame of {width}x{height} = {width * height} pixels is above the limit "
                    f"max_pixels={max_pixels}; not decoded"
                )
            # libjpeg still reads every block of the scan, so a truncated or corrupt scan fails
            # as in a full decode (checked against one in tests/test_backend_reassembly.py), but
            # builds the pixels at 1/8 scale: the full decode was a third of the backend's work
            # per frame and its memory width x height x 3 (docs/benchmarks.md, B3).
            img.draft(None, (max(1, width // 8), max(1, height // 8)))
            img.load()
            return JpegInfo(width, height)
    except NotAJpeg:
        raise
    except Image.DecompressionBombError as e:
        raise NotAJpeg(f"frame rejected as a decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NotAJpeg(f"frame is not a decodable JPEG: {e}") from None
