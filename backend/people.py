"""The people enrolled by the user (`espcam faces add|list|remove`): for each name, the face
embeddings of one or more photos, in `<data>/faces/people.json`, and matching a face against
them. Plain Python (no numpy), so listing and removing people needs no face packages.

The file is written by the `espcam faces` commands, next to a running `espcam serve`, and read
by the analysis worker, which loads it again whenever it changes. Writes replace it whole
(temporary file, fsync, rename) under a lock file, so a reader never sees half of one and two
commands at once do not lose each other's change.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FOLDER = "faces"
FILE = "people.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}")
UNKNOWN = "unknown"  # what an unmatched face is called; no person may have this name
DEFAULT_TOLERANCE = 0.6  # dlib's: distances under it are the same person (99.38 % on LFW)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or name.strip() != name:
        raise ValueError(f"{name!r} is not a name: 1 to 32 letters, digits, spaces, '.', '_' "
                         "or '-', starting with a letter or digit")
    if name.lower() == UNKNOWN:
        raise ValueError(f"{name!r} is reserved for faces that match no one")
    return name


def path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FOLDER / FILE


def distance(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) * (x - y) for x, y in zip(a, b, strict=True)))


@dataclass
class Gallery:
    """Everyone enrolled: name -> photos, each {"embedding", "source", "added_at"}."""

    model: str
    people: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: str | Path, model: str) -> Gallery:
        """The enrolled people, or none yet. Raises ValueError for a file that is not one of
        ours, or that was made with another face model (its embeddings mean nothing to this
        one)."""
        p = path(data_dir)
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            return cls(model)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {p}: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("people"), dict):
            raise ValueError(f"{p} is not a people file of espcam")
        if doc.get("model") != model:
            raise ValueError(f"{p} was made with face model {doc.get('model')!r}, not {model!r}:"
                             " enrol everyone again (espcam faces remove, add)")
        people = {n: [ph for ph in photos if _valid_photo(ph)]
                  for n, photos in doc["people"].items() if isinstance(photos, list)}
        return cls(model, people)

    def save(self, data_dir: str | Path) -> Path:
        p = path(data_dir)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".tmp-{FILE}.{os.getpid()}")
        doc = {"model": self.model, "people": self.people}
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        return p

    def add(self, name: str, embedding: list[float], source: str) -> None:
        self.people.setdefault(check_name(name), []).append(
            {"embedding": [round(x, 6) for x in embedding], "source": source,
             "added_at": round(time.time(), 3)})

    def remove(self, name: str) -> int:
        return len(self.people.pop(name, []))

    def match(self, embedding: list[float],
              tolerance: float = DEFAULT_TOLERANCE) -> tuple[str | None, float | None]:
        """(name, distance) of the closest enrolled face; name None when even that one is
        further than `tolerance`, distance None when no one is enrolled."""
        best: tuple[str | None, float | None] = (None, None)
        for name, photos in self.people.items():
            for photo in photos:
                d = distance(embedding, photo["embedding"])
                if best[1] is None or d < best[1]:
                    best = (name, d)
        name, d = best
        if d is None:
            return None, None
        return (name if d <= tolerance else None), round(d, 4)


def _valid_photo(photo: Any) -> bool:
    return (isinstance(photo, dict) and isinstance(photo.get("embedding"), list)
            and all(isinstance(x, int | float) for x in photo["embedding"]))


@contextmanager
def changing(data_dir: str | Path, model: str) -> Iterator[Gallery]:
    """The gallery, locked against other `espcam faces` commands; saved if the block ends
    without an exception."""
    p = path(data_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        gallery = Gallery.load(data_dir, model)
        yield gallery
        gallery.save(data_dir)


def stamp(data_dir: str | Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced (inode, size, mtime), None without one."""
    try:
        st = path(data_dir).stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
