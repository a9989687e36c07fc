"""`espcam serve` with one change to the backend undone in-process, so that bench item 3 can
measure that change end to end against the shipped backend in the same run:

- `full_decode`: the JPEG check as it was before B3, a full Pillow decode producing every pixel
  (since B3 the shipped check reads every block of the scan but builds the pixels at 1/8 scale).
- `no_check`: no JPEG check at all, only the markers' walk for the size (issue 14: what the
  check costs against the durable writer, which checks nothing). Never a candidate to ship:
  the check is what keeps a corrupt frame from being stored and announced.

The candidates measured here earlier (retention asking the index first, the retained `image` at
QoS 0, the draft decode) are all in backend/ now; item 3 also measures the backends of b1934b5
and c36bdb5 from git (bench.ingest.PREV_COMMIT, BEFORE_COMMIT).

    ESPCAM_BENCH_CANDIDATES=full_decode python -m bench.serve_candidates serve \
        --broker HOST:PORT --data-dir DIR
"""

from __future__ import annotations

import io
import os
import sys

import espcam.backend.subscriber
from espcam.backend.jpeg import DEFAULT_MAX_PIXELS, JpegInfo, inspect_jpeg, walk_markers
from PIL import Image


def inspect_jpeg_full(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> JpegInfo:
    """The check before B3: the same, with a full decode producing every pixel."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.format == "JPEG" and (max_pixels is None or width * height <= max_pixels):
                img.load()
                return JpegInfo(width, height)
    except Exception:
        pass
    return inspect_jpeg(data, max_pixels)  # refuses it, and says why


def inspect_markers_only(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                         max_scans: int | None = None) -> JpegInfo:
    """No decode: the size the markers declare, or 0x0."""
    return walk_markers(data, None) or JpegInfo(0, 0)


def main() -> int:
    which = set(os.environ.get("ESPCAM_BENCH_CANDIDATES", "").split(","))
    unknown = which - {"", "full_decode", "no_check"}
    if unknown:
        print(f"unknown candidates: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    # The check is the Backend's keyword default, bound when the class was defined: a module
    # global patched here would not reach it.
    defaults = espcam.backend.subscriber.Backend.__init__.__kwdefaults__
    if "full_decode" in which:
        defaults["check"] = inspect_jpeg_full
    if "no_check" in which:
        defaults["check"] = inspect_markers_only
    from espcam.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
