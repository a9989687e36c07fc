"""Protocol version 2 on the backend's side (docs/protocol.md, "Confirmation and the spool"):
a frame is confirmed once stored, frames that can never be stored and frames a node drops are
counted lost once and confirmed lost, and a node's unconfirmed frames reach a backend that was
down, crashed or never ran. Light nodes of version 2 (tests/lightnode.py) on a real Mosquitto."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker import Broker  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, make_jpeg  # noqa: E402
from polling import wait_until  # noqa: E402

ESPCAM = str(Path(sys.executable).parent / "espcam")


@pytest.fixture
def settings(broker, data_dir):
    return Settings(broker=broker.url, data_dir=str(data_dir), resend_after=0.3,
                    client_id="backend-v2")


@pytest.fixture
def backend(settings):
    b = Backend(settings).start()
    assert b.connected.wait(10)
    yield b
    b.stop()


def node2(broker, name: str, **kw) -> LightNode:
    kw.setdefault("hold", 100)
    return LightNode(broker.host, broker.port, name, proto=2, **kw).start()


def stored_ids(data_dir: Path, node: str) -> set[int]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return {r[0] for r in db.execute("SELECT frame_id FROM frames WHERE node = ?", (node,))}


def test_stored_frames_are_confirmed_and_a_frame_sent_again_is_confirmed_again(
        backend, broker, observer, data_dir):
    cam = node2(broker, "cam-c1")
    try:
        sent = {cam.publish_frame(make_jpeg(seed=i)): make_jpeg(seed=i) for i in range(3)}
        wait_until(lambda: set(cam.confirmed) == set(sent), 30, "confirmations of every frame")
        assert set(cam.confirmed.values()) == {"stored"} and not cam.history
        for fid, jpeg in sent.items():
            event = observer.json_on("espcam/cam-c1/event", lambda e, f=fid: e["frame"] == f)
            assert Path(event["file"]).read_bytes() == jpeg
        # A node that missed the confirmation sends the frame again: stored once, confirmed
        # again, not announced again.
        fid = min(sent)
        mark = observer.mark()
        cam.confirmed.clear()
        cam.held = (fid, cam_chunks(cam, sent[fid], fid))
        cam.resend_unconfirmed()
        wait_until(lambda: cam.confirmed.get(fid) == "stored", 30, "the confirmation again")
        assert stored_ids(data_dir, "cam-c1") == set(sent)
        assert not [m for m in observer.msgs[mark:] if m.topic == "espcam/cam-c1/event"]
    finally:
        cam.stop()


def cam_chunks(cam: LightNode, jpeg: bytes, fid: int) -> list[bytes]:
    from espcam.backend.protocol import encode_chunks

    return encode_chunks(jpeg, fid, cam.chunk_size, {"trigger": "interval"}, version=2)


def test_a_frame_that_can_never_be_stored_is_confirmed_lost_and_counted_once(
        settings, broker, data_dir, caplog):
    b = Backend(settings).start()
    cam = node2(broker, "cam-c2")
    try:
        assert b.connected.wait(10)
        bad = cam.publish_frame(bytes(range(256)) * 8)  # not a JPEG
        good = cam.publish_frame(make_jpeg(seed=1))
        wait_until(lambda: cam.confirmed.get(bad) == "lost" and cam.confirmed.get(good),
                   30, "the two confirmations")
        assert b.status()["counters"]["not_jpeg"] == 1
        assert b.nodes.reports["cam-c2"].frames_lost == 1
    finally:
        b.stop()
    # After a restart the node sends it again (its confirmation lost, say): confirmed lost
    # again, counted no more.
    b = Backend(settings).start()
    try:
        assert b.connected.wait(10)
        cam.confirmed.clear()
        cam.held = (bad, cam_chunks(cam, bytes(range(256)) * 8, bad))
        cam.resend_unconfirmed()
        wait_until(lambda: cam.confirmed.get(bad) == "lost", 30, "the confirmation again")
        assert b.status()["counters"].get("not_jpeg", 0) == 0
        assert b.nodes.report("cam-c2").frames_lost == 0  # this run counted nothing
    finally:
        cam.stop()
        b.stop()


def test_frames_the_node_drops_are_counted_once_and_a_stored_one_is_confirmed_stored(
        backend, broker, data_dir, caplog):
    cam = node2(broker, "cam-c3")
    try:
        kept = cam.publish_frame(make_jpeg(seed=1))
        wait_until(lambda: cam.confirmed.get(kept) == "stored", 30, "frame 1 confirmed")
        cam.drop([41, 42], "spool full")
        wait_until(lambda: cam.confirmed.get(41) == cam.confirmed.get(42) == "lost", 30,
                   "the dropped frames confirmed lost")
        assert backend.status()["counters"]["frames_lost"] == 2
        assert any("LOST frames 41-42 of node cam-c3: dropped by the node: spool full"
                   in r.getMessage() for r in caplog.records)
        # The same tombstones again (their confirmation did not reach the node), and a frame
        # the node dropped that the backend had stored after all.
        cam.confirmed.clear()
        cam.drop([41, 42, kept], "spool full")
        wait_until(lambda: len(cam.confirmed) == 3, 30, "the confirmations again")
        assert cam.confirmed == {41: "lost", 42: "lost", kept: "stored"}
        assert backend.status()["counters"]["frames_lost"] == 2
        w = wait_until(lambda: retained_report(broker, "cam-c3"), 10, "the node's report")
        assert w["frames_lost"] == 2
    finally:
        cam.stop()


def retained_report(broker, node: str) -> dict | None:
    from observer import retained

    payload = retained(broker.host, broker.port, f"espcam/_backend/nodes/{node}")
    doc = json.loads(payload) if payload else None
    return doc if doc and doc.get("frames_lost") else None


def test_an_incomplete_frame_is_let_go_not_lost_and_stored_when_sent_again(
        broker, data_dir, caplog):
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="backend-v2",
                         resend_after=0.2, resend_tries=1)).start()
    cam = node2(broker, "cam-c4", confirm_timeout=3.0)
    try:
        assert b.connected.wait(10)
        cam.refuse["resend"] = "busy"  # it answers no resend request: the frame is let go
        jpeg = make_jpeg(seed=4)
        fid = cam.publish_frame(jpeg, skip={1})
        wait_until(lambda: b.status()["counters"].get("frames_let_go"), 30, "the frame let go")
        assert b.status()["counters"].get("frames_lost", 0) == 0
        assert not any("LOST" in r.getMessage() for r in caplog.records)
        # Unconfirmed, the node sends it whole again after its confirm_timeout.
        wait_until(lambda: cam.confirmed.get(fid) == "stored", 30, "the frame sent again")
        assert stored_ids(data_dir, "cam-c4") == {fid}
    finally:
        cam.stop()
        b.stop()


def test_a_backend_that_first_starts_after_the_frames_were_sent_gets_them(broker, data_dir):
    cam = node2(broker, "cam-c5", confirm_timeout=2.0)
    try:
        # No backend has ever subscribed: the broker hands these chunks to no one.
        sent = {cam.publish_frame(make_jpeg(seed=i)): make_jpeg(seed=i) for i in range(3)}
        b = Backend(Settings(broker=broker.url, data_dir=str(data_dir),
                             client_id="backend-late")).start()
        try:
            wait_until(lambda: set(cam.confirmed) == set(sent), 60, "every frame confirmed")
            assert stored_ids(data_dir, "cam-c5") == set(sent)
        finally:
            b.stop()
    finally:
        cam.stop()


def serve(broker: Broker, data_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ESPCAM_CLIENT_ID="backend-powercut")
    return subprocess.Popen([ESPCAM, "serve", "--broker", broker.url, "--data-dir",
                             str(data_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))


def test_home_server_power_cut_loses_no_frame_of_nodes_that_keep_them(tmp_path, data_dir):
    """The ordinary home failure: broker and backend die together (SIGKILL, before the broker
    saved its queue) while the nodes keep capturing; then both come back."""
    broker = Broker(tmp_path / "broker").start()
    log = tmp_path / "backend.log"
    proc = serve(broker, data_dir, log)
    cams = [node2(broker, f"cam-p{i}", confirm_timeout=3.0) for i in range(3)]
    sent: dict[str, dict[int, bytes]] = {c.node: {} for c in cams}

    def capture(rounds: int) -> None:
        for _ in range(rounds):
            for c in cams:
                jpeg = make_jpeg(seed=len(sent[c.node]) * 10 + int(c.node[-1]))
                sent[c.node][c.publish_frame(jpeg, wait=False)] = jpeg

    try:
        capture(3)
        wait_until(lambda: all(set(c.confirmed) >= set(sent[c.node]) for c in cams), 60,
                   "the first frames confirmed")
        capture(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        capture(2)  # queued by the broker, which will not have saved them
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait()
        capture(2)  # the broker is gone: the nodes keep these
        broker.start()  # same port, from its last save
        time.sleep(1)
        capture(1)
        proc = serve(broker, data_dir, log)
        capture(1)
        for c in cams:
            wait_until(lambda c=c: stored_ids(data_dir, c.node) == set(sent[c.node]), 120,
                       f"every frame of {c.node} stored")
            wait_until(lambda c=c: not c.history, 60, f"{c.node} holding nothing")
        for c in cams:
            with sqlite3.connect(data_dir / "index.sqlite3") as db:
                for fid, path in db.execute("SELECT frame_id, path FROM frames WHERE node = ?",
                                            (c.node,)):
                    assert (data_dir / path).read_bytes() == sent[c.node][fid]
        assert "LOST" not in log.read_text()
    finally:
        for c in cams:
            c.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        broker.stop()


def test_two_hundred_nodes_sending_at_the_same_moment_all_get_their_frames_stored(
        backend, broker, data_dir):
    cams = [node2(broker, f"cam-m{i:03d}", chunk_size=1024, confirm_timeout=10.0)
            for i in range(200)]
    try:
        jpeg = {c.node: make_jpeg(seed=i) for i, c in enumerate(cams)}
        # All chunks of all 200 frames first, the last chunks after, so that every frame is
        # incomplete at the same moment.
        from espcam.backend.protocol import encode_chunks

        chunks = {c.node: encode_chunks(jpeg[c.node], 1, 1024, {"trigger": "interval"},
                                        version=2) for c in cams}
        for c in cams:
            c.held = (1, chunks[c.node])
            for part in chunks[c.node][:-1]:
                c.client.publish(c.t("frame"), part, qos=0)
        for c in cams:
            c.client.publish(c.t("frame"), chunks[c.node][-1], qos=1)
        wait_until(lambda: all(c.confirmed.get(1) == "stored" for c in cams), 180,
                   "every node's frame confirmed stored")
        with sqlite3.connect(data_dir / "index.sqlite3") as db:
            rows = db.execute("SELECT node, path FROM frames").fetchall()
        assert len(rows) == 200
        assert all((data_dir / path).read_bytes() == jpeg[node] for node, path in rows)
        assert backend.status()["counters"].get("frames_lost", 0) == 0
    finally:
        for c in cams:
            c.stop()


def test_a_storage_stall_keeps_the_backend_connected_and_loses_nothing(
        broker, data_dir, everything, monkeypatch):
    """A disk that hangs (every frame's write waits) while nodes send. The lanes fill, the loop
    parks a frame and takes no more messages, the inbox fills and paho stops reading: the
    broker keeps the rest, the nodes hold every frame and send it again. The backend's session
    has no MQTT keepalive (the broker's log says `k0`), so no silence times it out, however
    long: the stall here lasts until the intake is full and every node has sent its frames
    again, not 120 s (the issue's figure), which only the waiting would add."""
    from espcam.backend.storage import Storage
    from observer import parse_chunk

    thawed = threading.Event()
    real_store = Storage.store

    def frozen_store(self, *a, **kw):
        thawed.wait()
        return real_store(self, *a, **kw)

    monkeypatch.setattr(Storage, "store", frozen_store)
    limit = 256 * 1024
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="backend-stall",
                         max_pending_frames=4, max_queue_bytes=limit)).start()
    cams: list[LightNode] = []
    try:
        assert b.connected.wait(10)
        cams = [node2(broker, f"cam-st{i}", confirm_timeout=2.0) for i in range(4)]
        sent = {c.node: {} for c in cams}
        for k in range(8):
            for i, c in enumerate(cams):
                jpeg = make_jpeg(320, 240, seed=100 * i + k)
                sent[c.node][c.publish_frame(jpeg)] = jpeg
        wait_until(lambda: b.frames.parked is not None and b.inbox.bytes > limit - 4096, 60,
                   "the intake paused with its inbox full")

        def sent_again() -> set[str]:
            return {m.topic.split("/")[1] for m in list(everything.msgs)
                    if m.topic.endswith("/frame") and parse_chunk(m.payload).flags & 2}

        wait_until(lambda: sent_again() >= set(sent), 60, "every node sending its frames again")
        assert b.connection.connections == 1 and b.connected.is_set()
        thawed.set()
        wait_until(lambda: all(set(c.confirmed) >= set(sent[c.node]) for c in cams), 120,
                   "every frame confirmed after the stall")
        for c in cams:
            assert {f: v for f, v in c.confirmed.items() if f in sent[c.node]} == {
                f: "stored" for f in sent[c.node]}
            assert stored_ids(data_dir, c.node) == set(sent[c.node])
        with sqlite3.connect(data_dir / "index.sqlite3") as db:
            rows = db.execute("SELECT node, frame_id, path FROM frames").fetchall()
        assert all((data_dir / path).read_bytes() == sent[node][fid] for node, fid, path in rows)
        assert b.connection.connections == 1   # never dropped by the broker
        assert b.status()["counters"].get("frames_lost", 0) == 0
        assert re.search(r" as backend-stall \(p\d, c0, k0\)", broker.log.read_text())
    finally:
        thawed.set()
        for c in cams:
            c.stop()
        b.stop()


def test_a_node_that_never_wakes_from_its_sleep_is_reported_unavailable(backend, broker,
                                                                        observer):
    cam = LightNode(broker.host, broker.port, "cam-nap", proto=2).start()
    try:
        # It went to sleep until two minutes and more ago, and did not come back.
        cam.state_overrides = {"sleep_until": time.time() - 600}
        cam.sleep()
        report = observer.json_on("espcam/_backend/nodes/cam-nap",
                                  lambda d: d.get("available") == "offline", timeout=30)
        assert report["node"] == "cam-nap"
        # It wakes after all: available again.
        cam.state_overrides = {}
        cam.start()
        observer.json_on("espcam/_backend/nodes/cam-nap",
                         lambda d: d.get("available") == "online", timeout=30)
    finally:
        cam.stop()


def test_a_frame_counted_lost_that_arrives_after_all_is_stored_and_no_longer_lost(
        backend, broker, data_dir):
    # A battery node with `awake` 0 sleeps before its confirmation comes: it reports the frame
    # as lost, though its chunks are on their way.
    cam = node2(broker, "cam-late-frame")
    try:
        jpeg = make_jpeg(seed=9)
        cam.drop([5], "not confirmed before deep sleep")
        wait_until(lambda: cam.confirmed.get(5) == "lost", 30, "the tombstone confirmed")
        assert backend.status()["counters"]["frames_lost"] == 1
        cam.confirmed.clear()
        cam.publish_frame(jpeg, 5)
        wait_until(lambda: cam.confirmed.get(5) == "stored", 30, "the frame confirmed stored")
        assert stored_ids(data_dir, "cam-late-frame") == {5}
        assert backend.status()["counters"]["frames_lost"] == 0
        assert backend.nodes.reports["cam-late-frame"].frames_lost == 0
    finally:
        cam.stop()
