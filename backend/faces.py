"""Faces in a picture: where they are and an embedding of each, with dlib (the `faces` extra:
dlib-bin, face_recognition_models, numpy). docs/doorbell.md says why dlib.

- Detection: dlib's HOG frontal face detector (inside dlib itself), run once upsampled, which
  finds faces down to about 40 pixels wide.
- Embedding: dlib's ResNet face recognition model (`dlib_face_recognition_resnet_model_v1`,
  a 128-number vector; two photos of the same person are closer than 0.6) after aligning the
  face with the 5-point landmark model. Both model files come inside the face_recognition_models
  package: nothing is downloaded, ever.

Large pictures are reduced to at most MAX_WIDTH pixels wide before detection (the JPEG decoder
does most of it), so a UXGA frame costs about what a VGA one does; boxes are given in the
picture's own pixels.

The packages are imported only by `Engine()`, so this module loads without them: `missing()`
says what is not installed.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

MODEL = "dlib_face_recognition_resnet_model_v1"
PACKAGES = ("numpy", "dlib", "face_recognition_models")
INSTALL_HINT = "pip install 'espcam[faces]'"
MAX_WIDTH = 800
EXIF_ORIENTATION = 0x0112
UPSAMPLE = 1  # one upsampling: faces from ~40 px; none: from ~80 px, at a quarter of the time


def missing() -> str | None:
    """What of the faces extra is not installed, as a sentence; None if all of it is."""
    absent = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if not absent:
        return None
    return f"{', '.join(absent)} not installed ({INSTALL_HINT})"


def model_dir() -> Path:
    """face_recognition_models' folder of model files, found without importing the package
    (its __init__ needs setuptools' pkg_resources, which newer Pythons lack)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"face_recognition_models is not installed ({INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # left, top, right, bottom in the picture's pixels
    embedding: list[float]

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def open_picture(source: bytes | str | Path) -> tuple[Image.Image, tuple[int, int]]:
    """A photo or frame, and its size upright at full resolution. A large JPEG is decoded at a
    reduced scale (draft), so only what detection needs is ever decoded."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    full = img.size
    if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a phone held upright
        full = (full[1], full[0])
    if img.format == "JPEG" and max(img.size) > MAX_WIDTH:
        img.draft("RGB", (MAX_WIDTH, MAX_WIDTH))
    return img, full


class Engine:
    """The models, loaded once (about half a second and 100 MB)."""

    def __init__(self) -> None:
        # The faces extra, imported only here (see missing()).
        import dlib
        import numpy

        models = model_dir()
        self._np: Any = numpy
        self._detect = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._embed = dlib.face_recognition_model_v1(str(models / f"{MODEL}.dat"))
        self.model = MODEL

    def faces(self, source: bytes | str | Path) -> list[Face]:
        """Every face found, largest first."""
        img, full = open_picture(source)
        img = ImageOps.exif_transpose(img).convert("RGB")
        if img.width > MAX_WIDTH:
            img = img.resize((MAX_WIDTH, max(1, img.height * MAX_WIDTH // img.width)),
                             Image.Resampling.BILINEAR)
        scale = full[0] / img.width
        pixels = self._np.asarray(img)
        out = []
        for rect in self._detect(pixels, UPSAMPLE):
            vector = self._embed.compute_face_descriptor(pixels, self._shape(pixels, rect))
            box = (max(0, round(rect.left() * scale)), max(0, round(rect.top() * scale)),
                   min(full[0], round(rect.right() * scale)),
                   min(full[1], round(rect.bottom() * scale)))
            out.append(Face(box, [float(x) for x in vector]))
        return sorted(out, key=lambda f: -f.area)
