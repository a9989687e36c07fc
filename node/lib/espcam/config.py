# config.json on the board: defaults live here, the file overrides them, and settings changed by
# command are written back so they survive a reboot. Every value is checked before use.
import json

from espcam import protocol

PATH = "config.json"

FRAME_SIZES = ("QQVGA", "QCIF", "HQVGA", "QVGA", "CIF", "HVGA", "VGA", "SVGA", "XGA", "HD",
               "SXGA", "UXGA")

# name: (kind, low, high) for numbers, (kind, choices) for "choice"; the protocol's settings table.
SETTINGS = {
    "interval": ("int", 0, 86400),
    "frame_size": ("choice", FRAME_SIZES),
    "quality": ("int", 1, 100),
    "flash_on_capture": ("bool",),
    "sleep_interval": ("int", 0, 86400),
    "awake": ("int", 0, 600),
    "motion_cooldown": ("int", 0, 3600),
}

DEFAULTS = {
    "interval": 0,
    "frame_size": "VGA",
    "quality": 80,
    "flash_on_capture": False,
    "sleep_interval": 0,
    "awake": 5,
    "motion_cooldown": 10,
    # Set at deploy time only, not by command:
    "node_id": None,          # default: "cam-" + last 3 bytes of the MAC
    "prefix": "espcam",
    "pir_pin": None,          # GPIO of a PIR sensor's output, e.g. 13
    "chunk_size": 4096,
    "keepalive": 60,
    "socket_timeout": 10,     # seconds any single socket operation may take
    "wifi_timeout": 20,
    "watchdog": 60,           # seconds; 0 disables the watchdog
}


class ConfigError(Exception):
    pass


def check_setting(name, value):
    # Returns the value if it is acceptable for `name`, else raises ValueError saying why.
    spec = SETTINGS.get(name)
    if spec is None:
        raise ValueError("unknown setting %r" % (name,))
    kind = spec[0]
    if kind == "bool":
        if value is not True and value is not False:
            raise ValueError("%s must be true or false" % name)
    elif kind == "int":
        if type(value) is not int:
            raise ValueError("%s must be an integer" % name)
        if not spec[1] <= value <= spec[2]:
            raise ValueError("%s must be between %d and %d" % (name, spec[1], spec[2]))
    elif value not in spec[1]:
        raise ValueError("%s must be one of %s" % (name, ", ".join(spec[1])))
    return value


def _need(cond, msg):
    if not cond:
        raise ConfigError(msg)


def check(cfg, default_node_id):
    # Fills defaults and validates a whole config dict; raises ConfigError with a sentence.
    _need(isinstance(cfg, dict), "config.json must hold a JSON object")
    for k in DEFAULTS:
        if k not in cfg:
            cfg[k] = DEFAULTS[k]
    wifi = cfg.get("wifi")
    _need(isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str) and wifi["ssid"],
          'config.json needs "wifi": {"ssid": ..., "password": ...}')
    wifi.setdefault("password", "")
    static = wifi.get("static")
    if static is not None:
        _need(isinstance(static, dict), 'wifi.static must be {"ip", "netmask", "gateway", "dns"}')
        for k in ("ip", "netmask", "gateway", "dns"):
            _need(isinstance(static.get(k), str), "wifi.static needs %r" % k)
    broker = cfg.get("broker")
    _need(isinstance(broker, dict) and isinstance(broker.get("host"), str) and broker["host"],
          'config.json needs "broker": {"host": ..., "port": 1883}')
    broker.setdefault("port", 1883)
    _need(type(broker["port"]) is int and 0 < broker["port"] < 65536, "broker.port is wrong")
    if cfg["node_id"] is None:
        cfg["node_id"] = default_node_id
    _need(protocol.valid_node_id(cfg["node_id"]),
          "node_id %r: use 1-32 of a-z 0-9 _ - starting with a letter or digit"
          % (cfg["node_id"],))
    _need(protocol.valid_prefix(cfg["prefix"]), "prefix %r is not a valid topic prefix"
          % (cfg["prefix"],))
    for name in SETTINGS:
        try:
            check_setting(name, cfg[name])
        except ValueError as e:
            raise ConfigError(str(e))
    cs = cfg["chunk_size"]
    _need(type(cs) is int and protocol.MIN_CHUNK <= cs <= protocol.MAX_CHUNK,
          "chunk_size must be between %d and %d" % (protocol.MIN_CHUNK, protocol.MAX_CHUNK))
    pir = cfg["pir_pin"]
    _need(pir is None or (type(pir) is int and 0 <= pir <= 39), "pir_pin must be a GPIO number")
    for k in ("keepalive", "socket_timeout", "wifi_timeout", "watchdog"):
        _need(type(cfg[k]) is int and cfg[k] >= 0, "%s must be a whole number of seconds" % k)
    return cfg


def load(default_node_id, path=PATH):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("no %s on the board: deploy one (see docs/node.md)" % path)
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError("%s is not valid JSON" % path)
    return check(cfg, default_node_id)


def settings(cfg):
    out = {}
    for k in SETTINGS:
        out[k] = cfg[k]
    return out


def save(cfg, path=PATH):
    # Write-then-rename, so a power cut leaves either the old or the new file, never half of one.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(cfg))
    import os
    os.rename(tmp, path)
