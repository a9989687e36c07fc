"""Home Assistant's entities against a simulated node (the real node/ code): pressing a button or
changing a setting is publishing exactly what Home Assistant publishes (from the discovery
document), and the node acts on it; availability follows the node and the backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend import discovery  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.session import make_client  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from hatemplate import available, expand, render  # noqa: E402
from observer import Observer  # noqa: E402

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


class HomeAssistant:
    """What Home Assistant does with the discovery document: publish commands, read states."""

    def __init__(self, obs: Observer, node: str) -> None:
        self.obs, self.node = obs, node
        msg = obs.wait(lambda m: m.topic == discovery.discovery_topic("homeassistant", node)
                       and m.payload and b'"sw"' in m.payload)
        self.doc = json.loads(msg.payload)

    def comp(self, key: str) -> dict:
        return expand(self.doc["cmps"][key])

    def publish(self, key: str, payload: str) -> int:
        c = self.comp(key)
        mark = self.obs.mark()
        self.obs.c.publish(c["command_topic"], payload, qos=c["qos"])
        return mark

    def press(self, key: str) -> int:
        return self.publish(key, self.comp(key)["payload_press"])

    def set(self, key: str, value) -> int:
        c = self.comp(key)
        if c["platform"] == "light":
            return self.publish(key, render(c[f"command_{value}_template"], state=value))
        return self.publish(key, render(c["command_template"], value=value))

    def ack(self, key: str, start: int) -> dict:
        return self.obs.json_on(f"espcam/{self.node}/ack", lambda d: d["id"] == f"ha-{key}",
                                start=start)

    def state(self, key: str, start: int = 0, pred=lambda s: True) -> str:
        """The entity's state as Home Assistant renders it from the next message on its topic."""
        c = self.comp(key)
        tpl = c.get("value_template") or c.get("state_template")
        msg = self.obs.wait(lambda m: m.topic == c["state_topic"] and m.payload
                            and pred(render(tpl, m.payload.decode())), start=start)
        return render(tpl, msg.payload.decode())

    def retained(self) -> dict[str, bytes | None]:
        """The latest payload of every topic seen (what a subscriber holds; an empty message
        is a message too)."""
        out: dict[str, bytes | None] = {}
        for m in self.obs.msgs:
            out[m.topic] = m.payload
        return out

    def light(self, key: str = "flash") -> str:
        """The light's state now: its template on the last payload of its state topic."""
        c = self.comp(key)
        return render(c["state_template"], (self.retained()[c["state_topic"]] or b"").decode())

    def available(self, key: str = "camera") -> bool:
        return available(self.doc["cmps"][key], self.doc, self.retained())


def test_buttons_light_and_settings_reach_the_node(make_node, backend, everything):
    node = make_node(NODE)
    ha = HomeAssistant(everything, NODE)

    # Capture: the node captures, the backend stores it, the camera topic gets the JPEG.
    captured = len(node.captures())
    mark = ha.press("capture")
    ack = ha.ack("capture", mark)
    assert ack["ok"] and ack["cmd"] == "capture"
    event = everything.json_on(f"espcam/{NODE}/event", lambda e: e["frame"] ==
                               ack["result"]["frame"], start=mark)
    assert len(node.captures()) == captured + 1
    image = everything.wait(lambda m: m.topic == ha.comp("camera")["topic"], start=mark)
    assert image.payload == Path(event["file"]).read_bytes()
    # The backend's report follows: frames stored and the time of the last capture.
    assert int(ha.state("frames_stored", mark, lambda s: int(s) >= 1)) >= 1
    assert ha.state("last_capture", mark, lambda s: s not in ("", "None"))

    # Flash light: the flash pin follows. (Its state comes from the node's state document:
    # test_flash_light_follows_the_node_not_the_ack.)
    mark = ha.set("flash", "on")
    assert ha.ack("flash", mark)["ok"]
    assert node.pins().get(4) == 1
    mark = ha.set("flash", "off")
    assert ha.ack("flash", mark)["ok"]
    assert node.pins().get(4, 0) == 0

    # Settings: the node applies them and its state document shows them to Home Assistant.
    for key, value, shown in (("interval", 30, "30"), ("quality", 55, "55"),
                              ("frame_size", "QVGA", "QVGA"), ("flash_on_capture", "true",
                                                               "true")):
        mark = ha.set(key, value)
        ack = ha.ack(key, mark)
        assert ack["ok"], ack
        assert ha.state(key, mark, lambda s, shown=shown: s == shown) == shown
    assert json.loads(node.board_file("config.json").read_text())["quality"] == 55

    # Sensors read from the state document.
    assert int(ha.state("rssi")) < 0 and int(ha.state("heap_free")) > 0
    assert ha.state("reset_cause") and ha.state("wake")

    # Reboot: the node acks and starts again.
    mark = ha.press("reboot")
    assert ha.ack("reboot", mark)["ok"]
    node.wait_boots(2)
    everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"online")


def test_availability_online_sleeping_offline_and_backend_down(make_node, settings,
                                                               everything):
    backend = Backend(settings).start()
    try:
        node = make_node(NODE)
        ha = HomeAssistant(everything, NODE)
        everything.topic(f"espcam/{NODE}/availability", payload=b"online")
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
        mark = everything.mark()
        node.kill()
        everything.topic(f"espcam/{NODE}/availability", start=mark, payload=b"offline")
        assert not ha.available("camera") and not ha.available("capture")
        assert ha.available("frames_stored")  # the backend's own figures stay available
    finally:
        backend.stop()


def test_flash_light_follows_the_node_not_the_ack(broker, backend, everything):
    """The documented payloads of a flash pulse and a sleep (docs/protocol.md): the node acks
    `{"flash": "on"}`, publishes its state with `"flash": "on"`, and with `"flash": "off"` when
    the pulse ends (or before a deep sleep). Home Assistant's light shows off, whatever the ack
    said, and whatever the backend kept."""
    node = "cam-pulse"
    cam = make_client(node)
    cam.connect(broker.host, broker.port)
    cam.loop_start()
    try:
        state = {"proto": 1, "node": node, "app": "0.1.0", "fw": "1.24.1", "driver": "camera",
                 "mac": "24:0a:c4:00:00:01", "rssi": -60, "heap_free": 80000, "uptime": 5.0,
                 "time": 1763980000, "reset_cause": "power_on", "wake": "none", "frame": 0,
                 "camera": "ok", "chunk_size": 4096, "sleep_until": None, "flash": "off",
                 "settings": {"interval": 0, "frame_size": "VGA", "quality": 80,
                              "flash_on_capture": False, "sleep_interval": 0, "awake": 5,
                              "motion_cooldown": 10, "motion": False}}

        def publish(kind: str, doc: dict | str) -> None:
            payload = doc if isinstance(doc, str) else json.dumps(doc)
            cam.publish(f"espcam/{node}/{kind}", payload, qos=1,
                        retain=kind in ("availability", "state")).wait_for_publish(10)

        publish("availability", "online")
        publish("state", state)
        ha = HomeAssistant(everything, node)
        assert ha.state("flash") == "off"
        # Home Assistant turns the light on; the node acks and says so in its state.
        mark = ha.set("flash", "on")
        publish("ack", {"id": "ha-flash", "cmd": "flash", "ok": True,
                        "result": {"flash": "on"}})
        publish("state", {**state, "flash": "on", "uptime": 6.0})
        assert ha.state("flash", mark, lambda s: s == "on") == "on"
        # A pulse from the CLI: acked "on", and the LED goes off by itself 200 ms later.
        mark = everything.mark()
        publish("ack", {"id": "p1", "cmd": "flash", "ok": True, "result": {"flash": "on"}})
        publish("state", {**state, "flash": "on", "uptime": 7.0})
        publish("state", {**state, "flash": "off", "uptime": 7.2})
        everything.wait(lambda m: m.topic == f"espcam/{node}/state"
                        and b'"uptime": 7.2' in m.payload, start=mark)
        assert ha.light() == "off" and ha.available("flash")
        # Before a deep sleep: the state with the LED off and sleep_until, then `sleeping`.
        publish("state", {**state, "flash": "on", "uptime": 8.0})
        publish("state", {**state, "flash": "off", "uptime": 9.0, "sleep_until": 1763990000})
        publish("availability", "sleeping")
        everything.topic(f"espcam/{node}/availability", payload=b"sleeping")
        assert ha.light() == "off" and ha.available("flash")
    finally:
        cam.loop_stop()
        cam.disconnect()
