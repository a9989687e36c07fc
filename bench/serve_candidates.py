"""`espcam serve` with a candidate change to the backend applied in-process, so that bench
item 3 can measure it end to end without editing backend/ (a proposal, not a fix):

- `draft`: the JPEG check decodes every block but does the IDCT at 1/8 scale (Pillow's draft
  mode): a truncated or corrupt scan still fails, but the pixels are not all produced (B3).

The candidates measured here earlier (retention asking the index first, the retained `image` at
QoS 0) are in backend/ since a057350; item 3 measures their effect against the backend of
b1934b5 (bench.ingest.PREV_COMMIT) instead.

    ESPCAM_BENCH_CANDIDATES=draft python -m bench.serve_candidates serve --broker HOST:PORT \
        --data-dir DIR
"""

from __future__ import annotations

import io
import os
import sys

from PIL import Image

import backend.subscriber
from backend.jpeg import DEFAULT_MAX_PIXELS, JpegInfo, NotAJpeg, TooManyPixels, inspect_jpeg


def inspect_jpeg_draft(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> JpegInfo:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise NotAJpeg(f"frame is {img.format or 'an unknown format'}, not JPEG")
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(f"{width}x{height} is above max_pixels={max_pixels}")
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            return JpegInfo(width, height)
    except NotAJpeg:
        raise
    except Exception:
        return inspect_jpeg(data, max_pixels)  # the shipped check says why


def main() -> int:
    which = set(os.environ.get("ESPCAM_BENCH_CANDIDATES", "").split(","))
    unknown = which - {"", "draft"}
    if unknown:
        print(f"unknown candidates: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "draft" in which:
        backend.subscriber.inspect_jpeg = inspect_jpeg_draft
    from backend.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
