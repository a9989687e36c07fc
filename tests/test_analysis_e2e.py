"""A simulated node (the real node/ code on MicroPython) whose camera stand-in serves real photos
of people, a real Mosquitto and a running backend with analysis: the enrolled person is named in
a frame the node captured, another person is `unknown`, and Home Assistant shows who it was."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import facephotos  # noqa: E402
from espcam.backend import faces  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from hass import HomeAssistant  # noqa: E402

from espcam.cli import main as espcam  # noqa: E402

pytestmark = pytest.mark.skipif(faces.missing() is not None,
                                reason=f"the faces extra: {faces.missing()}")

NODE = "cam-porch"


def test_frames_a_simulated_node_captures_name_the_enrolled_person(broker, make_node,
                                                                   data_dir, tmp_path,
                                                                   everything):
    photo = tmp_path / "alice.jpg"
    photo.write_bytes(facephotos.enrolment_photo("collins"))
    assert espcam(["faces", "add", "alice", str(photo), "--data-dir", str(data_dir)]) == 0
    # "all": a person event for every frame with a face, so that frames captured on command
    # tell who is there (the default names people for the doorbell button's frames only).
    b = Backend(Settings(broker=broker.url, data_dir=str(data_dir), client_id="backend-e2e",
                         analysis_nice=0, person_events="all")).start()
    try:
        assert b.connected.wait(10)
        node = make_node(NODE, images_dir=facephotos.images_dir(tmp_path / "camera",
                                                                ["collins", "hopper"]))
        ha = HomeAssistant(everything, NODE)
        seen = []
        for expected in ("known_person", "unknown_person"):
            mark = everything.mark()
            ack = everything.command(NODE, {"id": f"c-{expected}", "cmd": "capture"})
            assert ack["ok"], ack
            fid = ack["result"]["frame"]
            event = everything.json_on(f"espcam/{NODE}/doorbell",
                                       lambda e, f=fid: e["frame"] == f, start=mark)
            assert event["event_type"] == expected
            # The frame the backend names is the one the node's camera captured.
            assert Path(event["file"]).read_bytes() == node.captures()[-1].read_bytes()
            seen.append(event)
        assert seen[0]["name"] == "alice" and seen[0]["distance"] < 0.6
        assert "name" not in seen[1] and seen[1]["distance"] > 0.6
        assert ha.wait_state("last_person", lambda s: s == "unknown") == "unknown"
        assert ha.state("person") == "on"
    finally:
        b.stop()
