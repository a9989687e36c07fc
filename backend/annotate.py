"""An annotated copy of a stored frame (`espcam annotate NODE:ID`): what analysis found drawn
on it, the motion region in amber and each face in a box with its name (green) or `unknown`
(red) and its distance; optionally as a thumbnail. Pillow only; writes nothing itself."""

from __future__ import annotations

import io

from espcam.backend.findings import UNKNOWN, Findings
from PIL import Image, ImageDraw, ImageFont

MOTION = (255, 176, 0)
KNOWN = (40, 200, 70)
STRANGER = (230, 40, 40)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str,
           colour: tuple[int, int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
           ) -> None:
    box = draw.textbbox(xy, text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=colour)
    draw.text(xy, text, fill="white", font=font)


def annotate(jpeg: bytes, found: Findings | None, thumbnail: int = 0,
             quality: int = 85) -> bytes:
    """The frame with `found` drawn on it (nothing drawn for None), as a JPEG; `thumbnail`:
    at most that many pixels wide and high."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, img.width // 200)
    font = _font(max(11, img.height // 28))
    if found is not None:
        if found.motion_box:
            draw.rectangle(tuple(found.motion_box), outline=MOTION, width=width)
        for face in found.faces:
            name = face.get("name")
            colour = KNOWN if name else STRANGER
            left, top, right, bottom = face["box"]
            draw.rectangle((left, top, right, bottom), outline=colour, width=width)
            distance = face.get("distance")
            text = (name or UNKNOWN) + (f" {distance:.2f}" if distance is not None else "")
            _label(draw, (left, max(0, top - font.size - 6) if hasattr(font, "size")
                          else top), text, colour, font)
        if found.motion is not None:
            _label(draw, (6, 6), f"motion {found.motion:.1f}%"
                   + (" (over threshold)" if found.moved else ""), MOTION, font)
    if thumbnail:
        img.thumbnail((thumbnail, thumbnail), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()
