"""The backend service against a real Mosquitto, fed by light nodes (tests/lightnode.py)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend import storage as storage_mod  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, Watcher, encode_chunks, make_jpeg  # noqa: E402
from observer import retained as retained_at  # noqa: E402
from polling import wait_until  # noqa: E402

VECTORS = json.loads((Path(__file__).parent / "vectors" / "chunks.json").read_text())


@pytest.fixture
def settings(broker, data_dir):
    return Settings(broker=broker.url, data_dir=str(data_dir), resend_after=0.3,
                    retry_interval=0.2, client_id="backend-under-test")


@pytest.fixture
def backend(settings):
    b = Backend(settings).start()
    assert b.connected.wait(10)
    yield b
    b.stop()


@pytest.fixture
def watch(broker):
    made: list[Watcher] = []

    def make(*topics: str) -> Watcher:
        w = Watcher(broker.host, broker.port, *topics)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def broker_of(node: LightNode) -> tuple[str, int]:
    return node.host, node.port


def retained(where: tuple[str, int], topic: str) -> bytes | None:
    return retained_at(where[0], where[1], topic)


def stored_events(w: Watcher, node: str) -> list[dict]:
    return w.json(f"espcam/{node}/event")


def wait_stored(w: Watcher, node: str, frame_id: int) -> dict:
    return w.wait_for(lambda _: next((e for e in stored_events(w, node)
                                      if e["frame"] == frame_id), None))


def index_rows(data_dir: Path) -> list[tuple]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return db.execute("SELECT node, frame_id, bytes, path FROM frames ORDER BY node, "
                          "frame_id").fetchall()


def test_frames_from_several_nodes_are_stored_identical_indexed_once(backend, light_node, watch,
                                                                      data_dir, broker):
    w = watch("espcam/+/event")
    sent: dict[str, dict[int, bytes]] = {}
    cams = [light_node(f"cam-{i}", chunk_size=cs) for i, cs in enumerate((256, 1024, 4096))]
    for round_ in range(5):
        for i, cam in enumerate(cams):
            jpeg = make_jpeg(160 + 16 * i, 120, seed=100 * i + round_)
            sent.setdefault(cam.node, {})[cam.publish_frame(jpeg)] = jpeg
    # A whole frame sent again (a node that missed its PUBACK does this): stored once.
    fid, jpeg = next(iter(sent["cam-0"].items()))
    cams[0].publish_frame(jpeg, fid)
    last = cams[0].publish_frame(make_jpeg(seed=999))
    sent["cam-0"][last] = make_jpeg(seed=999)
    for cam in cams:
        for fid in sent[cam.node]:
            wait_stored(w, cam.node, fid)
    rows = index_rows(data_dir)
    assert len(rows) == sum(len(v) for v in sent.values())
    assert len({(r[0], r[1]) for r in rows}) == len(rows)
    for node, frame_id, size, path in rows:
        assert (data_dir / path).read_bytes() == sent[node][frame_id]
        assert size == len(sent[node][frame_id])
    assert sum(len(stored_events(w, c.node)) for c in cams) == len(rows)
    # A newcomer (Home Assistant) gets each node's latest frame from the retained `image`.
    images = watch("espcam/+/image")
    for cam in cams:
        newest = sent[cam.node][max(sent[cam.node])]
        images.wait_for(lambda msgs, n=cam.node: any(t == f"espcam/{n}/image" for t, _, _ in msgs))
        assert images.payloads(f"espcam/{cam.node}/image") == [newest]
        assert (data_dir / cam.node / "latest.jpg").read_bytes() == newest
    event = stored_events(w, "cam-1")[0]
    assert event["width"] == 176 and event["height"] == 120 and event["trigger"] == "interval"


def test_dropped_chunks_are_requested_again_and_the_frame_completes(backend, light_node, watch,
                                                                     data_dir):
    w = watch("espcam/+/event")
    cam = light_node("cam-drop", chunk_size=256)
    jpeg = make_jpeg(seed=5)
    n = len(encode_chunks(jpeg, 1, 256, None))
    fid = cam.publish_frame(jpeg, skip={0, 2, n - 1})
    event = wait_stored(w, "cam-drop", fid)
    assert (data_dir / event["path"]).read_bytes() == jpeg
    # Asked for exactly the missing chunks. (A slow round trip, past resend_after=0.3 s, can
    # bring a second request for what is still missing; that is not what this test is about.)
    assert cam.resend_requests[0]["chunks"] == [0, 2, n - 1]
    assert all(r["frame"] == fid for r in cam.resend_requests)


def test_frame_no_longer_held_is_counted_lost_with_a_log_line(backend, light_node, watch, data_dir,
                                                               caplog):
    w = watch("espcam/+/event")
    cam = light_node("cam-lost")
    gone = cam.publish_frame(make_jpeg(seed=1), skip={1})
    kept = cam.publish_frame(make_jpeg(seed=2))  # the node now holds this one only
    wait_stored(w, "cam-lost", kept)
    w.wait_for(lambda _: backend.status()["counters"].get("frames_lost") == 1)
    assert [e["frame"] for e in stored_events(w, "cam-lost")] == [kept]
    wait_until(lambda: any(f"LOST frame {gone} of node cam-lost" in r.getMessage()
                           and "no longer held" in r.getMessage() for r in caplog.records),
               10, "the LOST line")
    assert backend.status()["frames_in_flight"] == 0


def test_chunk_corrupted_on_the_way_is_asked_for_again_and_the_frame_stored(backend, light_node,
                                                                             watch, data_dir):
    w = watch("espcam/+/event")
    cam = light_node("cam-crc")
    jpeg = make_jpeg(seed=1)
    fid = cam.publish_frame(jpeg, corrupt={1})  # the node's own copy is intact
    event = wait_stored(w, "cam-crc", fid)
    assert (data_dir / event["path"]).read_bytes() == jpeg
    n = len(encode_chunks(jpeg, fid, cam.chunk_size, None))
    req = cam.resend_requests[0]
    assert req["frame"] == fid and req.get("chunks", list(range(n))) == list(range(n))
    assert all(r["frame"] == fid for r in cam.resend_requests)
    counters = backend.status()["counters"]
    assert counters["crc_failures"] == 1 and counters.get("frames_lost", 0) == 0


def test_frame_corrupt_at_the_node_fails_crc_twice_is_lost_and_not_stored(
        backend, light_node, watch, data_dir, caplog):
    w = watch("espcam/+/event")
    cam = light_node("cam-bad")
    bad = cam.publish_frame(make_jpeg(seed=1), corrupt={1}, corrupt_held=True)
    w.wait_for(lambda _: backend.status()["counters"].get("frames_lost") == 1)
    good = cam.publish_frame(make_jpeg(seed=2))
    wait_stored(w, "cam-bad", good)
    assert [r[1] for r in index_rows(data_dir)] == [good]
    assert cam.resend_requests and all(r["frame"] == bad for r in cam.resend_requests)
    assert backend.status()["counters"]["crc_failures"] == 2
    assert any(f"LOST frame {bad} of node cam-bad" in r.getMessage() and "CRC32" in
               r.getMessage() for r in caplog.records)


def test_crc_and_non_jpeg_log_lines_are_rate_limited(backend, light_node, watch, data_dir, caplog):
    backend._warn.every = 3600  # one line per node and kind for the whole test
    w = watch("espcam/+/event")
    cam = light_node("cam-noisy", hold=10)  # each corrupt frame is resent (corrupt) once
    for fid in range(1, 6):
        cam.publish_frame(bytes(range(256)) * 8, fid)  # not a JPEG
    for fid in range(6, 9):
        cam.publish_frame(make_jpeg(seed=fid), fid, corrupt={0}, corrupt_held=True)
    w.wait_for(lambda _: backend.status()["counters"].get("frames_lost") == 3)
    wait_stored(w, "cam-noisy", cam.publish_frame(make_jpeg(seed=9), 9))
    counters = backend.status()["counters"]
    assert counters["not_jpeg"] == 5 and counters["crc_failures"] == 6
    lines = [r.getMessage() for r in caplog.records if "cam-noisy" in r.getMessage()]
    assert len([m for m in lines if "not stored" in m and "JPEG" in m]) == 1
    assert len([m for m in lines if "CRC32" in m]) <= 2  # the retry warning and the LOST


def test_latest_and_retained_image_never_go_back_to_an_older_frame(backend, light_node, watch,
                                                                    data_dir):
    w = watch("espcam/+/event")
    cam = light_node("cam-order", hold=2)
    old, new = make_jpeg(seed=1), make_jpeg(seed=2)
    t = time.time()
    first = cam.publish_frame(old, meta={"t": t - 5, "trigger": "interval"}, skip={0})
    second = cam.publish_frame(new, meta={"t": t, "trigger": "interval"})
    wait_stored(w, "cam-order", second)
    wait_stored(w, "cam-order", first)  # completed later, after its resend
    assert [e["frame"] for e in stored_events(w, "cam-order")] == [second, first]
    assert (data_dir / "cam-order" / "latest.jpg").read_bytes() == new
    assert retained(broker_of(cam), "espcam/cam-order/image") == new


def test_malformed_chunks_and_non_jpeg_frames_are_dropped(backend, light_node, watch, data_dir):
    w = watch("espcam/+/event")
    cam = light_node("cam-junk")
    for case in VECTORS["invalid"]:
        cam.client.publish(cam.t("frame"), bytes.fromhex(case["chunk_hex"]), qos=1)
    cam.client.publish(cam.t("frame"), b"", qos=1)
    not_jpeg = bytes(range(256)) * 20
    cam.publish_frame(not_jpeg, 50)
    # Well-formed, but claims 5 MB: above the default max_frame_bytes of 4 MiB.
    huge = encode_chunks(b"\x00" * 5_000_000, 51, 65536, None)[0]
    cam.client.publish(cam.t("frame"), huge, qos=1)
    good = cam.publish_frame(make_jpeg(seed=3), 52)
    wait_stored(w, "cam-junk", good)
    counters = backend.status()["counters"]
    assert counters["bad_chunks"] == len(VECTORS["invalid"]) + 1
    assert counters["not_jpeg"] == 1
    assert counters["rejected_chunks"] == 1  # the one over max_frame_bytes
    assert [r[1] for r in index_rows(data_dir)] == [good]


HOSTILE = ["..", "...", "A", "-lead", "_backendx", "é", "cam-" + "x" * 40, "x" * 10_000,
           "%2e%2e", "cam 1"]
# With a slash the topic has more levels than <prefix>/+/<kind>: the broker does not even
# deliver it to the backend's subscriptions.
SLASHED = ["../x", "../../etc", "a/../b", "a/b", "x/"]


def test_hostile_node_ids_are_dropped_and_nothing_leaves_the_data_dir(backend, broker, light_node,
                                                                       watch, tmp_path, data_dir):
    w = watch("espcam/+/event")
    evil = LightNode(broker.host, broker.port, "evil-client")
    evil.start()
    jpeg = make_jpeg(seed=1)
    for node in HOSTILE + SLASHED:
        evil.node = node  # publish under another node's name, as a hostile client would
        evil.publish_frame(jpeg, 1)
        evil.client.publish(f"espcam/{node}/state", b'{"proto": 1, "frame": 7}', qos=1)
        evil.client.publish(f"espcam/{node}/availability", b"online", qos=1)
    evil.node = "evil-client"
    evil.stop()
    # NUL is not allowed in an MQTT topic: the broker drops the connection of a client that
    # sends one, so the backend never sees it.
    nul = LightNode(broker.host, broker.port, "nul-client").start()
    nul.client.publish("espcam/cam\x00/frame", encode_chunks(jpeg, 1, 1024, None)[0], qos=1)
    w.wait_for(lambda _: not nul.client.is_connected())
    nul.stop()
    cam = light_node("cam-ok")
    wait_stored(w, "cam-ok", cam.publish_frame(jpeg))
    assert [r[0] for r in index_rows(data_dir)] == ["cam-ok"]
    top = {p.name for p in data_dir.iterdir()}
    assert top <= {"index.sqlite3", "index.sqlite3-journal", "index.sqlite3-wal",
                   "index.sqlite3-shm", "cam-ok", "evil-client", "nul-client"}
    outside = {p.name for p in tmp_path.iterdir()}
    assert outside == {"data", "broker"}
    chunks = len(encode_chunks(jpeg, 1, evil.chunk_size, None))
    status = backend.status()
    assert status["counters"]["bad_topics"] == (chunks + 2) * len(HOSTILE)
    # Nothing of them is held: no node state, no frame in memory, nothing queued.
    assert set(backend.nodes.views) <= {"cam-ok", "evil-client", "nul-client"}
    assert status["frames_in_flight"] == 0 and status["bytes_in_flight"] == 0
    assert status["queued_messages"] == 0 and status["nodes"] == len(backend.nodes.views)


def test_incomplete_frame_flood_keeps_memory_bounded(broker, light_node, watch, data_dir):
    limits = dict(max_frames_per_node=2, max_frames_total=4, resend_after=60)
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="flood",
                         **limits)).start()
    try:
        w = watch("espcam/+/event")
        floods = [light_node(f"flood-{i}", chunk_size=256) for i in range(3)]
        jpeg = make_jpeg(seed=1)
        for fid in range(1, 40):
            for n in floods:
                # The last frame waits for the broker's PUBACK, so the broker has it all.
                n.publish_frame(jpeg, fid, skip={1}, wait=fid == 39)
                status = b.status()
                assert status["frames_in_flight"] <= 4
                assert status["bytes_in_flight"] <= b.settings.max_bytes_total
        sent = 3 * 39 * (len(encode_chunks(jpeg, 1, 256, None)) - 1)
        wait_until(lambda: b.status()["counters"]["chunks"] >= sent, 60, "the flood's chunks")
        status = b.status()
        assert status["frames_in_flight"] <= 4
        # Every incomplete frame is either still held or counted lost, exactly once.
        assert status["counters"]["frames_lost"] + status["frames_in_flight"] == 3 * 39
        good = floods[0].publish_frame(make_jpeg(seed=2), 100)
        wait_stored(w, "flood-0", good)
        assert b.status()["frames_in_flight"] <= 4
    finally:
        b.stop()


def test_full_disk_is_reported_service_stays_up_and_the_frame_is_kept(backend, light_node, watch,
                                                                       data_dir, monkeypatch):
    w = watch("espcam/+/event", "espcam/_backend/status")
    cam = light_node("cam-disk")
    first = make_jpeg(seed=1)
    wait_stored(w, "cam-disk", cam.publish_frame(first))
    before = {p: p.read_bytes() for p in data_dir.rglob("*.jpg")}

    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage_mod, "_write_all", disk_full)
    second = make_jpeg(seed=2)
    fid = cam.publish_frame(second)
    status = w.wait_for(lambda _: next((s for s in w.json("espcam/_backend/status")
                                        if s["storage"] != "ok"), None))
    assert "disk full" in status["storage"] and status["pending_frames"] == 1
    # Still serving: a state document naming a frame of which nothing arrived is handled while
    # storage is down, and the backend asks the node for that frame.
    gone = cam.publish_frame(make_jpeg(seed=3), skip=range(1000))
    cam.publish_state()
    w.wait_for(lambda _: any(r["frame"] == gone for r in cam.resend_requests))
    assert {p: p.read_bytes() for p in data_dir.rglob("*.jpg")} == before
    wait_until(lambda: not list(data_dir.rglob(".tmp-*")), 10, "no temporary file")
    monkeypatch.undo()  # space freed
    event = wait_stored(w, "cam-disk", fid)
    assert (data_dir / event["path"]).read_bytes() == second
    assert (data_dir / wait_stored(w, "cam-disk", gone)["path"]).read_bytes() == make_jpeg(seed=3)
    w.wait_for(lambda _: w.json("espcam/_backend/status")[-1]["storage"] == "ok")


def test_backend_availability_is_retained_with_a_last_will(settings, watch):
    b = Backend(settings).start()
    assert b.connected.wait(10)
    w = watch("espcam/_backend/availability")
    w.wait_for(lambda _: w.payloads("espcam/_backend/availability")[-1:] == [b"online"])
    b.stop()
    w.wait_for(lambda _: w.payloads("espcam/_backend/availability")[-1:] == [b"offline"])


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB file system (tmpfs), so the disk fills up for real; needs root."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk_then_space_freed(broker, light_node, watch, tiny_fs):
    data_dir = tiny_fs / "data"
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="tiny",
                         retry_interval=0.2, max_pending_frames=100)).start()
    try:
        w = watch("espcam/+/event", "espcam/_backend/status")
        cam = light_node("cam-full", chunk_size=4096)
        sent: dict[int, bytes] = {}
        # Until a frame cannot be written; the status saying so follows on the next tick.
        while not b.status()["pending_frames"]:
            jpeg = make_jpeg(320, 240, seed=len(sent))  # ~60 KB of noise each
            sent[cam.publish_frame(jpeg)] = jpeg
            w.wait_for(lambda _: b.status()["pending_frames"] or b.status()["counters"].get(
                "frames_stored", 0) == len(sent))
            assert len(sent) < 50, "the 256 KiB file system never filled up"
        w.wait_for(lambda _: any(s["storage"] != "ok" for s in w.json("espcam/_backend/status")))
        status = [s for s in w.json("espcam/_backend/status") if s["storage"] != "ok"][0]
        assert "disk full" in status["storage"] or "full" in status["storage"]
        stored = {e["frame"]: e["path"] for e in w.json("espcam/cam-full/event")}
        for fid, path in stored.items():
            assert (data_dir / path).read_bytes() == sent[fid]  # nothing stored was damaged
        # No partial file is left behind (a retry in progress has one for a moment).
        wait_until(lambda: not list(data_dir.rglob(".tmp-*")), 10, "no temporary file")
        # Still serving: the state names a frame of which nothing arrived; it is asked for.
        gone = cam.publish_frame(make_jpeg(320, 240, seed=999), skip=range(1000))
        sent[gone] = make_jpeg(320, 240, seed=999)
        cam.publish_state()
        w.wait_for(lambda _: any(r["frame"] == gone for r in cam.resend_requests))
        subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_fs)], check=True)
        for fid in sent:
            assert (data_dir / wait_stored(w, "cam-full", fid)["path"]).read_bytes() == sent[fid]
        assert b.status()["storage"] == "ok" and b.status()["pending_frames"] == 0
    finally:
        b.stop()


def test_backend_reconnects_by_itself_after_the_broker_restarts(backend, broker, watch,
                                                                data_dir):
    cam = LightNode(broker.host, broker.port, "cam-re").start()
    try:
        w = watch("espcam/+/event")
        wait_stored(w, "cam-re", cam.publish_frame(make_jpeg(seed=1)))
        w.close()
        seen = broker.log.stat().st_size
        broker.restart()  # same port; persistence keeps the backend's session
        # The new broker sees the backend come back (its retained availability would say
        # "online" from the saved state before it did), with its session kept.
        wait_until(lambda: re.search(r"New client connected .* as backend-under-test \(p\d, c0",
                                     broker.log.read_text()[seen:]), 60,
                   "the backend's reconnection")
        w = watch("espcam/+/event")
        assert cam.connected.wait(30)  # paho's light node reconnects too
        w.wait_for(lambda _: cam.client.is_connected(), timeout=60)
        after = make_jpeg(seed=2)
        fid = cam.publish_frame(after)
        event = wait_stored(w, "cam-re", fid)
        assert (data_dir / event["path"]).read_bytes() == after
    finally:
        cam.stop()


def test_retention_runs_periodically_without_new_frames(broker, data_dir, watch):
    # Frames of a node that has stopped sending: only a periodic run can delete them.
    old = storage_mod.Storage(data_dir)
    now = time.time()
    jpegs = [make_jpeg(seed=i) for i in range(3)]
    for fid, jpeg in enumerate(jpegs, start=1):
        old.store("cam-gone", fid, jpeg, crc=fid, received_at=now - 10 * 86400 + fid,
                  captured_at=now - 10 * 86400 + fid)
    old.close()
    assert len(list(data_dir.glob("cam-gone/*/*.jpg"))) == 3
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="retention",
                         retention_days=1)).start()
    try:
        w = watch("espcam/_backend/status")
        w.wait_for(lambda _: len(list(data_dir.glob("cam-gone/*/*.jpg"))) == 1)
        # The newest frame of a node is always kept.
        (kept,) = data_dir.glob("cam-gone/*/*.jpg")
        assert kept.read_bytes() == jpegs[-1]
    finally:
        b.stop()
