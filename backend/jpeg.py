"""Is it a JPEG? The Pillow check every frame passes before it is stored or indexed."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


class NotAJpeg(ValueError):
    """Bytes that are not a JPEG Pillow can decode completely."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int


def inspect_jpeg(data: bytes) -> JpegInfo:
    """Decode the whole image; raise NotAJpeg unless it is a decodable JPEG."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise NotAJpeg(f"frame is {img.format or 'an unknown format'}, not JPEG")
            img.load()  # a full decode: catches truncated and corrupt scans, not just headers
            return JpegInfo(img.width, img.height)
    except NotAJpeg:
        raise
    except Image.DecompressionBombError as e:
        raise NotAJpeg(f"frame rejected as a decompression bomb: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise NotAJpeg(f"frame is not a decodable JPEG: {e}") from None
