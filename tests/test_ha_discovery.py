"""Home Assistant discovery documents as a running backend publishes them: checked option by
option against Home Assistant's device-discovery format and its MQTT platforms (tests/hass.py
says why these are kept by hand and where each fact comes from), against the protocol's topics
and commands, and over time (retained, stable unique ids, republished when Home Assistant
comes online)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker import Broker  # noqa: E402
from espcam.backend.config import Settings  # noqa: E402
from espcam.backend.documents import SETTINGS, build_command  # noqa: E402
from espcam.backend.subscriber import Backend  # noqa: E402
from hass import (  # noqa: E402
    ABBREVIATIONS,
    DEVICE_ABBREVIATIONS,
    ORIGIN_ABBREVIATIONS,
    SHARED_OPTIONS,
    availability,
    command,
    components,
    expand,
    state,
)
from lightnode import LightNode  # noqa: E402
from observer import Observer, retained  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NODE = "cam-a1b2c3"
STATE = {"proto": 1, "node": NODE, "app": "0.1.0", "fw": "1.24.1", "driver": "camera",
         "mac": "24:0A:C4:A1:B2:C3", "ip": "192.168.1.50", "rssi": -61, "heap_free": 81234,
         "uptime": 12.5, "time": 1763980000, "reset_cause": "deepsleep", "wake": "timer",
         "frame": 41, "camera": "ok", "chunk_size": 4096, "sleep_until": None, "flash": "off",
         "settings": {"interval": 60, "frame_size": "SVGA", "quality": 70,
                      "flash_on_capture": True, "sleep_interval": 0, "awake": 5,
                      "motion_cooldown": 10, "motion": False}}

# Home Assistant's MQTT platforms: the options each requires, and those it accepts that espcam
# may use (full names). From each platform's PLATFORM_SCHEMA_MODERN in HA source
# components/mqtt/<platform>.py (light/schema_template.py for the template light) and its
# page on home-assistant.io (integrations/<platform>.mqtt). Home Assistant drops an option it
# does not know without a word (its discovery schemas use REMOVE_EXTRA), so one missing here
# is a setting that would silently do nothing.
COMMON = {"platform", "unique_id", "name", "availability", "availability_mode", "device",
          "origin", "entity_category", "entity_picture", "icon", "enabled_by_default", "qos",
          "encoding", "object_id", "json_attributes_topic", "json_attributes_template",
          "default_entity_id"}  # default_entity_id: 2025.10 on
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
    # command_template: 2024.8 on (core PR #122103); older releases drop it and would publish
    # the bare payload_on/payload_off, which is no protocol command.
    "switch": ({"command_topic"}, {"command_template", "state_topic", "value_template",
                                   "payload_on", "payload_off", "state_on", "state_off",
                                   "device_class", "optimistic", "retain"}),
    "sensor": ({"state_topic"}, {"value_template", "device_class", "unit_of_measurement",
                                 "state_class", "suggested_display_precision", "expire_after",
                                 "force_update"}),
    # binary_sensor.py PLATFORM_SCHEMA (MQTT_RO_SCHEMA: state_topic required).
    "binary_sensor": ({"state_topic"}, {"value_template", "device_class", "payload_on",
                                        "payload_off", "off_delay", "expire_after",
                                        "force_update"}),
    # event.py _PLATFORM_SCHEMA_BASE (2023.8 on): event_types required, device_class one of
    # EventDeviceClass (button, doorbell, motion); the payload is a JSON object with
    # `event_type`, the rest its attributes.
    "event": ({"state_topic", "event_types"}, {"value_template", "device_class"}),
    # update.py PLATFORM_SCHEMA_MODERN (MQTT_RO_SCHEMA: state_topic required); the state a
    # JSON object (installed_version, latest_version, title, release_summary, in_progress,
    # update_percentage).
    "update": ({"state_topic"}, {"command_topic", "payload_install", "device_class",
                                 "latest_version_topic", "latest_version_template",
                                 "value_template", "release_summary", "release_url", "title",
                                 "retain", "display_precision"}),
}
EVENT_DEVICE_CLASSES = {"button", "doorbell", "motion"}
# BinarySensorDeviceClass (binary_sensor/__init__.py), the ones espcam uses or might.
BINARY_SENSOR_DEVICE_CLASSES = {"motion", "occupancy", "presence", "moving"}
AVAILABILITY_ENTRY = {"topic", "payload_available", "payload_not_available", "value_template"}
ROOT_KEYS = {"device", "origin", "components", *SHARED_OPTIONS}
# home-assistant.io integrations/mqtt, "Discovery topic": the object id's characters.
OBJECT_ID = re.compile(r"[a-zA-Z0-9_-]+")


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
    """docs/home-assistant.md promises abbreviated keys: no full name that has a short one."""
    full_with_abbreviation = {full for short, full in names.items() if short != full}
    for key in doc:
        assert key not in full_with_abbreviation, f"{where}: {key!r} has an abbreviation"


def topic_of(node: str, prefix: str = "homeassistant") -> str:
    return f"{prefix}/device/espcam_{node}/config"  # docs/home-assistant.md


def run_backend(settings) -> Backend:
    b = Backend(settings).start()
    assert b.connected.wait(10)
    return b


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    """The discovery document a running backend publishes for a node whose retained state
    document is STATE."""
    tmp = tmp_path_factory.mktemp("published")
    broker = Broker(tmp / "broker").start()
    try:
        cam = LightNode(broker.host, broker.port, NODE)
        cam.state_overrides = dict(STATE)
        cam.start()
        obs = Observer(broker.host, broker.port, "homeassistant/#")
        backend = run_backend(Settings(broker=broker.url, data_dir=str(tmp / "data"),
                                       client_id="backend-doc"))
        try:
            msg = obs.wait(lambda m: m.topic == topic_of(NODE) and m.payload
                           and "sw" in json.loads(m.payload)["dev"])
            return json.loads(msg.payload)
        finally:
            backend.stop()
            obs.close()
            cam.stop()
    finally:
        broker.stop()


def test_root_device_and_origin_follow_device_discovery(doc):
    check_abbreviated(doc, ABBREVIATIONS, "root")
    root = expand(doc)
    assert set(root) <= ROOT_KEYS, set(root) - ROOT_KEYS
    assert {"device", "origin", "components"} <= set(root)  # required by device discovery
    check_abbreviated(root["device"], DEVICE_ABBREVIATIONS, "device")
    assert set(root["device"]) <= set(DEVICE_ABBREVIATIONS)
    dev = expand(root["device"], DEVICE_ABBREVIATIONS)
    assert dev["identifiers"] == [f"espcam_{NODE}"]
    assert dev["connections"] == [["mac", STATE["mac"].lower()]]
    assert dev["manufacturer"] == "Espressif" and dev["model"] == "ESP32-CAM"
    assert dev["name"] == NODE
    assert dev["sw_version"] == "0.1.0 (MicroPython 1.24.1)"  # docs/home-assistant.md
    check_abbreviated(root["origin"], ORIGIN_ABBREVIATIONS, "origin")
    assert set(root["origin"]) <= set(ORIGIN_ABBREVIATIONS)
    assert expand(root["origin"], ORIGIN_ABBREVIATIONS)["name"] == "espcam"
    assert root["availability_mode"] == "all" and root["qos"] == 1


def test_every_component_has_its_platforms_required_options_and_nothing_unknown(doc):
    comps = components(doc)
    assert {c["platform"] for c in comps.values()} == set(PLATFORMS)
    uids = [c["unique_id"] for c in comps.values()]
    assert len(set(uids)) == len(uids)
    for key, raw in doc["cmps"].items():
        check_abbreviated(raw, ABBREVIATIONS, key)
        for entry in raw.get("avty", []):
            check_abbreviated(entry, ABBREVIATIONS, f"{key} availability")
        c = comps[key]
        required, optional = PLATFORMS[c["platform"]]
        assert required <= set(c), f"{key} lacks {required - set(c)}"
        unknown = set(c) - required - optional - COMMON - set(SHARED_OPTIONS)
        assert not unknown, f"{key}: options Home Assistant would drop: {unknown}"
        assert OBJECT_ID.fullmatch(key)
        assert c["unique_id"] == f"espcam_{NODE}_{key}"
        for entry in c["availability"]:
            assert set(entry) <= AVAILABILITY_ENTRY, entry
    # The entities docs/home-assistant.md lists.
    platforms = {key: c["platform"] for key, c in comps.items()}
    assert platforms["camera"] == "camera" and platforms["flash"] == "light"
    assert platforms["capture"] == platforms["reboot"] == "button"
    assert comps["reboot"]["device_class"] == "restart"
    assert comps["flash"]["schema"] == "template"
    assert {k for k, p in platforms.items() if p in ("number", "select", "switch")} == {
        "interval", "frame_size", "quality", "flash_on_capture"}
    assert {k for k, p in platforms.items() if p == "sensor"} == {
        "rssi", "heap_free", "uptime", "last_capture", "frames_stored", "frames_lost",
        "reset_cause", "wake", "last_person"}
    # The doorbell and what analysis finds (the dev extra installs the faces extra).
    assert platforms["doorbell"] == "event"
    assert comps["doorbell"]["device_class"] in EVENT_DEVICE_CLASSES
    assert comps["doorbell"]["event_types"] == ["ring", "known_person", "unknown_person"]
    assert {k for k, p in platforms.items() if p == "binary_sensor"} == {"motion", "person"}
    assert comps["motion"]["device_class"] == "motion"
    for key in ("motion", "person"):
        assert comps[key]["device_class"] in BINARY_SENSOR_DEVICE_CLASSES
    assert comps["last_capture"]["device_class"] == "timestamp"
    assert comps["rssi"]["unit_of_measurement"] == "dBm"
    assert comps["uptime"]["unit_of_measurement"] == "s"
    assert comps["interval"]["unit_of_measurement"] == "s"
    assert comps["quality"]["unit_of_measurement"] == "%"
    assert {k for k, c in comps.items() if c.get("entity_category") == "diagnostic"} == {
        "rssi", "heap_free", "uptime", "reset_cause", "wake", "frames_stored", "frames_lost"}


def test_every_topic_is_one_of_the_protocols(doc):
    patterns = protocol_topic_patterns()
    assert len(patterns) >= 9
    topics = topics_in(doc)
    assert f"espcam/{NODE}/image" in topics and "espcam/_backend/availability" in topics
    for t in topics:
        assert any(p.match(t) for p in patterns), f"{t} is not in docs/protocol.md"
    assert "image_encoding" not in components(doc)["camera"]  # raw JPEG bytes


def command_payloads(doc) -> dict[str, list[str]]:
    """What Home Assistant publishes for each commanding entity, for each action it has (the
    ends of a number's range, every option of a select)."""
    out: dict[str, list[str]] = {}
    for key, c in components(doc).items():
        if c["platform"] == "button":
            out[key] = [command(c, "press")]
        elif c["platform"] in ("light", "switch"):
            out[key] = [command(c, "on"), command(c, "off")]
        elif c["platform"] == "number":
            out[key] = [command(c, "set", v) for v in (c["min"], c["max"])]
        elif c["platform"] == "select":
            out[key] = [command(c, "set", v) for v in c["options"]]
    return out


def test_commands_are_protocol_commands_with_fixed_ids_at_qos_1(doc):
    payloads = command_payloads(doc)
    assert set(payloads) == {"capture", "flash", "reboot", "interval", "frame_size", "quality",
                             "flash_on_capture"}
    comps = components(doc)
    for key, texts in payloads.items():
        assert comps[key]["qos"] == 1 and comps[key]["command_topic"] == f"espcam/{NODE}/cmd"
        for text in texts:
            cmd = json.loads(text)
            assert cmd["id"] == f"ha-{key}"
            args = {k: v for k, v in cmd.items() if k not in ("id", "cmd")}
            assert build_command(cmd["cmd"], cmd["id"], **args) == cmd  # the node accepts it
    assert [json.loads(p)["set"] for p in payloads["interval"]] == [
        {"interval": SETTINGS["interval"].low}, {"interval": SETTINGS["interval"].high}]
    assert [json.loads(p)["set"] for p in payloads["flash_on_capture"]] == [
        {"flash_on_capture": True}, {"flash_on_capture": False}]
    assert [json.loads(p)["set"]["frame_size"] for p in payloads["frame_size"]] == list(
        SETTINGS["frame_size"].choices)
    assert [json.loads(p) for p in payloads["flash"]] == [
        {"id": "ha-flash", "cmd": "flash", "state": "on"},
        {"id": "ha-flash", "cmd": "flash", "state": "off"}]
    assert [json.loads(p) for p in payloads["capture"]] == [{"id": "ha-capture",
                                                             "cmd": "capture"}]


def test_states_read_back_from_the_state_document(doc):
    comps = components(doc)
    on_state = [json.dumps(STATE).encode()]
    got = {key: state(c, on_state) for key, c in comps.items()
           if c.get("state_topic") == f"espcam/{NODE}/state"}
    assert got == {"interval": 60, "quality": 70, "frame_size": "SVGA",
                   "flash_on_capture": "on", "flash": "off", "rssi": "-61",
                   "heap_free": "81234", "uptime": "12.5", "reset_cause": "deepsleep",
                   "wake": "timer"}
    off = json.dumps({**STATE, "settings": {**STATE["settings"], "flash_on_capture": False}})
    assert state(comps["flash_on_capture"], [off.encode()]) == "off"


def test_flash_light_reads_the_nodes_state_document(doc):
    """The light shows the LED as the node says it is (docs/protocol.md, state document
    `flash`), not the last ack."""
    c = components(doc)["flash"]
    assert c["state_topic"] == f"espcam/{NODE}/state"
    on = json.dumps({**STATE, "flash": "on"}).encode()
    off = json.dumps({**STATE, "flash": "off", "sleep_until": 1763990000}).encode()
    assert state(c, [off, on]) == "on"
    assert state(c, [on, off]) == "off"
    # A node that does not report its LED (older firmware): unknown, not a guess.
    older = {k: v for k, v in STATE.items() if k != "flash"}
    assert state(c, [on, json.dumps(older).encode()]) is None
    assert state(c, [on, json.dumps({**STATE, "flash": "pulse"}).encode()]) is None
    assert state(c, [on, b""]) is None  # the topic cleared by `espcam forget`


@pytest.mark.parametrize("payload, shown", [
    (b"online", True), (b"sleeping", True), (b"offline", False),
    (b"", False),  # `espcam forget` clears the retained availability with an empty payload
    (b"garbage", False), (b"Online", False), (None, False)])
def test_node_availability_is_online_or_sleeping_and_nothing_else(doc, payload, shown):
    comps = components(doc)
    # The backend's report on the node is retained: Home Assistant has it from the start.
    backend_online = ("espcam/_backend/availability", b"online")
    report = (f"espcam/_backend/nodes/{NODE}", b'{"frames_stored": 3, "available": "online"}')
    node_topic = f"espcam/{NODE}/availability"
    heard = [] if payload is None else [(node_topic, payload)]
    for key in ("camera", "capture", "flash", "interval", "rssi"):
        assert availability(comps[key], [backend_online, report, *heard]) is shown, key
        # The same payload after the node was online: it decides, nothing is left over.
        after_online = [backend_online, report, (node_topic, b"online"), *heard]
        assert availability(comps[key], after_online) is (shown or payload is None), key
    # The backend's own figures follow the backend only.
    for key in ("last_capture", "frames_stored", "frames_lost"):
        assert availability(comps[key], [backend_online, *heard]), key
        assert not availability(comps[key], [backend_online, *heard, (
            "espcam/_backend/availability", b"offline")]), key


def test_a_node_the_backend_finds_overdue_is_unavailable_though_it_said_sleeping(doc):
    comps = components(doc)
    heard = [("espcam/_backend/availability", b"online"),
             (f"espcam/{NODE}/availability", b"sleeping")]
    overdue = (f"espcam/_backend/nodes/{NODE}", b'{"available": "offline"}')
    back = (f"espcam/_backend/nodes/{NODE}", b'{"available": "online"}')
    for key in ("camera", "capture", "rssi"):
        assert not availability(comps[key], [*heard, overdue]), key
        assert availability(comps[key], [*heard, overdue, back]), key
    # The backend's own figures stay: they are the backend's, true whatever the node does.
    assert availability(comps["frames_stored"], [*heard, overdue])


# -- over time --------------------------------------------------------------------------------

@pytest.fixture
def settings(broker, tmp_path):
    return Settings(broker=broker.url, data_dir=str(tmp_path / "data"), resend_after=0.3,
                    client_id="backend-ha")


def retained_json(broker, topic: str) -> dict:
    payload = retained(broker.host, broker.port, topic)
    assert payload, f"nothing retained on {topic}"
    return json.loads(payload)


def test_backend_publishes_discovery_retained_with_ids_stable_across_restarts(broker, settings,
                                                                             everything):
    observer = everything
    cam = LightNode(broker.host, broker.port, "cam-1").start()
    topic = topic_of("cam-1")
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
        assert observer.json_on(topic, start=mark) == again
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
            ha.topic(topic_of("cam-2", "ha-test"))
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
            watcher.topic("espcam/_backend/nodes/cam-2", start=mark)
            assert not [m for m in watcher.msgs[mark:]
                        if m.topic.startswith("homeassistant/") and m.payload]
        finally:
            backend.stop()
    finally:
        watcher.close()
        cam.stop()


def test_analysis_entities_and_the_doorbell_read_what_the_backend_and_node_publish(doc):
    """What Home Assistant shows from the backend's findings document (backend/doorbell.py
    `document`) and from the doorbell topic (docs/protocol.md, "Doorbell events")."""
    from espcam.backend.doorbell import document, person_event
    from espcam.backend.findings import Findings

    comps = components(doc)
    seen = Findings(NODE, 7, 1, file="/data/x.jpg", trigger="button", motion=4.2, moved=True,
                    faces=[{"box": [1, 2, 3, 4], "name": "alice", "distance": 0.31}],
                    last_person="alice", last_person_at=1763980000.0)
    empty = Findings(NODE, 8, 2, motion=0.1, moved=False, last_person="alice")
    nobody_yet = Findings(NODE, 1, 3)
    def payload(f: Findings) -> bytes:
        return json.dumps(document(f)).encode()

    topic = f"espcam/_backend/analysis/{NODE}"
    for key in ("motion", "person", "last_person"):
        assert comps[key]["state_topic"] == topic
    assert state(comps["motion"], [payload(seen)]) == "on"
    assert state(comps["motion"], [payload(seen), payload(empty)]) == "off"
    assert state(comps["person"], [payload(seen)]) == "on"
    assert state(comps["person"], [payload(seen), payload(empty)]) == "off"
    assert state(comps["last_person"], [payload(seen), payload(empty)]) == "alice"
    assert state(comps["last_person"], [payload(nobody_yet)]) is None
    # `espcam forget` clears the retained topic: off and unknown, not a template error.
    assert state(comps["motion"], [payload(seen), b""]) == "off"
    assert state(comps["last_person"], [payload(seen), b""]) is None
    # The backend's figures: available while the backend is, whatever the node does.
    for key in ("motion", "person", "last_person"):
        assert availability(comps[key], [("espcam/_backend/availability", b"online"),
                                          (f"espcam/{NODE}/availability", b"offline")])
    bell = comps["doorbell"]
    ring = {"event_type": "ring", "at": 1763980000.5, "frame": 7}
    known = person_event(seen)
    stranger = person_event(Findings(NODE, 9, 4, faces=[{"box": [0, 0, 9, 9], "name": None,
                                                         "distance": 0.8}]))
    assert known["event_type"] == "known_person" and known["name"] == "alice"
    assert stranger["event_type"] == "unknown_person" and "name" not in stranger
    events = [json.dumps(e).encode() for e in (ring, known, stranger)]
    assert state(bell, events[:1]) == ring
    assert state(bell, events[:2]) == known
    assert state(bell, events) == stranger
    assert state(bell, [*events, b'{"event_type": "knock"}', b"", b"not json"]) == stranger
