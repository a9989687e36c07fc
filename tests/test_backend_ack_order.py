"""A stored frame's `event` goes to the broker before the ack of its last chunk. The broker
hands an unacknowledged last chunk over again after a crash, and the restarted backend then
announces the frame again; acked first, a backend killed between the two packets left a
frame stored that no event ever named (found by tests/test_backend_restart.py's kill
mid-stream). paho writes packets in the order they are queued, and the backend's client has no
window that could hold an event back behind an ack (connection.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.connection import Connection  # noqa: E402
from espcam.backend.protocol import encode_chunks  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import make_jpeg  # noqa: E402


def message(topic: str, payload: bytes, mid: int = 0, qos: int = 0) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(mid, topic.encode())
    m.payload, m.qos = payload, qos
    return m


def test_each_frames_event_is_queued_before_its_last_chunk_is_acknowledged(monkeypatch,
                                                                         data_dir):
    wire: list[tuple[str, object]] = []  # what the backend hands paho, in order
    monkeypatch.setattr(Connection, "publish", lambda self, topic, payload, retain=False,
                        qos=1: wire.append(("publish", topic)))
    monkeypatch.setattr(Connection, "_ack", lambda self, mid, qos: wire.append(("ack", mid)))
    # Never connected: messages are handed to the loop's step as paho's thread would.
    backend = Backend(Settings(broker="127.0.0.1:1", data_dir=str(data_dir),
                               ha_discovery=False, analysis=False, store_overlap=3))
    try:
        backend._step(("message", message("espcam/cam-a/availability", b"online")))
        frames = 9
        for fid in range(1, frames + 1):
            chunks = encode_chunks(make_jpeg(seed=fid), fid, 1024)
            for i, c in enumerate(chunks):
                last = i == len(chunks) - 1
                backend._step(("message", message("espcam/cam-a/frame", c, mid=fid,
                                                  qos=1 if last else 0)))
        deadline = time.monotonic() + 60
        while sum(k == "ack" for k, _ in wire) < frames and time.monotonic() < deadline:
            backend._step(backend.inbox.get(timeout=0.2, results_only=True))
    finally:
        backend.lanes.close(timeout=5)
        backend.storage.close()
    events = [i for i, (k, t) in enumerate(wire) if k == "publish" and t.endswith("/event")]
    acks = {mid: i for i, (k, mid) in enumerate(wire) if k == "ack"}
    assert sorted(acks) == list(range(1, frames + 1)), wire
    assert len(events) == frames, wire
    # Frames are announced in order: the n-th event is frame n's.
    for n, at in enumerate(events, start=1):
        assert at < acks[n], f"frame {n}'s last chunk acknowledged before its event: {wire}"
