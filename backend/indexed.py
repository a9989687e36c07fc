"""What every place that keeps frames shares: the SQLite index answers the questions about
frames and nodes, and retention picks from it what has to go. The local disk (storage.py) and
object storage (objectstorage.py) differ only in where the bytes are; both build on this."""

from __future__ import annotations

import errno
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

from espcam.backend.index import Index
from espcam.backend.indexfile import describe_db_error, why_not_writable
from espcam.backend.names import check_node_id
from espcam.backend.records import StoredFrame


class StorageError(OSError):
    """The store refused a write (disk full, read-only, I/O error, object store unreachable);
    nothing stored was touched. Worth retrying: the same frame may be stored once the store
    recovers."""


class StorageRejected(ValueError):
    """A frame the index will never take as it is (a constraint says it clashes with a stored
    one); retrying cannot help. Nothing stored was touched."""


def store_failed(where: str, e: Exception) -> Exception:
    """What a failed store raises for `e` (OSError, sqlite3.Error or StorageRejected), after
    undoing its own writes: a clash is StorageRejected for good, the rest a StorageError to
    retry. `where` names the frame and the store."""
    if isinstance(e, StorageRejected):
        return StorageRejected(f"cannot store {where}: {e}")
    if isinstance(e, sqlite3.IntegrityError):
        return StorageRejected(f"cannot store {where}: the index refuses it ({e}); it clashes "
                               "with a stored frame, which is kept")
    return StorageError(
        e.errno if isinstance(e, OSError) and e.errno else errno.EIO,
        f"cannot store {where}: "
        f"{describe_os_error(e) if isinstance(e, OSError) else describe_db_error(e)}")


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return f"disk full ({e.strerror or e})"
    if e.errno == errno.EROFS:
        return f"file system is read-only ({e.strerror or e})"
    return f"{e.strerror or e}"


def open_index(root: Path, readonly: bool) -> Index:
    """The data directory's index (created or upgraded unless `readonly`); StorageError,
    saying why, when the directory or index cannot be used."""
    try:
        return Index(root, readonly=readonly)
    except (OSError, sqlite3.Error) as e:
        why = describe_os_error(e) if isinstance(e, OSError) else describe_db_error(e)
        if not readonly and not isinstance(e, OSError):
            why = why_not_writable(root) or why  # SQLite only says "unable to open"
        raise StorageError(
            e.errno if isinstance(e, OSError) else errno.EIO,
            f"cannot open the index in {root}: {why}") from e


@dataclass(frozen=True)
class Retention:
    """Per node; 0 means no limit."""

    max_age_days: float = 30.0
    max_bytes: int = 0


def due_for_deletion(index: Index, node: str, ret: Retention, now: float) -> list[sqlite3.Row]:
    """The node's oldest frames past max age or max bytes, oldest first; never its newest.
    Age is counted from when a frame was received: a node whose clock is far behind must not
    have its frames deleted as they arrive."""
    if ret.max_age_days <= 0 and ret.max_bytes <= 0:
        return []
    # Called for every stored frame: read only what may have to go (through the
    # (node, received_at) index), never the node's whole history, which grows to many
    # thousands of rows; a full scan made each store cost 100 ms at 100 000 rows.
    count, total = index.totals(node)
    if count <= 1:
        return []
    cutoff = now - ret.max_age_days * 86400 if ret.max_age_days > 0 else None
    too_old_any = cutoff is not None and index.older_than(node, cutoff)
    if not too_old_any and (ret.max_bytes <= 0 or total <= ret.max_bytes):
        return []
    doomed = []
    # Oldest first, a few at a time: usually one frame goes, never the whole history read.
    for r in index.oldest_first(node, count - 1):
        too_old = cutoff is not None and r["received_at"] < cutoff
        too_big = ret.max_bytes > 0 and total > ret.max_bytes
        if not (too_old or too_big):
            break  # everything after this one is newer
        doomed.append(r)
        total -= r["bytes"]
    return doomed


class IndexedFrames:
    """The reading half of a FrameStorage (framestorage.py), answered by the index."""

    index: Index

    def __init__(self) -> None:
        # Striped, so that the locks stay as many however many nodes come and go.
        self._node_locks = [Lock() for _ in range(64)]

    def _lock_of(self, node: str) -> Lock:
        return self._node_locks[zlib.crc32(node.encode()) % len(self._node_locks)]

    def has(self, node: str, frame_id: int, crc: int | None = None) -> bool:
        """Is this frame stored? With `crc`, only the frame of that id with that CRC counts."""
        return self.index.has(node, frame_id, crc)

    def count(self, node: str) -> int:
        """Frames of this node in the index."""
        return self.index.totals(node)[0]

    def latest(self, node: str) -> StoredFrame | None:
        """The node's newest frame (by capture time, else arrival), or None."""
        return self.index.latest(node)

    def is_latest(self, node: str, path: str) -> bool:
        """Is the stored frame at `path` the node's newest (by capture time, else arrival)?
        Frames may complete out of order; latest.jpg and the retained image never go back."""
        newest = self.index.newest_path(node)
        return newest is None or newest == path

    def nodes(self) -> list[dict[str, Any]]:
        return self.index.nodes()

    def frames(self, node: str, since: float | None = None, limit: int = 0) -> list[StoredFrame]:
        return self.index.frames(node, since, limit)

    def frame(self, node: str, frame_id: int) -> StoredFrame | None:
        return self.index.frame(node, frame_id)

    def update_node(self, node: str, *, seen_at: float, availability: str | None = None,
                    state: dict[str, Any] | None = None) -> None:
        self.index.update_node(check_node_id(node), seen_at=seen_at, availability=availability,
                               state=state)

    def close(self) -> None:
        self.index.close()
