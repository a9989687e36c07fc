"""Motion between two frames of one node, with Pillow alone (docs/doorbell.md).

Each frame is reduced to a small grey picture: the JPEG decoder scales it down while it decodes
(`draft`), so a VGA frame costs a few milliseconds (bench item 7). Two such pictures are
compared pixel by pixel after the older one is shifted to the newer one's mean brightness, so
a camera that changes its exposure, or a cloud, is not motion. Pixels that changed by more
than PIXEL_DELTA grey levels are motion once isolated pixels are removed (sensor and JPEG
noise); the score is the share of the picture that changed, in percent, and the region the box
around it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageFilter, ImageStat

GRID = (160, 120)  # every frame is compared at this size, whatever its own
PIXEL_DELTA = 24  # grey levels; a static scene's noise at this size stays under ~12
DEFAULT_THRESHOLD = 2.0  # percent of the picture


@dataclass(frozen=True)
class Small:
    """A frame reduced for comparison, and the size of the frame it came from."""

    image: Image.Image
    size: tuple[int, int]


@dataclass(frozen=True)
class Motion:
    score: float  # percent of the picture that changed, 0 ... 100
    box: tuple[int, int, int, int] | None  # left, top, right, bottom in the frame's pixels


def reduce(source: bytes | str | Path | Image.Image) -> Small:
    """A JPEG (bytes or file) or an opened image as a Small."""
    if isinstance(source, Image.Image):
        img = source
    else:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    size = img.size
    if img.format == "JPEG":
        img.draft("L", GRID)  # decode at 1/2, 1/4 or 1/8 scale, not at full size
    small = img.convert("L").resize(GRID, Image.Resampling.BILINEAR)
    return Small(small.filter(ImageFilter.GaussianBlur(1)), size)


def compare(before: Small, after: Small) -> Motion | None:
    """What changed from `before` to `after`; None when they cannot be compared (the frame
    size changed: the node's setting, not the scene)."""
    if before.size != after.size:
        return None
    offset = round(ImageStat.Stat(after.image).mean[0] - ImageStat.Stat(before.image).mean[0])
    lut = [min(255, max(0, v + offset)) for v in range(256)]
    diff = ImageChops.difference(after.image, before.image.point(lut))
    mask = diff.point([255 if v > PIXEL_DELTA else 0 for v in range(256)])
    # An opening: single changed pixels go, changed areas keep their size.
    mask = mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    changed = mask.histogram()[255]
    score = round(100.0 * changed / (GRID[0] * GRID[1]), 2)
    grid_box = mask.getbbox() if changed else None
    if grid_box is None:
        return Motion(score, None)
    sx, sy = after.size[0] / GRID[0], after.size[1] / GRID[1]
    left, top, right, bottom = grid_box
    return Motion(score, (int(left * sx), int(top * sy), min(after.size[0], round(right * sx)),
                          min(after.size[1], round(bottom * sy))))


def parse_thresholds(text: str) -> dict[str, float]:
    """`motion_thresholds`: "cam-door=5, cam-yard=1.5" -> {node: percent}. Raises ValueError
    saying what is wrong."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        node, sep, value = part.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            threshold = -1.0
        if not sep or not node.strip() or not 0 <= threshold <= 100:
            raise ValueError(f"motion_thresholds: {part!r} is not NODE=PERCENT (0 ... 100)")
        out[node.strip()] = threshold
    return out
