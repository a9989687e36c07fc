"""The service survives its own failures and loses nothing silently: frames waiting for the
disk when it stops, errors in its timers, an index that cannot answer, a read-only data
directory. Real Mosquitto, light nodes; the disk failures are injected at the storage layer."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend import storage as storage_mod  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.storage import Storage  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, encode_chunks, make_jpeg  # noqa: E402
from observer import Observer  # noqa: E402
from polling import wait_until  # noqa: E402

ESPCAM = str(Path(sys.executable).parent / "espcam")


@pytest.fixture
def settings(broker, data_dir):
    return Settings(broker=broker.url, data_dir=str(data_dir), client_id="failures",
                    retry_interval=0.2, resend_after=0.3)


@pytest.fixture
def cam(broker):
    n = LightNode(broker.host, broker.port, "cam-f").start()
    yield n
    n.stop()


def start(settings: Settings) -> Backend:
    b = Backend(settings).start()
    assert b.connected.wait(10)
    return b


def event_of(obs: Observer, frame_id: int, start: int = 0) -> dict:
    return obs.json_on("espcam/cam-f/event", lambda e: e["frame"] == frame_id, start=start)


REAL_WRITE_ALL = storage_mod._write_all


def disk_full(fd, data):
    raise OSError(28, "No space left on device")


def test_frame_waiting_for_the_disk_at_stop_is_logged_and_comes_back_after_restart(
        settings, cam, everything, monkeypatch, caplog):
    b = start(settings)
    monkeypatch.setattr(storage_mod, "_write_all", disk_full)
    jpeg = make_jpeg(seed=1)
    fid = cam.publish_frame(jpeg)
    wait_until(lambda: b.status()["pending_frames"] == 1, what="the frame waiting for the disk")
    b.stop()
    assert any(f"LOST frame {fid} of node cam-f: not stored when the backend stopped"
               in r.getMessage() for r in caplog.records)
    monkeypatch.undo()  # space freed while it was down
    # Its last chunk was never acknowledged: the broker hands it to the next start, which
    # asks the node (still holding the frame) for the rest.
    mark = everything.mark()
    b = start(settings)
    try:
        event = event_of(everything, fid, mark)
        assert Path(event["file"]).read_bytes() == jpeg
    finally:
        b.stop()


def test_incomplete_frame_at_stop_is_logged_and_completed_after_restart(
        settings, broker, cam, everything, caplog):
    b = start(Settings(**{**settings.__dict__, "resend_after": 60.0}))
    jpeg = make_jpeg(seed=2)
    n = len(encode_chunks(jpeg, 1, cam.chunk_size, None))
    fid = cam.publish_frame(jpeg, skip={1})
    wait_until(lambda: b.status()["frames_in_flight"] == 1, what="the incomplete frame")
    b.stop()
    assert any(f"LOST frame {fid} of node cam-f: incomplete when the backend stopped"
               in r.getMessage() and f"1 of {n} chunks missing" in r.getMessage()
               for r in caplog.records)
    mark = everything.mark()
    b = start(settings)
    try:
        assert Path(event_of(everything, fid, mark)["file"]).read_bytes() == jpeg
    finally:
        b.stop()


def test_an_error_in_the_timers_does_not_end_the_service(settings, cam, everything,
                                                         monkeypatch, caplog):
    b = start(settings)
    try:
        def broken(now):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(b.reassembler, "tick", broken)
        wait_until(lambda: b.status()["counters"].get("errors", 0) >= 2, what="the timers to fail")
        fid = cam.publish_frame(make_jpeg(seed=3))
        event_of(everything, fid)
        assert any("unexpected error in the backend's timers" in r.getMessage()
                   for r in caplog.records)
    finally:
        monkeypatch.undo()
        b.stop()


def test_retention_on_a_full_disk_after_a_storage_retry_does_not_end_the_service(
        settings, cam, everything, monkeypatch):
    b = start(Settings(**{**settings.__dict__, "retention_days": 1.0}))
    try:
        monkeypatch.setattr(storage_mod, "_write_all", disk_full)
        first = cam.publish_frame(make_jpeg(seed=4))
        wait_until(lambda: b.status()["pending_frames"] == 1, what="the frame waiting for the disk")

        def full(self, node, now=None):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(storage_mod.Storage, "apply_retention", full)
        monkeypatch.setattr(storage_mod, "_write_all", REAL_WRITE_ALL)  # space freed
        # The retry (from the timers) stores the frame; retention fails after it.
        event_of(everything, first)
        second = cam.publish_frame(make_jpeg(seed=5))
        event_of(everything, second)
        assert b.status()["pending_frames"] == 0
    finally:
        monkeypatch.undo()
        b.stop()


def test_index_that_cannot_answer_keeps_the_frame_for_a_retry(settings, cam, everything,
                                                              monkeypatch):
    b = start(settings)
    try:
        def io_error(self, *a, **kw):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(storage_mod.Storage, "has", io_error)
        jpeg = make_jpeg(seed=6)
        fid = cam.publish_frame(jpeg)
        wait_until(lambda: b.status()["pending_frames"] == 1, what="the frame kept for a retry")
        assert "disk I/O error" in b.status()["storage"]
        monkeypatch.undo()
        assert Path(event_of(everything, fid)["file"]).read_bytes() == jpeg
    finally:
        monkeypatch.undo()
        b.stop()


def test_index_constraint_error_rejects_the_frame_for_good_not_retried(settings, cam,
                                                                       everything, data_dir,
                                                                       caplog):
    b = start(settings)
    try:
        t = 1763980000.25
        clash = f"cam-f/2025-11-24/{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M%S}.250Z_7.jpg"
        with sqlite3.connect(data_dir / "index.sqlite3") as db:  # a row whose file is gone
            db.execute("INSERT INTO frames (node, frame_id, received_at, taken_at, bytes, crc, "
                       "path) VALUES ('cam-f', 7, ?, ?, 1, 1, ?)", (t, t, clash))
        cam.publish_frame(make_jpeg(seed=7), 7, meta={"t": t, "trigger": "interval"})
        later = cam.publish_frame(make_jpeg(seed=8), 8)
        event_of(everything, later)
        status = b.status()
        assert status["pending_frames"] == 0 and status["storage"] == "ok"
        assert status["counters"]["storage_rejected"] == 1
        assert any("LOST frame 7 of node cam-f: REJECTED" in r.getMessage()
                   for r in caplog.records)
    finally:
        b.stop()


@pytest.fixture
def read_only_data(tmp_path):
    """A data directory with one stored frame on a file system mounted read-only (needs
    root, as root ignores permission bits)."""
    import os

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        s = Storage(mnt / "data")
        s.update_node("cam-ro", seen_at=time.time(), availability="online")
        s.store("cam-ro", 1, make_jpeg(seed=1), crc=1, received_at=time.time())
        s.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "data"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def espcam(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ESPCAM, *args], capture_output=True, text=True, timeout=60)


def test_read_only_data_dir_serve_says_so_and_listing_works(read_only_data, broker):
    r = espcam("serve", "--broker", broker.url, "--data-dir", str(read_only_data))
    assert r.returncode == 1, r.stderr
    assert "cannot open" in r.stderr and "read-only" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = espcam("nodes", "--data-dir", str(read_only_data))
    assert r.returncode == 0 and "cam-ro" in r.stdout, r.stderr
    r = espcam("frames", "cam-ro", "--data-dir", str(read_only_data))
    assert r.returncode == 0 and "cam-ro/" in r.stdout, r.stderr
    assert "Traceback" not in r.stderr
