"""Home Assistant discovery documents: checked key by key against Home Assistant's documented
device-discovery schema, against the protocol's topics and commands, and as a running backend
publishes them (retained, stable unique ids, republished when Home Assistant comes online)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend import discovery  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.protocol import SETTINGS, build_command  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from hatemplate import (  # noqa: E402
    ABBREVIATIONS,
    DEVICE_ABBREVIATIONS,
    ORIGIN_ABBREVIATIONS,
    available,
    expand,
    render,
)
from lightnode import LightNode  # noqa: E402
from observer import Observer, retained  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NODE = "cam-a1b2c3"
STATE = {"proto": 1, "node": NODE, "app": "0.1.0", "fw": "1.24.1", "driver": "camera",
         "mac": "24:0a:c4:a1:b2:c3", "ip": "192.168.1.50", "rssi": -61, "heap_free": 81234,
         "uptime": 12.5, "time": 1763980000, "reset_cause": "deepsleep", "wake": "timer",
         "frame": 41, "camera": "ok", "chunk_size": 4096, "sleep_until": None,
         "settings": {"interval": 60, "frame_size": "SVGA", "quality": 70,
                      "flash_on_capture": True, "sleep_interval": 0, "awake": 5,
                      "motion_cooldown": 10, "motion": False}}

# Home Assistant's MQTT platforms: options that are required, and the options espcam may use
# (full names, from each platform's documentation page).
COMMON = {"platform", "unique_id", "name", "availability", "availability_mode", "device",
          "entity_category", "icon", "enabled_by_default", "qos", "encoding", "object_id",
          "default_entity_id", "json_attributes_topic", "json_attributes_template"}
PLATFORMS: dict[str, tuple[set[str], set[str]]] = {
    "camera": ({"topic"}, {"image_encoding"}),
    "button": ({"command_topic"}, {"payload_press", "device_class", "retain",
                                   "command_template"}),
    "light": ({"command_topic", "schema", "command_on_template", "command_off_template"},
              {"state_topic", "state_template", "optimistic", "retain"}),
    "number": ({"command_topic"}, {"command_template", "state_topic", "value_template", "min",
                                   "max", "step", "mode", "unit_of_measurement", "device_class",
                                   "optimistic", "retain"}),
    "select": ({"command_topic", "options"}, {"command_template", "state_topic",
                                              "value_template", "optimistic", "retain"}),
    "switch": ({"command_topic"}, {"command_template", "state_topic", "value_template",
                                   "payload_on", "payload_off", "state_on", "state_off",
                                   "device_class", "optimistic", "retain"}),
    "sensor": ({"state_topic"}, {"value_template", "device_class", "unit_of_measurement",
                                 "state_class", "suggested_display_precision", "expire_after",
                                 "force_update"}),
}
ROOT_KEYS = {"device", "origin", "components", "availability", "availability_mode", "qos",
             "state_topic", "command_topic", "encoding"}


def protocol_topic_patterns() -> list[re.Pattern]:
    """Every topic of docs/protocol.md's topic tables, as a regex for prefix `espcam`."""
    out = []
    for m in re.finditer(r"^\| `(<prefix>/[^`]+)` \|", (ROOT / "docs/protocol.md").read_text(),
                         re.M):
        pattern = re.escape(m.group(1)).replace(re.escape("<prefix>"), "espcam")
        pattern = pattern.replace(re.escape("<node>"), "[a-z0-9][a-z0-9_-]{0,31}")
        out.append(re.compile(pattern + "$"))
    return out


def topics_in(doc: dict) -> list[str]:
    found = []
    for key, value in doc.items():
        if key in ("t", "stat_t", "cmd_t", "json_attr_t") and isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            found += topics_in(value)
        elif isinstance(value, list):
            found += [t for v in value if isinstance(v, dict) for t in topics_in(v)]
    return found


def check_abbreviated(doc: dict, names: dict[str, str], where: str) -> None:
    full_with_abbreviation = {full for short, full in names.items() if short != full}
    for key in doc:
        assert key not in full_with_abbreviation, f"{where}: {key!r} has an abbreviation"


@pytest.fixture
def doc():
    return discovery.build("espcam", NODE, STATE)


def test_root_device_and_origin_follow_device_discovery(doc):
    check_abbreviated(doc, ABBREVIATIONS, "root")
    root = expand(doc)
    assert set(root) <= ROOT_KEYS
    assert {"device", "origin", "components"} <= set(root)  # required by device discovery
    dev = expand(root["device"], DEVICE_ABBREVIATIONS)
    check_abbreviated(root["device"], DEVICE_ABBREVIATIONS, "device")
    assert set(root["device"]) <= set(DEVICE_ABBREVIATIONS)
    assert dev["identifiers"] == [f"espcam_{NODE}"]
    assert dev["connections"] == [["mac", STATE["mac"]]]
    assert dev["manufacturer"] and dev["model"] == "ESP32-CAM" and dev["name"] == NODE
    assert "0.1.0" in dev["sw_version"] and "1.24.1" in dev["sw_version"]
    origin = expand(root["origin"], ORIGIN_ABBREVIATIONS)
    assert set(root["origin"]) <= set(ORIGIN_ABBREVIATIONS) and origin["name"] == "espcam"
    assert root["availability_mode"] == "all" and root["qos"] == 1
    assert discovery.discovery_topic("homeassistant", NODE) == (
        f"homeassistant/device/espcam_{NODE}/config")


def test_every_component_has_its_platforms_required_keys_and_nothing_undocumented(doc):
    comps = doc["cmps"]
    assert {expand(c)["platform"] for c in comps.values()} == set(PLATFORMS)
    uids = [expand(c)["unique_id"] for c in comps.values()]
    assert len(set(uids)) == len(uids)
    for key, comp in comps.items():
        check_abbreviated(comp, ABBREVIATIONS, key)
        c = expand(comp)
        required, optional = PLATFORMS[c["platform"]]
        assert required <= set(c), f"{key} lacks {required - set(c)}"
        assert set(c) <= required | optional | COMMON, f"{key}: {set(c) - required - optional}"
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", key)
        assert c["unique_id"] == f"espcam_{NODE}_{key}"
        for entry in c.get("availability", []):
            assert set(expand(entry)) <= {"topic", "payload_available", "payload_not_available",
                                          "value_template"}
    # The entities the issue asks for.
    platforms = {key: expand(c)["platform"] for key, c in comps.items()}
    assert platforms["camera"] == "camera" and platforms["flash"] == "light"
    assert platforms["capture"] == platforms["reboot"] == "button"
    assert expand(comps["reboot"])["device_class"] == "restart"
    assert {k for k, p in platforms.items() if p in ("number", "select", "switch")} == {
        "interval", "frame_size", "quality", "flash_on_capture"}
    assert {k for k, p in platforms.items() if p == "sensor"} == {
        "rssi", "heap_free", "uptime", "last_capture", "frames_stored", "frames_lost",
        "reset_cause", "wake"}
    assert expand(comps["last_capture"])["device_class"] == "timestamp"
    assert expand(comps["rssi"])["unit_of_measurement"] == "dBm"


def test_every_topic_is_one_of_the_protocols(doc):
    patterns = protocol_topic_patterns()
    assert len(patterns) >= 9
    topics = topics_in(doc)
    assert f"espcam/{NODE}/image" in topics and "espcam/_backend/availability" in topics
    for t in topics:
        assert any(p.match(t) for p in patterns), f"{t} is not in docs/protocol.md"
    assert expand(doc["cmps"]["camera"]).get("image_encoding") is None  # raw JPEG


def command_payloads(doc) -> dict[str, list[str]]:
    """What Home Assistant publishes for each commanding entity, for sample values."""
    out: dict[str, list[str]] = {}
    for key, comp in doc["cmps"].items():
        c = expand(comp)
        if c["platform"] == "button":
            out[key] = [c["payload_press"]]
        elif c["platform"] == "light":
            out[key] = [render(c["command_on_template"], state="on"),
                        render(c["command_off_template"], state="off")]
        elif c["platform"] == "number":
            out[key] = [render(c["command_template"], value=v) for v in (c["min"], c["max"])]
        elif c["platform"] == "select":
            out[key] = [render(c["command_template"], value=v) for v in c["options"]]
        elif c["platform"] == "switch":
            out[key] = [render(c["command_template"], value=v)
                        for v in (c["payload_on"], c["payload_off"])]
    return out


def test_commands_are_protocol_commands_with_fixed_ids_at_qos_1(doc):
    payloads = command_payloads(doc)
    assert set(payloads) == {"capture", "flash", "reboot", "interval", "frame_size", "quality",
                             "flash_on_capture"}
    for key, texts in payloads.items():
        assert expand(doc["cmps"][key])["qos"] == 1
        for text in texts:
            cmd = json.loads(text)
            assert cmd["id"] == f"ha-{key}"
            args = {k: v for k, v in cmd.items() if k not in ("id", "cmd")}
            assert build_command(cmd["cmd"], cmd["id"], **args) == cmd  # the node accepts it
    assert json.loads(payloads["interval"][1])["set"] == {"interval": SETTINGS["interval"].high}
    assert json.loads(payloads["flash_on_capture"][0])["set"] == {"flash_on_capture": True}
    assert [json.loads(p)["state"] for p in payloads["flash"]] == ["on", "off"]


def test_states_read_back_from_the_state_document(doc):
    state = json.dumps(STATE)
    got = {key: render(expand(c)["value_template"], state)
           for key, c in doc["cmps"].items() if "val_tpl" in c}
    assert got["interval"] == "60" and got["quality"] == "70" and got["frame_size"] == "SVGA"
    assert got["flash_on_capture"] == expand(doc["cmps"]["flash_on_capture"])["payload_on"]
    assert got["rssi"] == "-61" and got["heap_free"] == "81234" and got["uptime"] == "12.5"
    assert got["reset_cause"] == "deepsleep" and got["wake"] == "timer"
    off = json.dumps({**STATE, "settings": {**STATE["settings"], "flash_on_capture": False}})
    c = expand(doc["cmps"]["flash_on_capture"])
    assert render(c["value_template"], off) == c["payload_off"]


def test_flash_light_reads_the_nodes_state_document(doc):
    """The light shows the LED as the node says it is (docs/protocol.md, state document
    `flash`), not the last ack: the node republishes its state when a pulse ends and before a
    deep sleep, with `"flash": "off"`."""
    c = expand(doc["cmps"]["flash"])
    assert c["state_topic"] == f"espcam/{NODE}/state"
    on = json.dumps({**STATE, "flash": "on"})
    off = json.dumps({**STATE, "flash": "off", "sleep_until": 1763990000})  # before sleeping
    assert render(c["state_template"], on) == "on"
    assert render(c["state_template"], off) == "off"
    # A node that does not report its LED: unknown (Home Assistant's `None`), not a guess.
    assert render(c["state_template"], json.dumps(STATE)) == "None"
    assert render(c["state_template"], json.dumps({**STATE, "flash": "pulse"})) == "None"
    assert render(c["state_template"], "") == "None"  # the topic cleared by `espcam forget`


@pytest.mark.parametrize("payload, shown", [
    (b"online", True), (b"sleeping", True), (b"offline", False),
    (b"", False),  # `espcam forget` clears the retained availability with an empty payload
    (b"garbage", False), (b"Online", False), (None, False)])
def test_node_availability_is_online_or_sleeping_and_nothing_else(doc, payload, shown):
    for key in ("camera", "capture", "flash", "interval", "rssi"):
        assert available(doc["cmps"][key], doc, {
            "espcam/_backend/availability": b"online",
            f"espcam/{NODE}/availability": payload}) is shown, key
    # The backend's own figures follow the backend only.
    assert available(doc["cmps"]["frames_stored"], doc, {
        "espcam/_backend/availability": b"online", f"espcam/{NODE}/availability": payload})


# -- a running backend ---------------------------------------------------------------------

@pytest.fixture
def settings(broker, tmp_path):
    return Settings(broker=broker.url, data_dir=str(tmp_path / "data"), resend_after=0.3,
                    client_id="backend-ha")


def run_backend(settings) -> Backend:
    b = Backend(settings).start()
    assert b.connected.wait(10)
    return b


def retained_json(broker, topic: str) -> dict:
    payload = retained(broker.host, broker.port, topic)
    assert payload, f"nothing retained on {topic}"
    return json.loads(payload)


def test_backend_publishes_discovery_retained_with_ids_stable_across_restarts(broker, settings,
                                                                             everything):
    observer = everything
    cam = LightNode(broker.host, broker.port, "cam-1").start()
    topic = discovery.discovery_topic("homeassistant", "cam-1")
    backend = run_backend(settings)
    try:
        first = observer.json_on(topic, lambda d: "sw" in d["dev"])  # after the state document
        assert retained_json(broker, topic) == first
    finally:
        backend.stop()
    ids = {k: c["uniq_id"] for k, c in first["cmps"].items()}
    mark = observer.mark()
    backend = run_backend(settings)  # a restart: same data directory, new process state
    try:
        again = observer.json_on(topic, lambda d: "sw" in d["dev"], start=mark)
        assert {k: c["uniq_id"] for k, c in again["cmps"].items()} == ids
        # Settled: the node's state is in (above) and the first tick's discovery of every
        # known node has gone out (the status follows it in the same tick). From here on a
        # discovery comes only for a reason, so the two below cannot be leftovers.
        observer.topic("espcam/_backend/status", start=mark)
        # Home Assistant restarting announces itself; every node's discovery comes again.
        mark = observer.mark()
        observer.c.publish("homeassistant/status", "online", qos=1)
        observer.json_on(topic, start=mark)
        # A settings change republishes too.
        mark = observer.mark()
        assert observer.command("cam-1", {"id": "c1", "cmd": "config",
                                          "set": {"quality": 42}})["ok"]
        observer.json_on(topic, start=mark)
    finally:
        backend.stop()
        cam.stop()


def test_discovery_off_and_other_prefix_are_settings(broker, tmp_path, observer):
    s = Settings(broker=broker.url, data_dir=str(tmp_path / "d2"), ha_prefix="ha-test",
                 client_id="backend-ha2")
    cam = LightNode(broker.host, broker.port, "cam-2").start()
    backend = run_backend(s)
    try:
        ha = Observer(broker.host, broker.port, "ha-test/#")
        try:
            ha.topic(discovery.discovery_topic("ha-test", "cam-2"))
        finally:
            ha.close()
    finally:
        backend.stop()
    off = Settings(broker=broker.url, data_dir=str(tmp_path / "d3"), ha_discovery=False,
                   client_id="backend-ha3")
    watcher = Observer(broker.host, broker.port, "#")
    try:
        mark = watcher.mark()
        backend = run_backend(off)
        try:
            # After connecting, the backend publishes discovery (if on), then its status.
            watcher.topic("espcam/_backend/status", start=mark)
            watcher.topic(discovery.report_topic("espcam", "cam-2"), start=mark)
            assert not [m for m in watcher.msgs[mark:]
                        if m.topic.startswith("homeassistant/") and m.payload]
        finally:
            backend.stop()
    finally:
        watcher.close()
        cam.stop()
