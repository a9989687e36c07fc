"""Memory limits whatever arrives (docs/backend.md, "Memory limits"): decoded pixels, the
message queue, oversize messages and the number of nodes, against a real Mosquitto."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.discovery import discovery_topic  # noqa: E402
from espcam.backend.jpeg import NotAJpeg, inspect_jpeg  # noqa: E402
from espcam.backend.protocol import MAX_MESSAGE_BYTES  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, encode_chunks, make_jpeg  # noqa: E402
from observer import Observer  # noqa: E402
from polling import wait_until  # noqa: E402


def claims_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same small JPEG with a start-of-frame header claiming width x height."""
    b = bytearray(jpeg)
    sof = b.index(b"\xff\xc0")
    b[sof + 5:sof + 7] = height.to_bytes(2, "big")
    b[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(b)


@pytest.fixture
def start_backend(broker, data_dir):
    made: list[Backend] = []

    def start(**kw) -> Backend:
        b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="limits",
                             **kw)).start()
        assert b.connected.wait(10)
        made.append(b)
        return b

    yield start
    for b in made:
        b.stop()


def stored(obs: Observer, node: str, frame_id: int, start: int = 0) -> dict:
    return obs.json_on(f"espcam/{node}/event", lambda e: e["frame"] == frame_id, start=start)


def test_pixel_count_is_checked_before_decoding():
    # 5000 x 5000 declared in a 4 KB file: decoding would allocate 75 MB before finding the
    # data short. The header alone decides.
    bomb = claims_size(make_jpeg(64, 48, seed=1), 5000, 5000)
    with pytest.raises(NotAJpeg, match=r"5000x5000 = 25000000 pixels .* max_pixels=5242880"):
        inspect_jpeg(bomb)
    with pytest.raises(NotAJpeg, match="max_pixels=1000"):
        inspect_jpeg(make_jpeg(40, 30, seed=1), max_pixels=1000)
    assert inspect_jpeg(make_jpeg(40, 25, seed=1), max_pixels=1000).width == 40


def test_frame_over_max_pixels_is_rejected_not_stored_and_the_service_goes_on(
        start_backend, light_node, everything, data_dir, caplog):
    b = start_backend(max_pixels=320 * 240)
    cam = light_node("cam-px")
    big = cam.publish_frame(make_jpeg(640, 480, seed=1))
    ok = cam.publish_frame(make_jpeg(320, 240, seed=2))
    event = stored(everything, "cam-px", ok)
    assert event["width"] == 320
    assert b.status()["counters"]["too_many_pixels"] == 1
    assert [p.name for p in data_dir.glob("cam-px/*/*.jpg")] == [Path(event["path"]).name]
    assert any(f"frame {big} rejected, not stored" in r.getMessage()
               and "max_pixels=76800" in r.getMessage() for r in caplog.records)


def test_oversize_messages_are_dropped_with_a_log_line_and_make_no_node(
        start_backend, light_node, everything, caplog):
    b = start_backend()
    sender = light_node("cam-size")
    junk = b"\x00" * (MAX_MESSAGE_BYTES + 1)
    for kind in ("frame", "state", "ack"):
        sender.client.publish(f"espcam/cam-huge/{kind}", junk, qos=1).wait_for_publish(10)
    fid = sender.publish_frame(make_jpeg(seed=3))
    stored(everything, "cam-size", fid)
    assert b.status()["counters"]["oversize_messages"] == 3
    assert "cam-huge" not in b.nodes.views
    assert any("dropped a message of" in r.getMessage() and "cam-huge" in r.getMessage()
               for r in caplog.records)


def test_message_queue_is_bounded_by_bytes_and_loses_nothing(start_backend, light_node,
                                                             everything):
    limit = 64 * 1024
    b = start_backend(max_queue_bytes=limit)
    cam = light_node("cam-q", chunk_size=4096)
    frames = {}
    with b._lock:  # the loop is busy (a slow disk, say): messages pile up in the queue
        for seed in range(20):
            jpeg = make_jpeg(320, 240, seed=seed)  # ~60 KB each: 1.2 MB in all
            frames[cam.publish_frame(jpeg, wait=False)] = jpeg
            assert b.inbox.bytes <= limit
        # paho's thread stops at the limit; the broker and TCP hold the rest.
        wait_until(lambda: b.inbox.bytes > limit - 4200, 30, "the queue to fill")
        assert b.inbox.bytes <= limit
    for fid, jpeg in frames.items():
        assert Path(stored(everything, "cam-q", fid)["file"]).read_bytes() == jpeg


def test_junk_alone_under_a_new_id_creates_no_node_and_no_device(start_backend, broker,
                                                                 everything):
    b = start_backend()
    # A client that publishes only a malformed chunk, no availability or state.
    raw = LightNode(broker.host, broker.port, "raw-client")
    raw.client.on_connect = lambda *a: raw.connected.set()
    raw.start()
    try:
        raw.client.publish("espcam/cam-ghost/frame", b"EC junk", qos=1).wait_for_publish(10)
        raw.client.publish("espcam/cam-ghost/ack", b"not json", qos=1).wait_for_publish(10)
        raw.client.publish("espcam/cam-ghost/availability", b"dancing", qos=1).wait_for_publish(
            10)
        raw.client.publish("espcam/cam-ghost/state", b"[1, 2]", qos=1).wait_for_publish(10)
        ok = LightNode(broker.host, broker.port, "cam-fine").start()
        fid = ok.publish_frame(make_jpeg(seed=1))
        stored(everything, "cam-fine", fid)
        ok.stop()
    finally:
        raw.stop()
    assert "cam-ghost" not in b.nodes.views and "cam-ghost" not in b.nodes.reports
    ghost = {discovery_topic("homeassistant", "cam-ghost"), "espcam/_backend/nodes/cam-ghost"}
    assert not [m.topic for m in everything.msgs if m.topic in ghost]
    counters = b.status()["counters"]
    assert counters["bad_chunks"] == 1 and counters["bad_messages"] == 3


def test_tracked_nodes_are_capped(start_backend, broker, everything, data_dir, caplog):
    b = start_backend(max_nodes=3)
    made = [LightNode(broker.host, broker.port, f"cam-{i}").start() for i in range(5)]
    try:
        for n in made:
            n.publish_frame(make_jpeg(seed=1), 1)
        everything.wait(lambda m: len({m.topic for m in everything.msgs
                                       if m.topic.endswith("/event")}) == 3)
        made[0].publish_frame(make_jpeg(seed=2), 2)  # a tracked node is still served
        stored(everything, made[0].node, 2)
    finally:
        for n in made:
            n.stop()
    assert len(b.nodes.views) == 3 and b.status()["counters"]["refused_nodes"] >= 2
    assert any("max_nodes=3" in r.getMessage() for r in caplog.records)

    def reports() -> set[str]:
        return {m.topic for m in everything.msgs if m.topic.startswith("espcam/_backend/nodes/")}

    # Reports go out on the backend's timer tick, after the events.
    everything.wait(lambda m: len(reports()) >= 3)
    assert len(reports()) == 3


def test_frames_in_memory_never_exceed_max_bytes_total(start_backend, light_node, everything):
    limit = 100_000
    b = start_backend(max_bytes_total=limit, max_frames_per_node=8, max_frames_total=8,
                      resend_after=60)
    cams = [light_node(f"cam-m{i}", chunk_size=1024) for i in range(3)]
    seen = []
    for seed in range(6):
        for c in cams:
            jpeg = make_jpeg(320, 240, seed=seed)  # ~60 KB, never complete (last chunk kept)
            n = len(encode_chunks(jpeg, 1, 1024, None))
            c.publish_frame(jpeg, skip={n - 1})
            seen.append(b.status()["bytes_in_flight"])
    mark = everything.mark()
    fid = cams[0].publish_frame(make_jpeg(seed=99), 1000)
    stored(everything, "cam-m0", fid, start=mark)
    seen.append(b.status()["bytes_in_flight"])
    assert max(seen) <= limit
    assert b.status()["counters"]["frames_lost"] > 0
