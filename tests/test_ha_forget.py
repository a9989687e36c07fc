"""`espcam forget NODE`: the device leaves Home Assistant (empty retained discovery) and the
backend's live state; stored frames stay unless --delete-frames."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from pathlib import Path

import pytest
from paho.mqtt import publish

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from lightnode import LightNode, make_jpeg  # noqa: E402
from observer import Observer  # noqa: E402

from espcam.cli import main as espcam  # noqa: E402


@pytest.fixture
def settings(broker, data_dir):
    return Settings(broker=broker.url, data_dir=str(data_dir), client_id="backend-forget")


def start(settings) -> Backend:
    b = Backend(settings).start()
    assert b.connected.wait(10)
    return b


def node_rows(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT node FROM nodes")]


def frame_files(data_dir: Path, node: str) -> list[Path]:
    return sorted((data_dir / node).glob("*/*.jpg")) if (data_dir / node).exists() else []


def seen(broker, settings, node: str) -> None:
    """A node that published a frame and then went away for good."""
    obs = Observer(broker.host, broker.port, "#")
    try:
        cam = LightNode(broker.host, broker.port, node).start()
        fid = cam.publish_frame(make_jpeg(seed=5))
        obs.json_on(f"espcam/{node}/event", lambda e: e["frame"] == fid)
        obs.topic(f"homeassistant/device/espcam_{node}/config")
        # The backend's report goes out on its next timer tick, after the event.
        obs.json_on(f"espcam/_backend/nodes/{node}", lambda r: r["last_frame"] == fid)
        cam.sleep()
    finally:
        obs.close()


def cli(settings, *args: str) -> int:
    return espcam([*args, "--broker", settings.broker, "--data-dir", settings.data_dir,
                   "--timeout", "10"])


def retained_topics(broker, node: str) -> dict[str, bytes | None]:
    """What a new subscriber gets retained. The broker sends retained messages right after
    subscribing, before a message published afterwards: once that marker is in, all are."""
    o = Observer(broker.host, broker.port, "#")
    try:
        marker = f"test/marker/{uuid.uuid4().hex}"
        o.c.publish(marker, b"x", qos=1)
        o.topic(marker)
        got = {m.topic: m.payload for m in o.msgs if m.retain}
    finally:
        o.close()
    named = {t: got.get(t) for t in (
        f"homeassistant/device/espcam_{node}/config", f"espcam/{node}/availability",
        f"espcam/{node}/state", f"espcam/{node}/image", f"espcam/_backend/nodes/{node}")}
    # And any other retained topic about the node (confirm, updates): none may outlive forget.
    others = {t: p for t, p in got.items()
              if (f"/{node}/" in t or t.endswith(f"/{node}") or f"espcam_{node}/" in t)
              and t not in named and p}
    return {**named, **others}


def test_forget_removes_the_device_and_live_state_and_keeps_frames(broker, settings, data_dir,
                                                                   capsys):
    backend = start(settings)
    try:
        seen(broker, settings, "cam-old")
        # As an update in progress would leave them (docs/deploy.md, "Update over the air").
        for kind in ("ota/offer", "ota/status", "update"):
            publish.single(f"espcam/cam-old/{kind}", b"{}", qos=1, retain=True,
                           hostname=broker.host, port=broker.port)
        assert len(retained_topics(broker, "cam-old")) >= 8
        assert all(retained_topics(broker, "cam-old").values())
        files = frame_files(data_dir, "cam-old")
        assert files
        assert cli(settings, "forget", "cam-old") == 0
        assert "stored frames kept" in capsys.readouterr().out
        assert not any(retained_topics(broker, "cam-old").values())
        assert "cam-old" not in node_rows(data_dir)
        assert "cam-old" not in backend.nodes.views
        assert frame_files(data_dir, "cam-old") == files
        assert cli(settings, "frames", "cam-old") == 0
    finally:
        backend.stop()
    # A restart does not bring it back: after connecting the backend publishes discovery for
    # the nodes it knows, then its status; once the status is in, discovery would be too.
    obs = Observer(broker.host, broker.port, "#")
    try:
        mark = obs.mark()
        backend = start(settings)
        try:
            obs.topic("espcam/_backend/status", start=mark)
            assert [m.topic for m in obs.msgs[mark:] if "cam-old" in m.topic] == []
        finally:
            backend.stop()
    finally:
        obs.close()


def test_forget_with_delete_frames_and_while_the_backend_is_down(broker, settings, data_dir,
                                                                 capsys):
    backend = start(settings)
    try:
        seen(broker, settings, "cam-gone")
    finally:
        backend.stop()
    # The backend is down: the device leaves Home Assistant now; the rest is queued for it.
    assert cli(settings, "forget", "cam-gone", "--delete-frames") == 4
    assert "not running" in capsys.readouterr().out
    assert not any(retained_topics(broker, "cam-gone").values())
    obs = Observer(broker.host, broker.port, "espcam/_backend/ack")
    try:
        backend = start(settings)
        try:
            ack = obs.json_on("espcam/_backend/ack", lambda d: d["cmd"] == "forget")
            assert ack["ok"] and ack["result"]["frames_deleted"] == 1
            assert frame_files(data_dir, "cam-gone") == []
            assert "cam-gone" not in node_rows(data_dir)
        finally:
            backend.stop()
    finally:
        obs.close()
