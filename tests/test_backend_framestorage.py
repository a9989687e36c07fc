"""The storage interface (backend/framestorage.py) is what the stages really use, and both
backing stores implement all of it: the local disk (storage.py) and object storage
(objectstorage.py), which came as a module of its own, not a rewrite."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from espcam.backend.framestorage import FrameStorage
from espcam.backend.objectstorage import ObjectStorage
from espcam.backend.storage import Storage

ROOT = Path(__file__).resolve().parent.parent
# The modules that hold a FrameStorage and use it (and the CLI's, which open one read only).
USERS = ["store", "subscriber", "frames", "announce", "analyse", "forget", "cli", "facescli"]


def _declared() -> set[str]:
    names = {n for n in vars(FrameStorage) if not n.startswith("_")}
    return names | set(getattr(FrameStorage, "__annotations__", {}))


def test_the_stages_use_only_what_the_interface_declares():
    declared = _declared()
    used: dict[str, set[str]] = {}
    for mod in USERS:
        tree = ast.parse((ROOT / "backend" / f"{mod}.py").read_text())
        for node in ast.walk(tree):
            # `self.storage.X` and `storage.X`
            if isinstance(node, ast.Attribute) and (
                    (isinstance(node.value, ast.Attribute) and node.value.attr == "storage")
                    or (isinstance(node.value, ast.Name) and node.value.id == "storage")):
                used.setdefault(node.attr, set()).add(mod)
    assert used, "the scan found no use at all: it is looking in the wrong place"
    assert {a: sorted(m) for a, m in used.items() if a not in declared} == {}


@pytest.mark.parametrize("cls", [Storage, ObjectStorage])
def test_each_backing_store_implements_the_whole_interface(cls):
    for name in _declared():
        if name in ("index", "root"):
            continue  # instance attributes, set in __init__
        assert callable(getattr(cls, name, None)), name
        want = inspect.signature(getattr(FrameStorage, name))
        got = inspect.signature(getattr(cls, name))
        assert list(want.parameters) == list(got.parameters), name
    src = inspect.getsource(cls.__init__)
    assert "self.index =" in src and "self.root =" in src
