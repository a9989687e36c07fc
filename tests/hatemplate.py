"""Home Assistant's view of discovery documents, for tests: expand abbreviations, render the
value templates the way its MQTT entities do, decide availability.

Templates are rendered with Jinja2 when it is installed (Home Assistant's engine); otherwise
with a small evaluator for the subset espcam's templates use (`{{ expr }}` with `value`,
`value_json.a.b`, `value_json.get(k)`, `| int`, `is defined`, `in`, comparisons and
`x if c else y`), which renders the same text.
"""

from __future__ import annotations

import json
import re
from typing import Any

try:
    from jinja2.sandbox import SandboxedEnvironment
except ImportError:  # pragma: no cover - depends on the environment
    SandboxedEnvironment = None

# The abbreviations Home Assistant documents for MQTT discovery ("Supported abbreviations in
# MQTT discovery messages"), for the options espcam uses or might: short -> full.
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "cmd_off_tpl": "command_off_template",
    "cmd_on_tpl": "command_on_template", "cmd_t": "command_topic",
    "cmd_tpl": "command_template", "cmps": "components", "dev": "device",
    "dev_cla": "device_class", "e": "encoding", "en": "enabled_by_default",
    "ent_cat": "entity_category", "ent_pic": "entity_picture", "ic": "icon",
    "img_e": "image_encoding", "json_attr_t": "json_attributes_topic", "max": "max",
    "min": "min", "mode": "mode", "name": "name", "o": "origin", "ops": "options",
    "opt": "optimistic", "p": "platform", "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available", "pl_off": "payload_off", "pl_on": "payload_on",
    "pl_prs": "payload_press", "qos": "qos", "ret": "retain", "stat_cla": "state_class",
    "stat_off": "state_off", "stat_on": "state_on", "stat_t": "state_topic",
    "stat_tpl": "state_template", "stat_val_tpl": "state_value_template", "step": "step",
    "sug_dsp_prc": "suggested_display_precision", "t": "topic", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {"cu": "configuration_url", "cns": "connections", "ids": "identifiers",
                        "name": "name", "mf": "manufacturer", "mdl": "model",
                        "hw": "hw_version", "sw": "sw_version", "sa": "suggested_area",
                        "sn": "serial_number"}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}


def expand(doc: dict[str, Any], names: dict[str, str] = ABBREVIATIONS) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in doc.items()}


class _Obj(dict):
    """value_json: attribute access like Jinja's, a missing key renders empty."""

    def __getattr__(self, name: str) -> Any:
        v = self.get(name, "")
        return _Obj(v) if isinstance(v, dict) else v


def _mini(template: str, variables: dict[str, Any]) -> str:
    def one(m: re.Match) -> str:
        expr = re.sub(r"(\w+(?:\.\w+)*)\s*\|\s*int", r"int(float(\1))", m.group(1).strip())
        expr = re.sub(r"\b(\w+) is defined\b", r"('\1' in __names__)", expr)
        return str(eval(expr, {"__builtins__": {}, "int": int, "float": float,
                               "__names__": set(variables)}, variables))

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def render(template: str, payload: str | None = None, **variables: Any) -> str:
    """Render like Home Assistant. With a received `payload`: `value` is its text and
    `value_json` its JSON; command templates get their variables (`value`, `state`) as given."""
    if payload is not None:
        variables["value"] = payload
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if doc is not None:
            variables["value_json"] = _Obj(doc) if isinstance(doc, dict) else doc
    if SandboxedEnvironment is not None:
        return SandboxedEnvironment().from_string(template).render(**variables)
    return _mini(template, variables)


def available(component: dict[str, Any], root: dict[str, Any],
              retained: dict[str, bytes | None]) -> bool:
    """Availability as Home Assistant decides it from the last payload received on each topic
    (None: nothing received yet; b"": an empty message, which Home Assistant renders like any
    other), with availability_mode `all`, `any` or `latest`-like."""
    comp, base = expand(component), expand(root)
    entries = comp.get("availability", base.get("availability"))
    mode = comp.get("availability_mode", base.get("availability_mode", "latest"))
    results = []
    for raw in entries:
        e = expand(raw)
        payload = retained.get(e["topic"])
        if payload is None:
            results.append(None)
            continue
        text = payload.decode()
        if e.get("value_template"):
            text = render(e["value_template"], text)
        if text == e.get("payload_available", "online"):
            results.append(True)
        elif text == e.get("payload_not_available", "offline"):
            results.append(False)
        else:
            results.append(None)
    if mode == "all":
        return all(r is True for r in results)
    return any(r is True for r in results)
