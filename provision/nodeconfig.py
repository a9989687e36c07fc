"""The node's config.json (docs/node.md): built from a file and/or command-line values,
checked here so a mistake is reported on the host instead of as a CONFIG ERROR on the board."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

from espcam.provision.errors import ProvisionError

NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PREFIX_LEVEL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SECRET = "********"
# Environment variables that can carry the secrets, so they need not be typed on a command line
# (which lands in shell history and is visible in `ps`).
ENV_WIFI_PASSWORD = "ESPCAM_WIFI_PASSWORD"
ENV_MQTT_PASSWORD = "ESPCAM_MQTT_PASSWORD"


def parse_broker(text: str) -> tuple[str, int]:
    """'host', 'host:port' or '[v6]:port' -> (host, port)."""
    host, port = text, 1883
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.lstrip(":"), text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not host:
        raise ProvisionError(f"--broker {text!r}: give host or host:port, e.g. 192.168.1.10:1883")
    return host, port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ProvisionError(f"--broker {text!r}: the port must be a number from 1 to 65535")
    return int(p)


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ProvisionError(f"config file {path} does not exist") from None
    except ValueError as e:
        raise ProvisionError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProvisionError(f"config file {path} must hold a JSON object")
    return data


def build(
    base: dict[str, Any] | None = None,
    *,
    node_id: str | None = None,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
    broker: str | None = None,
    mqtt_user: str | None = None,
    mqtt_password: str | None = None,
    prefix: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Values given here override `base`; the result is checked (see check())."""
    env = os.environ if env is None else env
    cfg = copy.deepcopy(base or {})
    wifi = cfg.setdefault("wifi", {})
    brk = cfg.setdefault("broker", {})
    if node_id is not None:
        cfg["node_id"] = node_id
    if prefix is not None:
        cfg["prefix"] = prefix
    if wifi_ssid is not None:
        wifi["ssid"] = wifi_ssid
    wifi_password = wifi_password if wifi_password is not None else env.get(ENV_WIFI_PASSWORD)
    if wifi_password is not None:
        wifi["password"] = wifi_password
    if broker is not None:
        brk["host"], brk["port"] = parse_broker(broker)
    if mqtt_user is not None:
        brk["user"] = mqtt_user
    mqtt_password = mqtt_password if mqtt_password is not None else env.get(ENV_MQTT_PASSWORD)
    if mqtt_password is not None:
        brk["password"] = mqtt_password
    return check(cfg)


def check(cfg: dict[str, Any]) -> dict[str, Any]:
    """The checks the node makes at start (node/lib/espcam/config.py) for what deploy sets."""
    wifi, brk = cfg.get("wifi"), cfg.get("broker")
    if not isinstance(wifi, dict) or not isinstance(wifi.get("ssid"), str) or not wifi["ssid"]:
        raise ProvisionError("no Wi-Fi network: give --wifi-ssid (and --wifi-password)")
    if not isinstance(wifi.get("password", ""), str):
        raise ProvisionError("the Wi-Fi password must be a string")
    if not isinstance(brk, dict) or not isinstance(brk.get("host"), str) or not brk["host"]:
        raise ProvisionError("no broker: give --broker host:port")
    brk.setdefault("port", 1883)
    if type(brk["port"]) is not int or not 0 < brk["port"] < 65536:
        raise ProvisionError("broker.port must be a number from 1 to 65535")
    node_id = cfg.get("node_id")
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        raise ProvisionError(
            f"node id {node_id!r}: give --node-id with 1-32 of a-z 0-9 _ -, "
            "starting with a letter or digit (e.g. cam-kitchen)"
        )
    prefix = cfg.get("prefix", "espcam")
    if not isinstance(prefix, str) or not all(
        PREFIX_LEVEL_RE.match(level) for level in prefix.split("/")
    ):
        raise ProvisionError(f"prefix {prefix!r} is not a valid topic prefix")
    if bool(brk.get("user")) != bool(brk.get("password")):
        raise ProvisionError("give both --mqtt-user and --mqtt-password, or neither")
    return cfg


def redacted(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to print: passwords replaced by asterisks."""
    out = copy.deepcopy(cfg)
    for section in ("wifi", "broker"):
        if isinstance(out.get(section), dict) and out[section].get("password"):
            out[section]["password"] = SECRET
    if out.get("ota_key"):
        out["ota_key"] = SECRET  # the node's update signing key
    return out


def dumps(cfg: dict[str, Any]) -> bytes:
    # Stable text, so an unchanged config hashes the same and a redeploy leaves it alone.
    return (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()


def write(path: Path, cfg: dict[str, Any]) -> None:
    """Writes a config with secrets, readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(dumps(cfg))
    os.chmod(path, 0o600)
