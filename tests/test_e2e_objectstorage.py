"""End to end with frames in an S3-compatible object store (docs/backend.md, "Object
storage"): a simulated ESP32-CAM (the real node/ files on MicroPython) streams through a real
Mosquitto to `espcam serve --frames-url s3://...`, whose store is down when it starts. Nothing
is lost: the node keeps its frames until the backend confirms them, which it does only once
each is an object; then every object holds exactly the captured bytes, every frame is
announced with its object's URL, and `espcam frames` lists it there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from broker import free_port  # noqa: E402
from e2e_helpers import (  # noqa: E402
    Serve,
    backend_online,
    captured,
    frames_cli,
    index_rows,
    stop_interval,
    wait_captures,
    wait_until,
)
from s3server import CREDENTIALS, S3Server  # noqa: E402


def events(observer, node: str) -> dict[int, dict]:
    return {d["frame"]: d for d in (json.loads(m.payload) for m in list(observer.msgs)
                                    if m.topic == f"espcam/{node}/event")}


def test_store_down_at_start_then_every_frame_an_object_with_the_captured_bytes(
        broker, observer, make_node, tmp_path, monkeypatch):
    port = free_port()
    s3 = S3Server(tmp_path / "s3", port=port)  # not started yet: the store is down
    env = {**CREDENTIALS, "ESPCAM_FRAMES_URL": "s3://frames/home",
           "ESPCAM_S3_ENDPOINT": s3.endpoint, "ESPCAM_RETRY_INTERVAL": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # for `espcam frames` below, as a user's shell would have
    serve = Serve(broker, tmp_path / "data", tmp_path / "backend.log").start()
    try:
        backend_online(observer)
        node = make_node("cam-s3", config={"interval": 1})
        observer.topic("espcam/cam-s3/availability", 30, payload=b"online")
        wait_captures(node, 3)
        wait_until(lambda: "cannot store frame" in serve.log_text(), 30,
                   "the backend to say it cannot store")
        assert events(observer, "cam-s3") == {} and index_rows(serve.data_dir) == []

        s3.start()
        s3.client().create_bucket(Bucket="frames")
        produced = stop_interval(observer, node)
        want = set(range(1, produced + 1))
        wait_until(lambda: {r[1] for r in index_rows(serve.data_dir, "cam-s3")} == want, 90,
                   f"frames {sorted(want)} in the index")
        wait_until(lambda: set(events(observer, "cam-s3")) == want, 60, "their events")

        frames = captured(node)
        assert len(frames) == produced >= 3
        objects = s3.objects("frames", "home/")
        rows = index_rows(serve.data_dir, "cam-s3")
        for _, fid, size, _, path in rows:
            assert objects[f"home/{path}"] == frames[fid], f"object of frame {fid} differs"
            assert size == len(frames[fid])
            assert events(observer, "cam-s3")[fid]["file"] == f"s3://frames/home/{path}"
        newest = max(rows, key=lambda r: r[1])
        assert objects["home/cam-s3/latest.jpg"] == frames[newest[1]]
        assert set(objects) == {f"home/{r[4]}" for r in rows} | {"home/cam-s3/latest.jpg"}
        assert not (tmp_path / "data" / "cam-s3").exists()  # no frame went to the local disk

        listed = frames_cli(broker, serve.data_dir, "cam-s3")
        assert {f["frame_id"]: f["file"] for f in listed} == {
            r[1]: f"s3://frames/home/{r[4]}" for r in rows}
    finally:
        serve.stop()
        s3.stop()
