"""Home Assistant's entities against a simulated node (the real node/ code) and a running
backend, through a real Mosquitto: pressing a button or changing a setting is publishing exactly
what Home Assistant publishes (from the discovery document the backend published), the node
acts on it, and each entity shows what Home Assistant would render from the messages the node
and the backend really publish; availability follows the node and the backend."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import OK, PIN_FLASH, espcam  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from hass import HomeAssistant  # noqa: E402

NODE = "cam-ha"


@pytest.fixture
def settings(broker, tmp_path):
    return Settings(broker=broker.url, data_dir=str(tmp_path / "data"), client_id="backend-ha")


@pytest.fixture
def backend(settings):
    b = Backend(settings).start()
    assert b.connected.wait(10)
    yield b
    b.stop()


def test_buttons_light_and_settings_reach_the_node(make_node, backend, everything):
    node = make_node(NODE)
    ha = HomeAssistant(everything, NODE)

    # Capture: the node captures, the backend stores it, the camera shows the stored JPEG.
    assert node.captures() == []  # interval 0: it captures only when asked
    mark = ha.publish("capture", "press")
    ack = ha.ack("capture", mark)
    assert ack["ok"] and ack["cmd"] == "capture"
    event = everything.json_on(f"espcam/{NODE}/event",
                               lambda e: e["frame"] == ack["result"]["frame"], start=mark)
    assert len(node.captures()) == 1
    stored = Path(event["file"]).read_bytes()
    assert stored == node.captures()[0].read_bytes()
    assert ha.wait_state("camera", lambda img: img == stored, mark) == stored
    # The backend's report follows: one frame stored, none lost, taken when it was taken.
    assert ha.wait_state("frames_stored", lambda s: s == "1", mark) == "1"
    assert ha.state("frames_lost") == "0"
    shown = ha.wait_state("last_capture", lambda s: s is not None, mark)
    taken = event["captured_at"] or event["received_at"]
    # The sensor's ISO 8601 text carries milliseconds.
    assert abs(datetime.fromisoformat(shown).timestamp() - taken) < 0.001, (shown, taken)
    assert datetime.fromisoformat(shown).utcoffset() == UTC.utcoffset(None)

    # Flash light: the flash pin follows, and the light shows the node's own state.
    mark = ha.publish("flash", "on")
    assert ha.ack("flash", mark)["ok"]
    assert ha.wait_state("flash", lambda s: s == "on", mark) == "on"
    assert node.pins().get(PIN_FLASH) == 1
    mark = ha.publish("flash", "off")
    assert ha.ack("flash", mark)["ok"]
    assert ha.wait_state("flash", lambda s: s == "off", mark) == "off"
    assert node.pins().get(PIN_FLASH, 0) == 0

    # Settings: the node applies them and its state document shows them to Home Assistant.
    for key, action, value, shown in (("interval", "set", 30, 30), ("quality", "set", 55, 55),
                                      ("frame_size", "set", "QVGA", "QVGA"),
                                      ("flash_on_capture", "on", None, "on")):
        mark = ha.publish(key, action, value)
        ack = ha.ack(key, mark)
        assert ack["ok"], ack
        assert ha.wait_state(key, lambda s, shown=shown: s == shown, mark) == shown
    saved = json.loads(node.board_file("config.json").read_text())
    assert (saved["interval"], saved["quality"], saved["frame_size"],
            saved["flash_on_capture"]) == (30, 55, "QVGA", True)

    # Sensors read from the state document: a node just powered on.
    assert int(ha.state("rssi")) < 0 and int(ha.state("heap_free")) > 0
    assert float(ha.state("uptime")) > 0
    assert ha.state("reset_cause") == "power_on" and ha.state("wake") == "none"

    # Reboot: the node acks and starts again, and says why it did.
    mark = ha.publish("reboot", "press")
    assert ha.ack("reboot", mark)["ok"]
    node.wait_boots(2)
    everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"online")
    assert ha.wait_state("reset_cause", lambda s: s == "hard", mark) == "hard"
    assert ha.available("camera") and ha.available("reset_cause")


def test_availability_online_sleeping_offline_and_backend_down(make_node, settings,
                                                               everything):
    backend = Backend(settings).start()
    try:
        node = make_node(NODE)
        ha = HomeAssistant(everything, NODE)
        everything.topic(f"espcam/{NODE}/availability", payload=b"online")
        everything.topic(f"espcam/_backend/nodes/{NODE}")  # retained: Home Assistant has it
        assert ha.available("camera") and ha.available("capture")

        # Sleeping: still available (the picture stays, commands are queued for the wake).
        mark = everything.mark()
        everything.c.publish(f"espcam/{NODE}/cmd", json.dumps(
            {"id": "s1", "cmd": "sleep", "seconds": 600}), qos=1)
        everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"sleeping")
        assert ha.available("camera") and ha.available("frames_stored")

        # Backend down: everything unavailable.
        mark = everything.mark()
        backend.stop()
        everything.topic("espcam/_backend/availability", start=mark, payload=b"offline")
        assert not ha.available("camera") and not ha.available("frames_stored")
    finally:
        backend.stop()
    backend = Backend(settings).start()
    try:
        everything.topic("espcam/_backend/availability", start=mark, payload=b"online")
        assert ha.available("camera")
        # Not `online` or `sleeping` is not available: the empty retained payload that
        # `espcam forget` clears the topic with, and anything garbled.
        for payload in (b"", b"garbage"):
            mark = everything.mark()
            everything.c.publish(f"espcam/{NODE}/availability", payload, qos=1, retain=True)
            everything.topic(f"espcam/{NODE}/availability", start=mark, payload=payload)
            assert not ha.available("camera") and not ha.available("capture"), payload
        # The node vanishes (power cut while awake): the broker publishes its will.
        mark = everything.mark()
        node.stop()
        node.start()
        everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"online")
        assert ha.available("camera")
        mark = everything.mark()
        node.kill()
        everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"offline")
        assert not ha.available("camera") and not ha.available("capture")
        assert ha.available("frames_stored")  # the backend's own figures stay available
    finally:
        backend.stop()


def test_flash_light_follows_the_node_not_the_ack(broker, make_node, backend, everything,
                                                  tmp_path):
    """A flash pulse acks `{"flash": "on"}` and the LED goes off by itself when it ends; a deep
    sleep turns it off too. The light shows what the node's state document says the LED is
    (docs/home-assistant.md), so it ends off both times, whatever the last ack said."""
    node = make_node(NODE)
    ha = HomeAssistant(everything, NODE)
    assert ha.wait_state("flash", lambda s: s is not None) == "off"

    # A pulse from the command line, the light off before it.
    mark = everything.mark()
    r = espcam(broker, tmp_path / "data", "flash", NODE, "pulse", "--ms", "300")
    assert r.returncode == OK, r.stdout + r.stderr
    ack = everything.json_on(f"espcam/{NODE}/ack", lambda d: d["cmd"] == "flash", start=mark)
    assert ack["ok"] and ack["result"] == {"flash": "on"}
    everything.wait(lambda _: ha.states("flash", mark)[-1:] == ["off"], start=mark)
    # Exactly: lit when the pulse began, off when it ended; nothing else from the node.
    assert ha.states("flash", mark) == ["on", "off"]
    assert node.pins().get(PIN_FLASH, 0) == 0
    assert ha.available("flash")

    # Lit from Home Assistant, then a deep sleep: the node turns the LED off and says so
    # before it says `sleeping`.
    mark = ha.publish("flash", "on")
    assert ha.ack("flash", mark)["result"] == {"flash": "on"}
    assert ha.wait_state("flash", lambda s: s == "on", mark) == "on"
    assert node.pins().get(PIN_FLASH) == 1
    mark = everything.mark()
    r = espcam(broker, tmp_path / "data", "sleep", NODE, "600")
    assert r.returncode == OK, r.stdout + r.stderr
    everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"sleeping")
    assert ha.states("flash", mark) == ["off"]
    last_state = [json.loads(m.payload) for m in list(everything.msgs)[mark:]
                  if m.topic == f"espcam/{NODE}/state"][-1]
    assert last_state["flash"] == "off" and last_state["sleep_until"]
    assert ha.state("flash") == "off" and ha.available("flash")
    assert node.pins().get(PIN_FLASH, 0) == 0
