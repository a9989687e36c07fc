"""What the backend needs of a place to keep frames: the interface that the local disk
(storage.py, `Storage`) implements, and that another backing store (S3-compatible object
storage, docs/scaling.md) would implement as a module of its own, without touching the
stages. Frames' metadata always lives in the SQLite index (index.py), whatever holds the bytes.

This is all that the stages use (store.py, announce via `locate`, retention, forget,
reconcile, the analysis stage via `locate` and `index`); tests/test_backend_framestorage.py
checks that they use nothing else and that `Storage` has all of it. `store` may be called for
several frames of one node at once (lanes.py); each call must return only once the frame is
durable and its index row committed, because the frame is then announced and confirmed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from espcam.backend.index import Index
from espcam.backend.records import StoredFrame


class FrameStorage(Protocol):
    index: Index
    # The data directory: the index lives there (and, on the local disk, the frames' files).
    root: Path

    def store(self, node: str, frame_id: int, jpeg: bytes, *, crc: int, received_at: float,
              captured_at: float | None = None, width: int | None = None,
              height: int | None = None, trigger: str | None = None) -> StoredFrame | None:
        """Keep a frame durably (it must survive a power cut once this returns, since the
        node is then told so), index it; None if (node, frame_id, crc) is kept already.
        StorageError: worth retrying; StorageRejected: never."""

    def read(self, stored: StoredFrame) -> bytes:
        """A stored frame's bytes."""

    def locate(self, stored: StoredFrame) -> str:
        """Where a user finds the frame: a file's path, or an object's URL."""

    def has(self, node: str, frame_id: int, crc: int | None = None) -> bool: ...
    def count(self, node: str) -> int: ...
    def latest(self, node: str) -> StoredFrame | None: ...
    def is_latest(self, node: str, path: str) -> bool: ...
    def frames(self, node: str, since: float | None = None,
               limit: int = 0) -> list[StoredFrame]: ...
    def frame(self, node: str, frame_id: int) -> StoredFrame | None: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def update_node(self, node: str, *, seen_at: float, availability: str | None = None,
                    state: dict[str, Any] | None = None) -> None: ...
    def forget_node(self, node: str, delete_frames: bool = False) -> int: ...
    def apply_retention(self, node: str, now: float | None = None) -> int: ...
    def apply_retention_all(self, now: float | None = None) -> dict[str, int]: ...

    def reconcile(self) -> dict[str, int]:
        """Make what is kept and the index agree after a crash."""

    def close(self) -> None: ...
