"""Real JPEG frames for simulated cameras, drawn with Pillow: a gradient, seeded noise and a
caption (node name and frame number), so every frame of every node differs."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FRAME_SIZES: dict[str, tuple[int, int]] = {
    "QQVGA": (160, 120),
    "QCIF": (176, 144),
    "HQVGA": (240, 176),
    "QVGA": (320, 240),
    "CIF": (400, 296),
    "HVGA": (480, 320),
    "VGA": (640, 480),
    "SVGA": (800, 600),
    "XGA": (1024, 768),
    "HD": (1280, 720),
    "SXGA": (1280, 1024),
    "UXGA": (1600, 1200),
}


def make_jpeg(
    width: int, height: int, seed: int, text: str, *, quality: int = 85, noise: float = 0.08
) -> bytes:
    """A JPEG of width x height: a colour gradient picked by `seed`, blended with `noise`
    (0 … 1) of seeded random pixels, and `text` drawn large in the middle. Deterministic."""
    rng = random.Random(seed)
    c0 = tuple(rng.randrange(256) for _ in range(3))
    c1 = tuple(rng.randrange(256) for _ in range(3))
    grad = Image.linear_gradient("L").resize((width, height))
    img = Image.composite(
        Image.new("RGB", (width, height), c1), Image.new("RGB", (width, height), c0), grad
    )
    if noise > 0:
        speckle = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
        img = Image.blend(img, speckle, min(1.0, noise))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=max(10, height // 8))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    box = draw.textbbox((0, 0), text, font=font)
    x = (width - (box[2] - box[0])) // 2
    y = (height - (box[3] - box[1])) // 2
    draw.rectangle((x - 6, y - 6, x + box[2] - box[0] + 6, y + box[3] - box[1] + 6), fill="black")
    draw.text((x - box[0], y - box[1]), text, fill="white", font=font)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def jpeg_of_size(
    target: int, *, width: int = 640, height: int = 480, seed: int = 0, text: str = "espcam"
) -> bytes:
    """A JPEG of roughly `target` bytes (within a few percent when the size is reachable at
    these dimensions), found by bisecting the amount of noise at quality 90."""
    lo, hi = 0.0, 1.0
    best = make_jpeg(width, height, seed, text, quality=90, noise=hi)
    if len(best) < target:
        return best  # the largest this size can make
    for _ in range(14):
        mid = (lo + hi) / 2
        data = make_jpeg(width, height, seed, text, quality=90, noise=mid)
        if abs(len(data) - target) < abs(len(best) - target):
            best = data
        if len(data) < target:
            lo = mid
        else:
            hi = mid
    return best


def make_pool(
    folder: Path, name: str, count: int = 8, frame_size: str = "VGA", noise: float = 0.08
) -> list[Path]:
    """Writes `count` distinct JPEGs for node `name` into `folder` (frame-001.jpg …)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = FRAME_SIZES[frame_size]
    base = sum(name.encode()) * 1000
    paths = []
    for i in range(1, count + 1):
        p = folder / f"frame-{i:03d}.jpg"
        p.write_bytes(make_jpeg(width, height, base + i, f"{name} #{i}", noise=noise))
        paths.append(p)
    return paths
