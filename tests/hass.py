"""Home Assistant's side of espcam's MQTT discovery, for tests: what its MQTT integration makes of
a discovery document and of the messages on the topics the document names.

No package carries Home Assistant's MQTT schemas for this Python (3.11) in a usable form: the
newest `homeassistant` release for it, 2024.3.3, pins cryptography==42.0.5 where the dev
extra's esptool needs >=43, takes 400 MB and 3.5 minutes to install, and predates device
discovery. So the facts below are kept here by hand, each with where it comes from. They were
checked once against that release's own code: every component of the published document
validates against its platform's DISCOVERY_SCHEMA there, except for the options the notes mark
as newer, and except the camera, whose module there cannot be imported without the stream
component's numpy and PyAV. "HA source" below means github.com/home-assistant/core,
`homeassistant/`.

Templates are rendered with Jinja2 as Home Assistant renders MQTT templates (HA source
helpers/template.py `TemplateEnvironment`, an ImmutableSandboxedEnvironment;
components/mqtt/models.py `MqttValueTemplate`, `MqttCommandTemplate`), with only the filters,
tests and variables the shipped templates use; a template that uses anything else fails here
instead of rendering something Home Assistant would not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import jinja2
import jinja2.filters
import jinja2.meta
import jinja2.nodes
import jinja2.tests
from jinja2.sandbox import ImmutableSandboxedEnvironment

# -- abbreviations ---------------------------------------------------------------------------
# HA source components/mqtt/abbreviations.py (ABBREVIATIONS, DEVICE_ABBREVIATIONS,
# ORIGIN_ABBREVIATIONS), the options espcam uses or might use, short -> full. Same in 2024.3.3
# except `p` (platform) and `cmps` (components), added with device discovery (core PR #109030,
# reworked and released in 2024.11), and `def_ent_id` (default_entity_id, 2025.10).
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "cmd_off_tpl": "command_off_template",
    "cmd_on_tpl": "command_on_template", "cmd_t": "command_topic",
    "cmd_tpl": "command_template", "cmps": "components", "def_ent_id": "default_entity_id",
    "dev": "device", "dev_cla": "device_class", "e": "encoding", "en": "enabled_by_default",
    "ent_cat": "entity_category", "ent_pic": "entity_picture", "evt_typ": "event_types",
    "exp_aft": "expire_after",
    "frc_upd": "force_update", "ic": "icon", "img_e": "image_encoding",
    "json_attr_t": "json_attributes_topic", "json_attr_tpl": "json_attributes_template",
    "max": "max", "min": "min", "mode": "mode", "name": "name", "o": "origin",
    "obj_id": "object_id", "ops": "options", "opt": "optimistic", "p": "platform",
    "pl_avail": "payload_available", "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off", "pl_on": "payload_on", "pl_prs": "payload_press", "qos": "qos",
    "pl_inst": "payload_install",
    "ret": "retain", "stat_cla": "state_class", "stat_off": "state_off", "stat_on": "state_on",
    "stat_t": "state_topic", "stat_tpl": "state_template", "step": "step",
    "sug_dsp_prc": "suggested_display_precision", "t": "topic", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {"cu": "configuration_url", "cns": "connections", "ids": "identifiers",
                        "name": "name", "mf": "manufacturer", "mdl": "model",
                        "mdl_id": "model_id", "hw": "hw_version", "sw": "sw_version",
                        "sa": "suggested_area", "sn": "serial_number"}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}

# Device discovery (home-assistant.io, integrations/mqtt, "Device discovery payload"; HA
# source components/mqtt/discovery.py): `device` and `origin` are required at the root and
# apply to every component; these options may be set at the root and are inherited by every
# component that does not set them itself.
SHARED_OPTIONS = ("availability", "availability_mode", "availability_template",
                  "availability_topic", "payload_available", "payload_not_available",
                  "command_topic", "state_topic", "qos", "encoding")


def expand(doc: dict[str, Any], names: dict[str, str] = ABBREVIATIONS) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in doc.items()}


def components(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every component of a device discovery document as Home Assistant configures it: full
    option names, the root's shared options merged in, availability entries expanded."""
    root = expand(doc)
    shared = {k: root[k] for k in SHARED_OPTIONS if k in root}
    out = {}
    for key, comp in root["components"].items():
        c = {**shared, **expand(comp)}
        if "availability" in c:
            c["availability"] = [expand(a) for a in c["availability"]]
        c["device"] = expand(root["device"], DEVICE_ABBREVIATIONS)
        c["origin"] = expand(root["origin"], ORIGIN_ABBREVIATIONS)
        out[key] = c
    return out


# -- templates -------------------------------------------------------------------------------

_NO_DEFAULT = object()


def _int_filter(value: Any, default: Any = _NO_DEFAULT, base: int = 10) -> Any:
    """HA's `int` (helpers/template.py forgiving_int_filter): Jinja's do_int, which also takes
    "42.7" as 42, but an error instead of 0 for what is no number unless a default is given."""
    result = jinja2.filters.do_int(value, default=default, base=base)
    if result is _NO_DEFAULT:
        raise ValueError(f"Template error: int got invalid input {value!r} but no default "
                         "was specified")
    return result


FILTERS = {"int": _int_filter}
TESTS = {"defined": jinja2.tests.test_defined}  # Jinja's own; HA keeps it


class TemplateNotProvided(AssertionError):
    """A template uses a filter, test or variable this helper does not provide as HA does."""


def _environment() -> ImmutableSandboxedEnvironment:
    # StrictUndefined: where HA renders an undefined value as "" and logs a template warning,
    # the test fails; no shipped template should ever hit one.
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.filters = dict(FILTERS)
    env.tests = dict(TESTS)
    env.globals = {}
    return env


_ENV = _environment()


def _compile(template: str, variables: Iterable[str]) -> jinja2.Template:
    ast = _ENV.parse(template)  # a syntax error raises here
    # Jinja reports an unknown filter or test only in a branch that runs: check them all.
    for node, kind, provided in ((jinja2.nodes.Filter, "filter", FILTERS),
                                 (jinja2.nodes.Test, "test", TESTS)):
        for n in ast.find_all(node):
            if n.name not in provided:
                raise TemplateNotProvided(f"{kind} {n.name!r} in {template!r}: not provided "
                                          f"here (only {sorted(provided)}); add it with "
                                          "Home Assistant's semantics")
    unknown = jinja2.meta.find_undeclared_variables(ast) - set(variables)
    if unknown:
        raise TemplateNotProvided(f"names {sorted(unknown)} in {template!r}: not provided "
                                  f"here (only {sorted(variables)})")
    return _ENV.from_string(template)


def _is_template(text: str) -> bool:
    return any(m in text for m in ("{{", "{%", "{#"))  # HA's is_template_string


def render_value(template: str, payload: bytes | str) -> str:
    """A value template (value_template, state_template, an availability value_template) on a
    received payload: `value` is its text, `value_json` its JSON when it parses as JSON (any
    JSON value, as HA's json_loads), the result stripped (HA's
    async_render_with_possible_json_value)."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    variables: dict[str, Any] = {"value": text}
    try:
        variables["value_json"] = json.loads(text)
    except ValueError:
        pass
    return _compile(template, ("value", "value_json")).render(variables).strip()


def render_command(template: str, value: Any = None, **variables: Any) -> str:
    """A command template: `value` is what the entity sends (a number's value, a select's
    option, a switch's payload_on/payload_off), plus the platform's own variables (the
    template light's `state`). A string without template markup is published as it is."""
    if not _is_template(template):
        return template
    variables = {"value": value, **variables}
    return _compile(template, variables).render(variables).strip()


# -- entities --------------------------------------------------------------------------------

PAYLOAD_NONE = "None"  # HA's const: the payload that sets a state to unknown


def availability(component: dict[str, Any], messages: Iterable[tuple[str, bytes]]) -> bool:
    """Whether the entity is available after these messages (topic, payload), in order. HA
    source components/mqtt/entity.py (mixins.py in 2024.3) MqttAvailabilityMixin: each topic
    starts not available; a payload whose rendering equals payload_available or
    payload_not_available sets it, anything else leaves it as it was; availability_mode
    `all`, `any` or `latest` (the default) combines them."""
    entries = {e["topic"]: e for e in component.get("availability", [])}
    if not entries:
        return True
    state = {t: False for t in entries}
    latest = False
    for topic, payload in messages:
        e = entries.get(topic)
        if e is None:
            continue
        tpl = e.get("value_template")
        text = render_value(tpl, payload) if tpl else payload.decode()
        if text == e.get("payload_available", "online"):
            state[topic] = latest = True
        elif text == e.get("payload_not_available", "offline"):
            state[topic] = latest = False
    mode = component.get("availability_mode", "latest")
    if mode == "all":
        return all(state.values())
    if mode == "any":
        return any(state.values())
    return latest


def state(component: dict[str, Any], payloads: Iterable[bytes]) -> Any:
    """The entity's state after these payloads on its state topic, in order; None is
    unknown. Each platform's message handler in HA source components/mqtt/<platform>.py
    (light/schema_template.py for the light): a payload it cannot use is logged and leaves the
    state as it was."""
    platform = component["platform"]
    current: Any = None
    for payload in payloads:
        if platform == "camera":
            current = payload
            continue
        tpl = component.get("value_template") or component.get("state_template")
        text = render_value(tpl, payload) if tpl else payload.decode()
        if platform == "sensor":
            current = _sensor_value(component, text, current)
        elif platform == "binary_sensor":
            # binary_sensor.py state_message_received: payload_on / payload_off (default ON /
            # OFF) after the template, None for unknown; an empty rendering or anything else
            # leaves the state as it was.
            on = component.get("payload_on", "ON")
            off = component.get("payload_off", "OFF")
            current = {on: "on", off: "off", PAYLOAD_NONE: None}.get(text, current)
        elif platform == "event":
            current = _event(component, text, current)
        elif platform == "update":
            current = _update(text, current)
        elif platform == "light":
            current = {"on": "on", "off": "off", PAYLOAD_NONE: None}.get(text, current)
        elif platform == "switch":
            on = component.get("state_on", component.get("payload_on", "ON"))
            off = component.get("state_off", component.get("payload_off", "OFF"))
            current = {on: "on", off: "off", PAYLOAD_NONE: None}.get(text, current)
        elif platform == "select":
            if text == PAYLOAD_NONE:
                current = None
            elif text in component["options"]:
                current = text
        elif platform == "number":
            if text == PAYLOAD_NONE:
                current = None
                continue
            try:
                n = int(text) if text.isnumeric() else float(text)
            except ValueError:
                continue
            if component.get("min", 1) <= n <= component.get("max", 100):
                current = n
        else:
            raise AssertionError(f"no state handling for platform {platform!r} here")
    return current


def _event(component: dict[str, Any], text: str, current: Any) -> Any:
    """event.py _event_received: the (rendered) payload is a JSON object whose `event_type`,
    one of `event_types`, names the event and whose other keys are its attributes; an empty
    payload, one that is not a JSON object or without `event_type`, or of another type, is
    logged and ignored. (A retained message is ignored too: the event topic is not retained.)
    The state here is the last event, {"event_type": ..., **attributes}."""
    if not text or text in (PAYLOAD_NONE, "{}"):
        return current
    try:
        doc = json.loads(text)
    except ValueError:
        return current
    if not isinstance(doc, dict) or str(doc.get("event_type")) not in component["event_types"]:
        return current
    return doc


def _update(text: str, current: Any) -> Any:
    """update.py handle_state_message_received: an empty rendering or `{}` is ignored; a JSON
    object sets installed_version and latest_version when present, title and release_summary
    only while not set yet; text that is not JSON is the installed version. in_progress and
    update_percentage: JSON keys the same handler reads in releases newer than 2024.3.3 (the
    update entity's progress; not checked against that release). The state here is that
    dict."""
    if not text or text == "{}":
        return current
    out = dict(current or {})
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {"installed_version": text}
    if not isinstance(doc, dict):
        return current
    for k in ("installed_version", "latest_version", "in_progress", "update_percentage"):
        if k in doc:
            out[k] = doc[k]
    for k in ("title", "release_summary"):
        if k in doc and not out.get(k):
            out[k] = doc[k]
    return out


def _sensor_value(component: dict[str, Any], text: str, current: Any) -> Any:
    """sensor.py _update_state: `None` is unknown; a numeric sensor ignores an empty value; a
    timestamp sensor takes only what parses as a date and time (shown here as the text)."""
    if text == PAYLOAD_NONE:
        return None
    numeric = any(k in component for k in ("state_class", "unit_of_measurement",
                                             "suggested_display_precision"))
    if numeric:
        return current if text == "" else None if text == PAYLOAD_NONE else text
    if component.get("device_class") in (None, "enum"):
        return text
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return None
    return text


def command(component: dict[str, Any], action: str, value: Any = None) -> str:
    """What HA publishes on the command topic: `press` a button, `on`/`off` a light or a
    switch, `set` a number or a select to `value`, `install` an update."""
    platform = component["platform"]
    tpl = component.get("command_template")
    if platform == "update" and action == "install":
        return component["payload_install"]  # update.py async_install: no template
    if platform == "button" and action == "press":
        payload = component.get("payload_press", "PRESS")
        return render_command(tpl, payload) if tpl else payload
    if platform == "light" and action in ("on", "off"):
        # Template schema: the on/off templates with `state` True/False
        # (light/schema_template.py async_turn_on/async_turn_off).
        return render_command(component[f"command_{action}_template"], None,
                              state=action == "on")
    if platform == "switch" and action in ("on", "off"):
        payload = component.get(f"payload_{action}", action.upper())
        return render_command(tpl, payload) if tpl else payload
    if platform == "number" and action == "set":
        v = float(value)
        v = int(v) if v.is_integer() else v  # number.py async_set_native_value
        return render_command(tpl, v) if tpl else str(v)
    if platform == "select" and action == "set":
        assert value in component["options"], f"{value!r} is no option of the select"
        return render_command(tpl, value) if tpl else value
    raise AssertionError(f"{platform} has no action {action!r}")


class HomeAssistant:
    """Home Assistant's MQTT integration as the broker shows it to a test: it reads the
    retained discovery document of a node from an Observer subscribed to everything, and the
    entities' states and availability from every message the Observer saw, in order."""

    def __init__(self, obs, node: str, ha_prefix: str = "homeassistant",
                 timeout: float = 30) -> None:
        self.obs, self.node = obs, node
        self.topic = f"{ha_prefix}/device/espcam_{node}/config"
        # The document the backend publishes once it has the node's state (its software
        # version in `sw`); until then it knows only the node id.
        obs.wait(lambda m: m.topic == self.topic and m.payload
                 and "sw" in json.loads(m.payload)["dev"], timeout)

    def document(self) -> dict[str, Any]:
        """The newest non-empty discovery document: what Home Assistant configured last."""
        docs = [m.payload for m in list(self.obs.msgs) if m.topic == self.topic and m.payload]
        return json.loads(docs[-1])

    def entity(self, key: str) -> dict[str, Any]:
        return components(self.document())[key]

    def _messages(self, start: int = 0) -> list[tuple[str, bytes]]:
        return [(m.topic, m.payload) for m in list(self.obs.msgs)[start:]]

    def publish(self, key: str, action: str, value: Any = None) -> int:
        """HA sends a command; returns the observer's mark from before it."""
        c = self.entity(key)
        mark = self.obs.mark()
        self.obs.c.publish(c["command_topic"], command(c, action, value), qos=c.get("qos", 0),
                           retain=c.get("retain", False)).wait_for_publish(10)
        return mark

    def state(self, key: str) -> Any:
        c = self.entity(key)
        t = c["topic"] if c["platform"] == "camera" else c["state_topic"]
        return state(c, [p for topic, p in self._messages() if topic == t])

    def states(self, key: str, start: int = 0) -> list[Any]:
        """The entity's state after each message on its state topic from the observer's mark
        `start` on, in order."""
        c = self.entity(key)
        t = c["topic"] if c["platform"] == "camera" else c["state_topic"]
        msgs = list(self.obs.msgs)
        payloads = [m.payload for m in msgs[:start] if m.topic == t]
        out = []
        for m in msgs[start:]:
            if m.topic == t:
                payloads.append(m.payload)
                out.append(state(c, payloads))
        return out

    def wait_state(self, key: str, pred, start: int = 0, timeout: float = 30) -> Any:
        """Until the entity's state satisfies pred, after a message on its state topic from
        the observer's mark `start`; returns the state."""
        c = self.entity(key)
        t = c["topic"] if c["platform"] == "camera" else c["state_topic"]
        got: list[Any] = []

        def ok(m) -> bool:
            if m.topic != t:
                return False
            got[:] = [self.state(key)]
            return bool(pred(got[0]))

        self.obs.wait(ok, timeout, start)
        return got[0]

    def available(self, key: str) -> bool:
        return availability(self.entity(key), self._messages())

    def ack(self, key: str, start: int) -> dict[str, Any]:
        """The node's answer to the command of this entity (its id is `ha-<key>`)."""
        return self.obs.json_on(f"espcam/{self.node}/ack", lambda d: d.get("id") == f"ha-{key}",
                                start=start)
