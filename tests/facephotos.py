"""Real photos of two different people for the analysis tests, shipped inside packages that the
dev extra installs, found on disk without importing them and never downloaded:

- Eileen Collins, NASA astronaut: scikit-image's `skimage/data/astronaut.png` (512 x 512;
  its docstring: "No known copyright restrictions, released into the public domain").
- Grace Hopper: matplotlib's `mpl-data/sample_data/grace_hopper.jpg` (512 x 600), the
  portrait behind `matplotlib.cbook.get_sample_data("grace_hopper.jpg")`.

`frame()` places one in a VGA picture the way a camera at a door would see it (smaller, off
centre, a plain wall around it, JPEG at a camera's quality); `enrolment_photo()` is a
different picture of the same person for `espcam faces add` (mirrored and cropped to the
head), so a test that recognises someone does not compare a picture with itself.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from PIL import Image

PHOTOS = {
    "collins": ("skimage", "data/astronaut.png"),
    "hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
VGA = (640, 480)


def photo(who: str) -> Path:
    package, relative = PHOTOS[who]
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, (
        f"{package} is not installed (it is in the dev extra: scripts/setup.sh)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    assert path.is_file(), f"{path} is not in the installed {package}"
    return path


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def frame(who: str | None, scale: float = 0.6, left: int = 120, quality: int = 75,
          wall: tuple[int, int, int] = (96, 104, 112)) -> bytes:
    """A VGA JPEG with `who` in it (None: the wall alone)."""
    img = Image.new("RGB", VGA, wall)
    if who is not None:
        person = Image.open(photo(who)).convert("RGB")
        person = person.resize((int(person.width * scale), int(person.height * scale)),
                               Image.Resampling.BILINEAR)
        img.paste(person, (left, 0))
    return _jpeg(img, quality)


def enrolment_photo(who: str) -> bytes:
    """Another picture of `who`: mirrored, the head and shoulders only, at full size."""
    person = Image.open(photo(who)).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jpeg(person.crop((0, 0, person.width, int(person.height * 0.6))), 92)


def images_dir(folder: Path, people: list[str | None]) -> Path:
    """A camera stand-in's pictures (the simulator serves them in name order, then again)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, who in enumerate(people):
        (folder / f"{i:02d}-{who or 'wall'}.jpg").write_bytes(frame(who))
    return folder
