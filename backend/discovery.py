"""Home Assistant MQTT discovery documents for a node, built from a table of entities.

One device-based discovery document per node, on `<ha_prefix>/device/espcam_<node>/config`
(Home Assistant's `dev` / `o` / `cmps` format, abbreviated keys). Every entity is a row of
ENTITIES; `build` turns rows into components by their platform. Pure data and functions: no
MQTT here (backend/homeassistant.py publishes). docs/home-assistant.md describes the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from espcam.backend.documents import SETTINGS
from espcam.backend.names import check_node_id
from espcam.backend.protocol import SPEC, backend_topic, topic

MANUFACTURER = "Espressif"
MODEL = "ESP32-CAM"
ORIGIN = "espcam"

# Where an entity's state comes from.
STATE = "state"  # the node's retained state document, <prefix>/<node>/state
REPORT = "report"  # the backend's retained per-node report, <prefix>/_backend/nodes/<node>
IMAGE = "image"  # the backend's retained latest JPEG, <prefix>/<node>/image
ANALYSIS = "analysis"  # the backend's retained findings, <prefix>/_backend/analysis/<node>
DOORBELL = "doorbell"  # doorbell events (not retained), <prefix>/<node>/doorbell
UPDATE = "update"  # the backend's retained update entity state, <prefix>/<node>/update

# Which availability an entity follows.
NODE_AND_BACKEND = "node"  # node online or sleeping, and the backend online
BACKEND_ONLY = "backend"  # figures the backend keeps: valid while the node is offline too

# Home Assistant's abbreviations for the option names used here (its documented list).
ABBREVIATIONS: dict[str, str] = {
    "availability": "avty",
    "availability_mode": "avty_mode",
    "command_off_template": "cmd_off_tpl",
    "command_on_template": "cmd_on_tpl",
    "command_template": "cmd_tpl",
    "command_topic": "cmd_t",
    "components": "cmps",
    "device": "dev",
    "device_class": "dev_cla",
    "enabled_by_default": "en",
    "entity_category": "ent_cat",
    "event_types": "evt_typ",
    "icon": "ic",
    "max": "max",
    "min": "min",
    "mode": "mode",
    "options": "ops",
    "origin": "o",
    "payload_available": "pl_avail",
    "payload_not_available": "pl_not_avail",
    "payload_off": "pl_off",
    "payload_on": "pl_on",
    "payload_press": "pl_prs",
    "payload_install": "pl_inst",
    "platform": "p",
    "qos": "qos",
    "state_class": "stat_cla",
    "state_template": "stat_tpl",
    "state_topic": "stat_t",
    "step": "step",
    "suggested_display_precision": "sug_dsp_prc",
    "topic": "t",
    "unique_id": "uniq_id",
    "unit_of_measurement": "unit_of_meas",
    "value_template": "val_tpl",
}
DEVICE_ABBREVIATIONS: dict[str, str] = {
    "configuration_url": "cu",
    "connections": "cns",
    "identifiers": "ids",
    "manufacturer": "mf",
    "model": "mdl",
    "name": "name",
    "sw_version": "sw",
}
ORIGIN_ABBREVIATIONS: dict[str, str] = {"name": "name", "sw_version": "sw", "support_url": "url"}


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity of a node.

    key: component id, and the end of the unique id (`espcam_<node>_<key>`); never change it,
        or Home Assistant sees a new entity.
    platform: Home Assistant platform (camera, button, light, number, select, switch, sensor,
        binary_sensor, event).
    name: entity name, shown after the device name; None: the device name alone.
    source, path: where the state is read (STATE, REPORT, IMAGE, ANALYSIS, DOORBELL) and the
        dotted path in it.
    command: the protocol command a button sends; for the light, the on/off commands.
    setting: the node setting a number, select or switch changes (`config` command); its
        range or choices come from the protocol's settings table.
    options: more Home Assistant options, by full name.
    availability: NODE_AND_BACKEND or BACKEND_ONLY.
    """

    key: str
    platform: str
    name: str | None
    source: str = ""
    path: str = ""
    command: dict[str, Any] | None = None
    setting: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    availability: str = NODE_AND_BACKEND


DIAGNOSTIC = {"entity_category": "diagnostic"}
CONFIG = {"entity_category": "config"}

ENTITIES: tuple[Entity, ...] = (
    Entity("camera", "camera", None, source=IMAGE),
    Entity("capture", "button", "Capture", command={"cmd": "capture"},
           options={"icon": "mdi:camera-iris"}),
    Entity("flash", "light", "Flash", source=STATE,
           command={"on": {"cmd": "flash", "state": "on"},
                    "off": {"cmd": "flash", "state": "off"}}),
    Entity("reboot", "button", "Reboot", command={"cmd": "reboot"},
           options={"device_class": "restart", **CONFIG}),
    Entity("interval", "number", "Capture interval", source=STATE, setting="interval",
           options={"unit_of_measurement": "s", "device_class": "duration", "mode": "box",
                    **CONFIG}),
    Entity("frame_size", "select", "Frame size", source=STATE, setting="frame_size",
           options={"icon": "mdi:image-size-select-large", **CONFIG}),
    Entity("quality", "number", "JPEG quality", source=STATE, setting="quality",
           options={"unit_of_measurement": "%", "mode": "slider", "icon": "mdi:quality-high",
                    **CONFIG}),
    Entity("flash_on_capture", "switch", "Flash on capture", source=STATE,
           setting="flash_on_capture", options={"icon": "mdi:flash-auto", **CONFIG}),
    Entity("rssi", "sensor", "Wi-Fi signal", source=STATE, path="rssi",
           options={"device_class": "signal_strength", "unit_of_measurement": "dBm",
                    "state_class": "measurement", **DIAGNOSTIC}),
    Entity("heap_free", "sensor", "Free heap", source=STATE, path="heap_free",
           options={"device_class": "data_size", "unit_of_measurement": "B",
                    "state_class": "measurement", "icon": "mdi:memory", **DIAGNOSTIC}),
    Entity("uptime", "sensor", "Uptime", source=STATE, path="uptime",
           options={"device_class": "duration", "unit_of_measurement": "s",
                    "suggested_display_precision": 0, **DIAGNOSTIC}),
    Entity("reset_cause", "sensor", "Reset cause", source=STATE, path="reset_cause",
           options={"icon": "mdi:restart-alert", **DIAGNOSTIC}),
    Entity("wake", "sensor", "Wake cause", source=STATE, path="wake",
           options={"icon": "mdi:alarm", **DIAGNOSTIC}),
    Entity("last_capture", "sensor", "Last capture", source=REPORT, path="last_capture",
           options={"device_class": "timestamp"}, availability=BACKEND_ONLY),
    Entity("frames_stored", "sensor", "Frames stored", source=REPORT, path="frames_stored",
           options={"state_class": "total", "icon": "mdi:image-multiple", **DIAGNOSTIC},
           availability=BACKEND_ONLY),
    Entity("frames_lost", "sensor", "Frames lost", source=REPORT, path="frames_lost",
           options={"state_class": "total_increasing", "icon": "mdi:image-broken",
                    **DIAGNOSTIC}, availability=BACKEND_ONLY),
    # Updates over MQTT (backend/ota.py keeps the state): available while the node sleeps,
    # since a sleeping node takes its update when it wakes.
    Entity("firmware", "update", "Node app", source=UPDATE,
           options={"device_class": "firmware"}, availability=BACKEND_ONLY),
)

# The doorbell: the node's `ring` and the backend's person events, read as they are published
# (docs/protocol.md, "Doorbell events"). Every node gets it: a node without a button never
# rings, and its person events need analysis.
DOORBELL_ENTITY = Entity("doorbell", "event", "Doorbell", source=DOORBELL,
                         options={"device_class": "doorbell",
                                  "event_types": list(SPEC["doorbell"]["event_types"])})
# What analysis finds in the node's newest analysed frame (docs/home-assistant.md); only while
# analysis runs (the faces extra installed), so that no entity stays unknown for ever.
ANALYSIS_ENTITIES: tuple[Entity, ...] = (
    Entity("motion", "binary_sensor", "Motion", source=ANALYSIS, path="motion",
           options={"device_class": "motion"}, availability=BACKEND_ONLY),
    Entity("person", "binary_sensor", "Person", source=ANALYSIS, path="people",
           options={"device_class": "occupancy", "icon": "mdi:account"},
           availability=BACKEND_ONLY),
    Entity("last_person", "sensor", "Last person", source=ANALYSIS, path="last_person",
           options={"icon": "mdi:account-question"}, availability=BACKEND_ONLY),
)


def entities(analysis: bool) -> tuple[Entity, ...]:
    """A node's entities: with the analysis ones while analysis runs."""
    return ENTITIES + (DOORBELL_ENTITY,) + (ANALYSIS_ENTITIES if analysis else ())


# Command ids are fixed per entity (Home Assistant cannot make fresh ones; the protocol allows
# re-used ids), so acks to Home Assistant's commands are recognisable: `ha-<entity key>`.
COMMAND_ID_PREFIX = "ha-"
# What a node availability payload means to Home Assistant: a sleeping camera keeps its
# picture and its queued commands, so it is available. Anything but `online` and `sleeping` is
# not: `offline`, the empty payload `espcam forget` clears the topic with, garbage.
# Home Assistant renders this template only with the availability topic's payload, when one
# arrives: it cannot see the state document's `sleep_until`, nor notice that a sleeping node
# never woke up. The backend can: its report for the node says `available: offline` once the
# node is overdue (nodes.py), and Home Assistant requires that too (docs/home-assistant.md,
# "Availability").
NODE_AVAILABILITY_TEMPLATE = "{{ 'online' if value in ('online', 'sleeping') else 'offline' }}"
REPORT_AVAILABILITY_TEMPLATE = ("{{ 'offline' if value_json is defined and "
                                "value_json.get('available') == 'offline' else 'online' }}")
# The light's state from the node's state document, which carries `"flash": "on"|"off"` and is
# republished whenever the LED changes (also when a pulse ends and before a deep sleep).
# Without the key (an older node), or for a payload that is not JSON (the topic cleared by
# `espcam forget`), the state is unknown: `None` is Home Assistant's payload for that; anything
# else than on, off and None would only be logged as invalid.
LIGHT_STATE_TEMPLATE = ("{{ value_json.get('flash') if value_json is defined and "
                        "value_json.get('flash') in ('on', 'off') else 'None' }}")


def version() -> str:
    try:
        return metadata.version("espcam")
    except metadata.PackageNotFoundError:
        return "0"


def device_id(node: str) -> str:
    return f"espcam_{check_node_id(node)}"


def unique_id(node: str, key: str) -> str:
    return f"{device_id(node)}_{key}"


def discovery_topic(ha_prefix: str, node: str) -> str:
    return f"{ha_prefix}/device/{device_id(node)}/config"


def report_topic(prefix: str, node: str) -> str:
    """The backend's retained per-node report (frames stored and lost, last capture)."""
    return backend_topic(prefix, f"nodes/{check_node_id(node)}")


def analysis_topic(prefix: str, node: str) -> str:
    """The backend's retained findings in the node's newest analysed frame."""
    return backend_topic(prefix, f"analysis/{check_node_id(node)}")


def _jinja_path(path: str) -> str:
    return "value_json." + path


def _command(entity_key: str, doc: dict[str, Any]) -> str:
    return json.dumps({"id": COMMAND_ID_PREFIX + entity_key, **doc}, separators=(",", ":"))


def _setting_command_template(entity: Entity) -> str:
    """A `config` command with the value Home Assistant fills in, typed as the node wants."""
    kind = SETTINGS[entity.setting].type
    marker = "@VALUE@"
    text = _command(entity.key, {"cmd": "config", "set": {entity.setting: marker}})
    value = {"int": "{{ value | int }}", "bool": "{{ value }}", "choice": '"{{ value }}"'}[kind]
    return text.replace(f'"{marker}"', value)


def _availability(prefix: str, node: str, which: str) -> list[dict[str, str]]:
    out = [{"topic": backend_topic(prefix, "availability"), "payload_available": "online",
            "payload_not_available": "offline"}]
    if which == NODE_AND_BACKEND:
        out.append({"topic": topic(prefix, node, "availability"),
                    "value_template": NODE_AVAILABILITY_TEMPLATE,
                    "payload_available": "online", "payload_not_available": "offline"})
        out.append({"topic": report_topic(prefix, node),
                    "value_template": REPORT_AVAILABILITY_TEMPLATE,
                    "payload_available": "online", "payload_not_available": "offline"})
    return out


def component(entity: Entity, prefix: str, node: str) -> dict[str, Any]:
    """One entity's component options (full names), by its platform."""
    c: dict[str, Any] = {"platform": entity.platform, "unique_id": unique_id(node, entity.key),
                         "name": entity.name}
    state_topic = {STATE: topic(prefix, node, "state") if entity.source == STATE else "",
                   REPORT: report_topic(prefix, node), IMAGE: topic(prefix, node, "image"),
                   ANALYSIS: analysis_topic(prefix, node),
                   DOORBELL: topic(prefix, node, "doorbell") if entity.source == DOORBELL
                   else ""}
    cmd_topic = topic(prefix, node, "cmd")
    if entity.platform == "camera":
        c["topic"] = state_topic[IMAGE]  # raw JPEG bytes: no image_encoding
    elif entity.platform == "button":
        assert entity.command is not None
        c.update(command_topic=cmd_topic, payload_press=_command(entity.key, entity.command),
                 qos=1)
    elif entity.platform == "light":
        # Template schema: on/off payloads are whole commands, the state the node's own
        # "flash" field (not the last ack: a pulse ends, a sleep turns the LED off).
        assert entity.command is not None and entity.source == STATE
        c.update(schema="template", command_topic=cmd_topic, qos=1,
                 command_on_template=_command(entity.key, entity.command["on"]),
                 command_off_template=_command(entity.key, entity.command["off"]),
                 state_topic=state_topic[STATE],
                 state_template=LIGHT_STATE_TEMPLATE)
    elif entity.platform in ("number", "select", "switch"):
        spec = SETTINGS[entity.setting]
        value = _jinja_path("settings." + entity.setting)
        c.update(command_topic=cmd_topic, qos=1, state_topic=state_topic[STATE],
                 command_template=_setting_command_template(entity))
        if entity.platform == "number":
            c.update(min=spec.low, max=spec.high, step=1, value_template="{{ " + value + " }}")
        elif entity.platform == "select":
            c.update(options=list(spec.choices), value_template="{{ " + value + " }}")
        else:
            c.update(payload_on="true", payload_off="false",
                     value_template="{{ 'true' if " + value + " else 'false' }}")
    elif entity.platform == "sensor" and entity.source == ANALYSIS:
        # No one seen yet, or the topic cleared by `espcam forget`: unknown (`None`).
        c.update(state_topic=state_topic[ANALYSIS],
                 value_template="{{ value_json.get('" + entity.path + "') or 'None' if "
                                "value_json is defined else 'None' }}")
    elif entity.platform == "sensor":
        c.update(state_topic=state_topic[entity.source],
                 value_template="{{ " + _jinja_path(entity.path) + " }}")
    elif entity.platform == "binary_sensor":
        # Empty, false, none: off; the topic cleared by `espcam forget` too.
        c.update(state_topic=state_topic[entity.source],
                 value_template="{{ 'ON' if value_json is defined and value_json.get('"
                                + entity.path + "') else 'OFF' }}")
    elif entity.platform == "event":
        # The payload is the event as it is: {"event_type": ..., attributes...}.
        c.update(state_topic=state_topic[entity.source])
    elif entity.platform == "update":
        # The state is HA's own JSON (installed_version, latest_version, in_progress, ...);
        # Install goes to the backend, which holds the signed offer.
        node_base = f"{prefix}/{check_node_id(node)}/"
        c.update(state_topic=node_base + "update", command_topic=node_base + "ota/install",
                 payload_install="install", qos=1)
    else:
        raise ValueError(f"entity {entity.key}: no builder for platform {entity.platform!r}")
    c.update(entity.options)
    if entity.availability != NODE_AND_BACKEND:
        c["availability"] = _availability(prefix, node, entity.availability)
    return c


def _abbreviate(doc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in doc.items()}


def build(prefix: str, node: str, state: dict[str, Any] | None = None,
          entities: tuple[Entity, ...] = ENTITIES) -> dict[str, Any]:
    """The device discovery document of `node`, abbreviated as Home Assistant documents it.
    `state` is the node's state document, for the MAC and software version (None: unknown)."""
    state = state or {}
    device: dict[str, Any] = {"identifiers": [device_id(node)], "name": node,
                              "manufacturer": MANUFACTURER, "model": MODEL}
    mac = state.get("mac")
    if isinstance(mac, str) and mac:
        device["connections"] = [["mac", mac.lower()]]
    app, fw = state.get("app"), state.get("fw")
    if isinstance(app, str) and app:
        device["sw_version"] = app + (f" (MicroPython {fw})" if isinstance(fw, str) else "")
    components = {}
    for e in entities:
        c = component(e, prefix, node)
        if "availability" in c:
            c["availability"] = [_abbreviate(a, ABBREVIATIONS) for a in c["availability"]]
        components[e.key] = _abbreviate(c, ABBREVIATIONS)
    doc = {
        "device": _abbreviate(device, DEVICE_ABBREVIATIONS),
        "origin": _abbreviate({"name": ORIGIN, "sw_version": version()}, ORIGIN_ABBREVIATIONS),
        "availability": [_abbreviate(a, ABBREVIATIONS)
                         for a in _availability(prefix, node, NODE_AND_BACKEND)],
        "availability_mode": "all",
        "qos": 1,
        "components": components,
    }
    return _abbreviate(doc, ABBREVIATIONS)


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
