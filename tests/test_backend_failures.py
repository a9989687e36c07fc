"""The service survives its own failures and loses nothing silently: frames waiting for the
disk when it stops, errors in its timers, a disk that fills up, an index that cannot answer, a
read-only data directory. Real Mosquitto, light nodes; a full disk is a real one (a small tmpfs
filled to the last byte, which needs root), as is a read-only one."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend import storage as storage_mod  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
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


def mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB file system for the data directory; `fill()` takes its last byte,
    `free()` gives the space back."""
    mnt = tmp_path / "disk"
    mount_tmpfs(mnt, "8m")
    try:
        yield Disk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class Disk:
    def __init__(self, mnt: Path) -> None:
        self.mnt, self.data = mnt, mnt / "data"
        self.filler = mnt / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 1 << 12, 1):  # whole blocks first, then the last bytes
                block = bytes(size)
                try:
                    while True:
                        os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()

    def jpegs(self) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self.data.rglob("*.jpg")}


def test_status_saying_the_disk_is_full_counts_the_frame_waiting_for_it(settings, cam,
                                                                          everything,
                                                                          small_disk):
    # The status is published as the disk fails, while the frame is handed over to wait for
    # it: a race that showed in 1 of 5 cycles, repeated so that it cannot hide.
    b = start(Settings(**{**settings.__dict__, "data_dir": str(small_disk.data)}))
    try:
        for fid in range(1, 41):
            small_disk.fill()
            mark = everything.mark()
            cam.publish_frame(make_jpeg(seed=fid), fid)
            full = everything.json_on("espcam/_backend/status", lambda d: d["storage"] != "ok",
                                      start=mark)
            assert "disk full (" in full["storage"] and full["pending_frames"] == 1, (fid, full)
            small_disk.free()
            event_of(everything, fid, mark)
            everything.json_on("espcam/_backend/status", lambda d: d["storage"] == "ok",
                               start=mark)
    finally:
        b.stop()


def test_frame_waiting_for_the_disk_at_stop_is_logged_and_comes_back_after_restart(
        settings, cam, everything, small_disk, caplog):
    settings = Settings(**{**settings.__dict__, "data_dir": str(small_disk.data)})
    b = start(settings)
    small_disk.fill()
    jpeg = make_jpeg(seed=1)
    fid = cam.publish_frame(jpeg)
    wait_until(lambda: b.status()["pending_frames"] == 1, what="the frame waiting for the disk")
    assert "disk full" in b.status()["storage"]
    b.stop()
    assert any(f"LOST frame {fid} of node cam-f: not stored when the backend stopped"
               in r.getMessage() for r in caplog.records)
    small_disk.free()  # space freed while it was down
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


def test_full_disk_keeps_serving_and_loses_nothing_once_space_is_freed(
        settings, cam, everything, small_disk):
    """Retention runs every 0.2 s here, on the full disk too (docs/backend.md: a failing run is
    tried again later and never stops the service)."""
    settings = Settings(**{**settings.__dict__, "data_dir": str(small_disk.data),
                           "retention_days": 1.0, "retention_interval": 0.2})
    b = start(settings)
    try:
        sent = {1: make_jpeg(seed=11)}
        assert Path(event_of(everything, cam.publish_frame(sent[1], 1))["file"]).read_bytes() \
            == sent[1]
        before = small_disk.jpegs()
        small_disk.fill()
        mark = everything.mark()
        sent[2] = make_jpeg(seed=12)
        cam.publish_frame(sent[2], 2)
        # What a user sees: the retained status says the disk is full, and one frame waits.
        full = everything.json_on("espcam/_backend/status", lambda d: d["storage"] != "ok",
                                  start=mark)
        assert "disk full (" in full["storage"], full
        wait_until(lambda: b.status()["pending_frames"] == 1, what="the frame waiting")
        # Still serving while full: another frame is taken in and kept, Home Assistant coming
        # online gets its discovery, and nothing stored is touched.
        sent[3] = make_jpeg(seed=13)
        cam.publish_frame(sent[3], 3)
        wait_until(lambda: b.status()["pending_frames"] == 2, what="the second waiting frame")
        assert "disk full (" in b.status()["storage"]
        ha = everything.mark()
        everything.c.publish("homeassistant/status", "online", qos=1)
        everything.topic("homeassistant/device/espcam_cam-f/config", start=ha)
        assert small_disk.jpegs() == before
        # No partial file is left behind (a retry in progress has one for a moment).
        wait_until(lambda: not list(small_disk.data.rglob(".tmp-*")), 10, "no temporary file")
        assert not [e for e in everything.msgs[mark:] if e.topic == "espcam/cam-f/event"]
        # Space freed: both waiting frames are stored and announced, the status says so, and
        # a frame sent afterwards is stored as usual.
        small_disk.free()
        for fid in (2, 3):
            assert Path(event_of(everything, fid, mark)["file"]).read_bytes() == sent[fid]
        ok = everything.json_on("espcam/_backend/status", lambda d: d["storage"] == "ok",
                                start=mark)
        assert ok["pending_frames"] == 0
        sent[4] = make_jpeg(seed=14)
        assert Path(event_of(everything, cam.publish_frame(sent[4], 4), mark)["file"]
                    ).read_bytes() == sent[4]
        stored = {int(p.stem.split("_")[1]): body for p, body in small_disk.jpegs().items()
                  if p.name != "latest.jpg"}
        assert stored == sent
        status = b.status()
        assert status["storage"] == "ok" and status["pending_frames"] == 0
        assert status["counters"]["frames_stored"] == 4
        assert status["counters"].get("frames_lost", 0) == 0
        assert status["counters"].get("errors", 0) == 0
    finally:
        b.stop()


def test_past_max_pending_frames_a_version_2_frame_is_not_lost_but_taken_when_sent_again(
        settings, broker, everything, small_disk, caplog):
    """The disk full and the lanes full: a version 2 node still holds the frames the backend
    cannot take, so they are refused for now, neither counted lost nor taken for duplicates
    when the node sends them again, and stored once there is room."""
    b = start(Settings(**{**settings.__dict__, "data_dir": str(small_disk.data),
                          "max_pending_frames": 2}))
    cam = LightNode(broker.host, broker.port, "cam-p", proto=2, hold=10,
                    confirm_timeout=1.0).start()
    try:
        small_disk.fill()
        sent = {fid: make_jpeg(seed=20 + fid) for fid in range(1, 6)}
        for fid, jpeg in sent.items():
            cam.publish_frame(jpeg, fid)
        # Two wait in the lanes, three do not fit.
        def past_the_bound() -> int:
            c = b.status()["counters"]
            return c.get("frames_refused_storage", 0) + c.get("frames_lost_storage", 0)

        wait_until(lambda: past_the_bound() >= 3, 60, "three frames past the bound")
        assert b.status()["counters"].get("frames_lost_storage", 0) == 0
        assert not any("LOST" in r.getMessage() for r in caplog.records)
        # The node sends them again meanwhile: refused again, still not lost.
        wait_until(lambda: past_the_bound() >= 6, 60, "the three sent again")
        assert not cam.confirmed
        small_disk.free()
        wait_until(lambda: set(cam.confirmed) == set(sent), 60, "every frame confirmed")
        assert set(cam.confirmed.values()) == {"stored"}
        stored = {int(p.stem.split("_")[1]): body for p, body in small_disk.jpegs().items()
                  if p.name != "latest.jpg"}
        assert stored == sent
        assert b.status()["counters"].get("frames_lost", 0) == 0
        assert not any("LOST" in r.getMessage() for r in caplog.records)
    finally:
        cam.stop()
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
def read_only_data(tmp_path, broker):
    """A data directory with one frame stored by the backend, on a file system then mounted
    read-only (needs root, as root ignores permission bits)."""
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, "4m")
    try:
        cam = LightNode(broker.host, broker.port, "cam-ro").start()
        obs = Observer(broker.host, broker.port)
        b = start(Settings(broker=broker.url, data_dir=str(mnt / "data"), client_id="ro"))
        try:
            fid = cam.publish_frame(make_jpeg(seed=1))
            obs.json_on("espcam/cam-ro/event", lambda e: e["frame"] == fid)
        finally:
            b.stop()
            obs.close()
            cam.stop()
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
