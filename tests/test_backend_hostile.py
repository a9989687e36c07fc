"""What one bad client can cost everyone else (docs/security.md): each attack of the hostile-
input campaign, tried as an attacker on the LAN (or a buggy node) would, against a real
Mosquitto with the shipped protocol settings. Each must leave a real node's frames stored,
the log small, and the refusal counted under the right reason."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.brokerusers import write_env  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.discovery import discovery_topic  # noqa: E402
from espcam.backend.jpeg import TooManyScans, inspect_jpeg  # noqa: E402
from espcam.backend.protocol import encode_chunks  # noqa: E402
from espcam.backend.session import make_client  # noqa: E402
from espcam.backend.storage import Storage  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, make_jpeg, many_scans  # noqa: E402
from polling import wait_until  # noqa: E402


@pytest.fixture
def backend(broker, data_dir):
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="hostile",
                         resend_after=60)).start()
    assert b.connected.wait(10)
    yield b
    b.stop()


def stored(obs, node: str, frame_id: int) -> dict:
    return obs.json_on(f"espcam/{node}/event", lambda e: e["frame"] == frame_id)


def attacker(broker) -> object:
    c = make_client(f"evil-{uuid.uuid4().hex[:6]}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


# 1 -------------------------------------------------------------------------------------------

def test_a_packet_bigger_than_any_the_protocol_needs_is_refused_by_the_broker(
        backend, broker, light_node, everything):
    evil = make_client("evil-big")
    gone = threading.Event()
    evil.on_disconnect = lambda *a: gone.set()
    evil.connect(broker.host, broker.port)
    evil.loop_start()
    try:
        evil.publish("espcam/cam-x/frame", b"\x00" * (5 * 1024 * 1024), qos=1)
        assert gone.wait(30), "the broker kept the connection of a 5 MB PUBLISH"
    finally:
        evil.loop_stop()
    assert "Client evil-big disconnected" in broker.log.read_text() or gone.is_set()
    # The backend never saw it, and a real node's frame goes through.
    cam = light_node("cam-ok")
    stored(everything, "cam-ok", cam.publish_frame(make_jpeg(seed=1)))
    assert backend.status()["counters"].get("oversize_messages", 0) == 0


# 2 -------------------------------------------------------------------------------------------

def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(backend, light_node,
                                                                 everything):
    bad = many_scans(5000)
    with pytest.raises(TooManyScans):
        inspect_jpeg(bad)
    cam, other = light_node("cam-scan", chunk_size=4096), light_node("cam-other")
    cam.publish_frame(bad)
    ok = other.publish_frame(make_jpeg(seed=2))
    stored(everything, "cam-other", ok)
    wait_until(lambda: backend.status()["counters"].get("too_many_scans") == 1, 30,
               "the frame counted as too many scans")
    # A progressive JPEG as encoders write them (10 scans) is a JPEG like any other.
    assert inspect_jpeg(many_scans(1)).scans <= 16


# 3, 4, 6 -------------------------------------------------------------------------------------

def test_junk_under_made_up_ids_evicts_no_real_frame_makes_no_device_and_keeps_the_log_small(
        broker, data_dir, everything, caplog):
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="hostile",
                         resend_after=60, max_nodes=5)).start()
    cam = LightNode(broker.host, broker.port, "cam-real", chunk_size=1024).start()
    evil = attacker(broker)
    try:
        assert b.connected.wait(10)
        caplog.set_level(logging.INFO)
        jpeg = make_jpeg(seed=7)
        real = cam.publish_frame(jpeg, skip={3})  # a real frame waiting for one chunk
        # 1005 made-up ids, each opening a 4 MB frame (its first 64 KiB chunk) that never
        # finishes, and one that is over max_frame_bytes.
        big = encode_chunks(b"\x00" * (4 * 1024 * 1024 - 1), 1, 65536, None)[0]
        for i in range(1005):
            evil.publish(f"espcam/junk-{i}/frame", big, qos=0)
        evil.publish("espcam/junk-huge/frame",
                     encode_chunks(b"\x00" * 5_000_000, 1, 65536, None)[0], qos=1
                     ).wait_for_publish(30)
        wait_until(lambda: b.status()["counters"].get("stranger_chunks", 0) >= 1006, 60,
                   "every junk chunk taken in")
        # The real frame was kept through it all: its missing chunk completes it.
        cam.client.publish(cam.t("frame"), encode_chunks(jpeg, real, 1024, None, version=1)[3],
                           qos=1)
        event = stored(everything, "cam-real", real)
        assert Path(event["file"]).read_bytes() == jpeg
        status = b.status()
        # Junk costs the strangers' small budget only, and no node, report or device.
        assert status["bytes_in_flight"] <= 8 * 1024 * 1024 + 65536
        assert set(b.nodes.views) == {"cam-real"} and status["counters"].get(
            "refused_nodes", 0) == 0
        everything.c.publish("homeassistant/status", "online", qos=1)
        everything.topic(discovery_topic("homeassistant", "cam-real"))
        time.sleep(0.5)  # anything for a junk id would have been published with it
        assert not [m for m in everything.msgs if "junk-" in m.topic and m.topic.startswith(
            ("homeassistant/", "espcam/_backend/nodes/"))]
        # A new real node still gets its place.
        late = LightNode(broker.host, broker.port, "cam-late").start()
        stored(everything, "cam-late", late.publish_frame(make_jpeg(seed=8)))
        late.stop()
        # Every junk frame is counted; the log names them in a few lines, not one each.
        counters = b.status()["counters"]
        assert counters["stranger_chunks"] >= 1006
        junk_lines = [r for r in caplog.records if "announced" in r.getMessage()]
        assert len(junk_lines) < 50, len(junk_lines)
        assert not any("cam-real" in r.getMessage() and "LOST" in r.getMessage()
                       for r in caplog.records)
    finally:
        evil.loop_stop()
        cam.stop()
        b.stop()


# 5, 9 ----------------------------------------------------------------------------------------

def test_capture_times_from_a_clock_far_ahead_or_behind_neither_pin_nor_delete_a_picture(
        broker, data_dir, everything):
    # A node that stopped long ago, whose oldest frame retention must delete: the sign that
    # retention has run over what arrives below.
    old = Storage(data_dir)
    gone_at = time.time() - 40 * 86400
    for fid in (1, 2):
        old.store("cam-gone", fid, make_jpeg(seed=fid), crc=fid, received_at=gone_at + fid)
    old.close()
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="hostile",
                         retention_days=30, retention_interval=0.5)).start()
    cam = LightNode(broker.host, broker.port, "cam-clock").start()
    try:
        assert b.connected.wait(10)
        ahead, behind, now = make_jpeg(seed=1), make_jpeg(seed=2), make_jpeg(seed=3)
        f1 = cam.publish_frame(ahead, meta={"t": 4102444800.0, "trigger": "interval"})
        e1 = stored(everything, "cam-clock", f1)
        assert e1["captured_at"] is None and e1["claimed_captured_at"] == 4102444800.0
        f2 = cam.publish_frame(behind, meta={"t": time.time() - 40 * 86400,
                                             "trigger": "interval"})
        stored(everything, "cam-clock", f2)
        f3 = cam.publish_frame(now, meta={"t": time.time(), "trigger": "interval"})
        stored(everything, "cam-clock", f3)
        # The newest picture is the newest frame, not the one dated 2100.
        assert (data_dir / "cam-clock" / "latest.jpg").read_bytes() == now
        # Retention (30 days) has run since, and deleted nothing received just now, however
        # old its node says it is.
        mark = everything.mark()
        wait_until(lambda: len(list(data_dir.glob("cam-gone/*/*.jpg"))) == 1, 30,
                   "retention to delete the stopped node's old frame")
        everything.topic("espcam/_backend/status", start=mark, timeout=60)
        with sqlite3.connect(data_dir / "index.sqlite3") as db:
            ids = {r[0] for r in db.execute("SELECT frame_id FROM frames WHERE node = ?",
                                            ("cam-clock",))}
        assert ids == {f1, f2, f3}
    finally:
        cam.stop()
        b.stop()


# 7 -------------------------------------------------------------------------------------------

def test_a_small_jpeg_claiming_65535_squared_pixels_is_counted_as_too_many_pixels(
        backend, light_node, everything):
    b = bytearray(make_jpeg(64, 64, seed=1))
    sof = b.index(b"\xff\xc0")
    b[sof + 5:sof + 9] = (65535).to_bytes(2, "big") * 2
    cam = light_node("cam-bomb")
    cam.publish_frame(bytes(b))
    stored(everything, "cam-bomb", cam.publish_frame(make_jpeg(seed=2)))
    counters = backend.status()["counters"]
    assert counters.get("too_many_pixels") == 1 and counters.get("not_jpeg", 0) == 0


# 8 -------------------------------------------------------------------------------------------

def test_no_message_stops_the_backend_or_floods_the_log(backend, broker, light_node, everything,
                                                        caplog):
    evil = attacker(broker)
    cam = light_node("cam-deep", chunk_size=4096)
    try:
        deep = b"[" * 5000 + b"]" * 5000
        evil.publish("espcam/_backend/forget", deep, qos=1).wait_for_publish(10)
        for kind in ("state", "ack", "dropped"):
            evil.publish(f"espcam/cam-deep/{kind}", deep, qos=1).wait_for_publish(10)
        evil.publish("espcam/cam-deep/state", json.dumps({"proto": 1, "frame": 2**40}),
                     qos=1).wait_for_publish(10)
        jpeg = make_jpeg(seed=3)
        for i, meta in enumerate((b'{"t": ' + b"1" * 5000 + b"}", b'{"a":' * 2000 + b"1"
                                  + b"}" * 2000)):
            chunk = encode_chunks(jpeg, 90 + i, 4096, meta, version=1)[0]
            evil.publish("espcam/cam-deep/frame", chunk, qos=1).wait_for_publish(10)
        # Still serving, and still noticing gaps (the huge frame id did not turn it off).
        ok = cam.publish_frame(jpeg)
        stored(everything, "cam-deep", ok)
        gone = cam.publish_frame(make_jpeg(seed=4), skip=range(1000))
        cam.publish_state()
        wait_until(lambda: any(r["frame"] == gone for r in cam.resend_requests), 30,
                   "the gap request for a frame of which nothing arrived")
        counters = backend.status()["counters"]
        assert counters.get("errors", 0) == 0
        assert counters["bad_messages"] >= 4 and counters["bad_chunks"] >= 2
        assert not any(r.exc_info for r in caplog.records)
    finally:
        evil.loop_stop()


# 10 ------------------------------------------------------------------------------------------

def test_a_nodes_error_text_reaches_the_log_without_control_characters(backend, light_node,
                                                                      caplog):
    cam = light_node("cam-ansi")
    cam.refuse["resend"] = "no\n2026-01-01 INFO fake line \x1b[31mred\x1b[0m"
    gone = cam.publish_frame(make_jpeg(seed=5), skip=range(1000))
    cam.publish_state()
    wait_until(lambda: any("LOST" in r.getMessage() and "cam-ansi" in r.getMessage()
                           for r in caplog.records), 30, "the LOST line")
    line = next(r.getMessage() for r in caplog.records if "LOST" in r.getMessage()
                and "cam-ansi" in r.getMessage())
    assert f"frame {gone}" in line and "\n" not in line and "\x1b" not in line
    assert "\\n2026-01-01" in line and "\\x1b[31m" in line


def test_broker_users_env_file_is_private_even_past_a_stale_public_tmp_file(tmp_path):
    env = tmp_path / ".env"
    stale = tmp_path / ".env.tmp"
    stale.write_text("OLD=1\n")
    os.chmod(stale, 0o644)
    write_env(env, {"ESPCAM_BACKEND_PASSWORD": "secret"})
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "secret" in env.read_text() and not stale.exists()


def test_home_assistant_saying_online_a_hundred_times_gets_discovery_at_most_twice(
        backend, light_node, everything):
    light_node("cam-ha")
    topic_name = discovery_topic("homeassistant", "cam-ha")
    everything.topic(topic_name)
    mark = everything.mark()
    for _ in range(100):
        everything.c.publish("homeassistant/status", "online", qos=1)
    everything.topic(topic_name, start=mark)
    time.sleep(2)  # a throttle that did not hold would have answered many of them by now
    assert len([m for m in everything.msgs[mark:] if m.topic == topic_name]) <= 2
