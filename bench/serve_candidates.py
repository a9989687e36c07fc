"""`espcam serve` with candidate changes to the backend applied in-process, so that bench item 3
can measure them end to end without editing backend/ (they are proposals, not fixes):

- the JPEG check decodes every block but does the IDCT at 1/8 scale (Pillow's draft mode): a
  truncated or corrupt scan still fails, but the pixels are not all produced;
- Storage.apply_retention first asks the (node, taken_at) index whether anything is past the
  age limit (bench.backend_parts.retention_candidate) instead of counting the node's rows;
- the retained `image` is published at QoS 0: paho keeps every QoS 1 message it sends until
  the broker's PUBACK, which it cannot read while its thread waits for room in the backend's
  queue, so during a backlog every frame's JPEG stays in memory a second time.

    ESPCAM_BENCH_CANDIDATES=draft,retention,image_qos0 \
        python -m bench.serve_candidates serve --broker HOST:PORT --data-dir DIR
"""

from __future__ import annotations

import io
import os
import sys

from PIL import Image

import backend.subscriber
from backend.jpeg import DEFAULT_MAX_PIXELS, JpegInfo, NotAJpeg, TooManyPixels, inspect_jpeg
from backend.storage import Storage
from bench.backend_parts import retention_candidate


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
    if "draft" in which:
        backend.subscriber.inspect_jpeg = inspect_jpeg_draft
    if "retention" in which:
        Storage.apply_retention = retention_candidate  # type: ignore[method-assign]
    if "image_qos0" in which:
        def publish(self, topic_name, payload, retain=False):  # noqa: ANN001, ANN202
            qos = 0 if topic_name.endswith("/image") else 1
            self.client.publish(topic_name, payload, qos=qos, retain=retain)

        backend.subscriber.Backend.publish = publish
    from backend.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
