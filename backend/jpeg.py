"""Is it a JPEG? The Pillow check every frame passes before it is stored or indexed."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# UXGA, the largest frame size of the protocol, is 1.9 megapixels; 5 MP leaves room for a
# 5 MP sensor (OV5640, 2592x1944) and bounds a decode to about 15 MB (3 bytes a pixel).
DEFAULT_MAX_PIXELS = 5 * 1024 * 1024


class NotAJpeg(ValueError):
    """Bytes that are not a JPEG Pillow can decode completely."""


class TooManyPixels(NotAJpeg):
    """A JPEG whose header declares more pixels than the limit; it was not decoded."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int


def inspect_jpeg(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> JpegInfo:
    """Decode the whole image; raise NotAJpeg unless it is a decodable JPEG of at most
    `max_pixels` pixels (None: only Pillow's own decompression bomb limit)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise NotAJpeg(f"frame is {img.format or 'an unknown format'}, not JPEG")
            width, height = img.size
            # Checked before load(): the decode allocates width x height x 3 bytes whatever
            # the file's size, so a 400 KB JPEG declaring 5000x5000 would cost ~100 MB.
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(
                    f"frame of {width}x{height} = {width * height} pixels is above the limit "
                    f"max_pixels={max_pixels}; not decoded"
                )
            img.load()  # a full decode: catches truncated and corrupt scans, not just headers
            return JpegInfo(width, height)
    except NotAJpeg:
        raise
    except Image.DecompressionBombError as e:
        raise NotAJpeg(f"frame rejected as a decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NotAJpeg(f"frame is not a decodable JPEG: {e}") from None
