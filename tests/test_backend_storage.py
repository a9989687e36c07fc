"""Storage: layout, atomic files, the index, duplicates, reconcile, retention, a failing disk."""

from __future__ import annotations

import errno
import sqlite3
import sys
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend import storage as storage_mod  # noqa: E402
from espcam.backend.storage import Retention, Storage, StorageError, StorageRejected  # noqa: E402
from lightnode import make_jpeg  # noqa: E402

T0 = 1763980000.25  # 2025-11-24 10:26:40.250 UTC


def put(s: Storage, node: str, fid: int, data: bytes, t: float = T0, **kw):
    return s.store(node, fid, data, crc=0, received_at=t + 1, captured_at=t, width=160,
                   height=120, trigger="interval", **kw)


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_layout_index_latest_and_duplicates(tmp_path):
    s = Storage(tmp_path)
    a, b = make_jpeg(seed=1), make_jpeg(seed=2)
    got = put(s, "cam-1", 7, a)
    assert got.path == "cam-1/2025-11-24/20251124T102640.250Z_7.jpg"
    assert (tmp_path / got.path).read_bytes() == a
    assert (tmp_path / "cam-1" / "latest.jpg").read_bytes() == a
    assert put(s, "cam-1", 7, b) is None  # duplicate (node, frame id): stored once
    put(s, "cam-1", 8, b, T0 + 5)
    assert (tmp_path / "cam-1" / "latest.jpg").read_bytes() == b
    assert [f.frame_id for f in s.frames("cam-1")] == [7, 8]
    assert s.frames("cam-1", since=T0 + 1)[0].frame_id == 8
    row = s.frame("cam-1", 7)
    assert (row.bytes, row.width, row.height, row.trigger) == (len(a), 160, 120, "interval")
    assert not any(".tmp-" in f for f in all_files(tmp_path))


def test_hostile_node_id_never_becomes_a_path(tmp_path):
    s = Storage(tmp_path / "data")
    for node in ("../evil", "a/b", "..", "x" * 100, "cam\x00"):
        with pytest.raises(ValueError):
            put(s, node, 1, make_jpeg())
    assert all_files(tmp_path) - {"data/index.sqlite3-wal", "data/index.sqlite3-shm"} == {
        "data/index.sqlite3"}


def test_reconcile_indexes_orphan_files_and_drops_rows_without_files(tmp_path):
    s = Storage(tmp_path)
    put(s, "cam-1", 1, make_jpeg(seed=1))
    gone = put(s, "cam-1", 2, make_jpeg(seed=2), T0 + 10)
    (tmp_path / gone.path).unlink()
    # A crash after rename but before the row: a whole file without a row.
    orphan = tmp_path / "cam-1/2025-11-24/20251124T102700.000Z_3.jpg"
    orphan.write_bytes(make_jpeg(seed=3))
    # A crash before rename: a temporary file, never visible as a JPEG.
    (tmp_path / "cam-1/2025-11-24/.tmp-20251124T102800.000Z_4.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "cam-1/2025-11-24/notes.txt").write_text("left alone")
    s.close()
    s = Storage(tmp_path)
    stats = s.reconcile()
    assert stats == {"indexed": 1, "dropped_rows": 1, "removed_tmp": 1, "skipped": 0}
    assert [f.frame_id for f in s.frames("cam-1")] == [1, 3]
    assert s.frame("cam-1", 3).width == 160
    assert s.reconcile() == {"indexed": 0, "dropped_rows": 0, "removed_tmp": 0, "skipped": 0}


def test_retention_by_age_and_bytes_oldest_first(tmp_path):
    jpeg = make_jpeg(seed=1)
    s = Storage(tmp_path, Retention(max_age_days=1, max_bytes=len(jpeg) * 3))
    now = time.time()
    put(s, "cam-1", 1, jpeg, now - 3 * 86400)  # too old
    put(s, "cam-2", 1, jpeg, now - 3 * 86400)  # another node: its own budget
    for fid in range(2, 7):
        put(s, "cam-1", fid, jpeg, now - 100 + fid)
    assert [f.frame_id for f in s.frames("cam-1")] == [4, 5, 6]
    assert len(s.frames("cam-2")) == 1  # the newest frame of a node is always kept
    on_disk = {p.name for p in (tmp_path / "cam-1").rglob("*_*.jpg")}
    assert on_disk == {Path(f.path).name for f in s.frames("cam-1")}


def test_frame_counts_kept_in_memory_agree_with_the_index(tmp_path):
    # Storage counts each node's frames once and then keeps the count itself; after stores,
    # retention, a rejected store, forget and reconcile it must still say what the index says.
    jpeg = make_jpeg(seed=2)
    s = Storage(tmp_path, Retention(max_age_days=0, max_bytes=len(jpeg) * 4))
    now = time.time()

    def indexed(node: str) -> int:
        return s.db.execute("SELECT COUNT(*) FROM frames WHERE node = ?", (node,)).fetchone()[0]

    for fid in range(1, 8):
        put(s, "cam-1", fid, jpeg, now + fid)
        put(s, "cam-2", fid, jpeg, now + fid)
        assert s.count("cam-1") == indexed("cam-1") == min(fid, 4)
    put(s, "cam-1", 7, jpeg, now + 7)  # a duplicate stores nothing
    assert s.count("cam-1") == indexed("cam-1") == 4
    s.forget_node("cam-2", delete_frames=True)
    assert s.count("cam-2") == indexed("cam-2") == 0
    victim = s.frames("cam-1")[0]
    (tmp_path / victim.path).unlink()
    s.reconcile()
    assert s.count("cam-1") == indexed("cam-1") == 3
    put(s, "cam-1", 8, jpeg, now + 8)
    assert s.count("cam-1") == indexed("cam-1") == 4
    s.close()
    assert Storage(tmp_path).count("cam-1") == 4


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_is_reported_and_damages_nothing(tmp_path, monkeypatch, err):
    s = Storage(tmp_path)
    first = make_jpeg(seed=1)
    put(s, "cam-1", 1, first)
    before = {f: (tmp_path / f).read_bytes() for f in all_files(tmp_path) if f.endswith(".jpg")}

    def refuse(fd, data):
        raise OSError(err, "simulated")

    monkeypatch.setattr(storage_mod, "_write_all", refuse)
    with pytest.raises(StorageError) as e:
        put(s, "cam-1", 2, make_jpeg(seed=2), T0 + 60)
    assert ("disk full" if err == errno.ENOSPC else "read-only") in str(e.value)
    assert "frame 2 of node cam-1" in str(e.value)
    after = {f: (tmp_path / f).read_bytes() for f in all_files(tmp_path) if f.endswith(".jpg")}
    assert after == before  # nothing half-written, latest.jpg still the last good frame
    assert [f.frame_id for f in s.frames("cam-1")] == [1]
    monkeypatch.undo()
    assert put(s, "cam-1", 2, make_jpeg(seed=2), T0 + 60) is not None


def test_index_failure_leaves_no_file_without_row(tmp_path, monkeypatch):
    s = Storage(tmp_path)
    put(s, "cam-1", 1, make_jpeg(seed=1))

    class FullDb:
        def __init__(self, db):
            self._db = db

        def __getattr__(self, name):
            return getattr(self._db, name)

        def __enter__(self):
            raise sqlite3.OperationalError("database or disk is full")

        def __exit__(self, *a):
            return False

    real = s.db
    s.db = FullDb(real)
    with pytest.raises(StorageError, match="database or disk is full"):
        put(s, "cam-1", 2, make_jpeg(seed=2), T0 + 60)
    s.db = real
    assert len([f for f in all_files(tmp_path) if f.endswith("Z_2.jpg")]) == 0
    assert s.reconcile()["indexed"] == 0


def test_reused_frame_id_with_the_same_timestamp_never_overwrites_a_stored_frame(tmp_path):
    s = Storage(tmp_path)
    a, b = make_jpeg(seed=1), make_jpeg(seed=2)
    first = s.store("cam-1", 7, a, crc=zlib.crc32(a), received_at=T0, captured_at=T0)
    # Same node, same frame id, same capture time, other bytes: a node that lost its flash.
    second = s.store("cam-1", 7, b, crc=zlib.crc32(b), received_at=T0, captured_at=T0)
    assert first is not None and second is not None and first.path != second.path
    assert (tmp_path / first.path).read_bytes() == a
    assert (tmp_path / second.path).read_bytes() == b
    assert sorted(f.path for f in s.frames("cam-1")) == sorted([first.path, second.path])
    assert all_files(tmp_path) >= {first.path, second.path}
    s.close()
    # Both names survive a restart's reconcile as they are.
    s = Storage(tmp_path)
    assert s.reconcile() == {"indexed": 0, "dropped_rows": 0, "removed_tmp": 0, "skipped": 0}


def test_a_file_already_at_the_frames_name_is_kept(tmp_path):
    s = Storage(tmp_path)
    squatter = tmp_path / "cam-1/2025-11-24/20251124T102640.250Z_7.jpg"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's bytes")
    jpeg = make_jpeg(seed=3)
    got = put(s, "cam-1", 7, jpeg)
    assert squatter.read_bytes() == b"someone else's bytes"
    assert got.path != "cam-1/2025-11-24/20251124T102640.250Z_7.jpg"
    assert (tmp_path / got.path).read_bytes() == jpeg


def test_index_constraint_error_is_a_permanent_rejection_that_deletes_nothing_stored(tmp_path):
    s = Storage(tmp_path)
    a = make_jpeg(seed=1)
    kept = put(s, "cam-1", 1, a)
    # A row names the path the next frame will get, but its file is gone (deleted by hand
    # while the service ran): the UNIQUE(path) constraint refuses the new row.
    with s.db:
        s.db.execute("INSERT INTO frames (node, frame_id, captured_at, received_at, taken_at, "
                     "bytes, crc, path) VALUES ('cam-1', 2, ?, ?, ?, 1, 99, "
                     "'cam-1/2025-11-24/20251124T102700.000Z_2.jpg')", (T0, T0, T0))
    with pytest.raises(StorageRejected, match="frame 2 of node cam-1") as e:
        s.store("cam-1", 2, make_jpeg(seed=2), crc=5, received_at=T0 + 20,
                captured_at=T0 + 19.75)
    assert not isinstance(e.value, StorageError)  # not the kind that is retried
    assert (tmp_path / kept.path).read_bytes() == a
    assert not (tmp_path / "cam-1/2025-11-24/20251124T102700.000Z_2.jpg").exists()
    assert not [f for f in all_files(tmp_path) if ".tmp-" in f]


def test_latest_jpg_stays_on_the_newest_frame_when_an_older_one_completes_late(tmp_path):
    s = Storage(tmp_path)
    new, old = make_jpeg(seed=1), make_jpeg(seed=2)
    put(s, "cam-1", 9, new, T0 + 10)
    put(s, "cam-1", 8, old, T0)
    assert (tmp_path / "cam-1" / "latest.jpg").read_bytes() == new
    assert s.latest("cam-1").frame_id == 9


def test_temporary_files_do_not_look_like_jpegs(tmp_path, monkeypatch):
    s = Storage(tmp_path)
    seen: list[str] = []
    real = storage_mod._write_all

    def spy(fd, data):
        seen.extend(p.name for p in tmp_path.rglob(".tmp-*"))
        real(fd, data)

    monkeypatch.setattr(storage_mod, "_write_all", spy)
    put(s, "cam-1", 1, make_jpeg(seed=1))
    assert seen and not [n for n in seen if n.endswith(".jpg")]
