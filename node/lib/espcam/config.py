# config.json on the board: defaults live here, the file overrides them, and settings changed by
# command are written back so they survive a reboot. Every value is checked before use.
import json

from espcam import protocol

PATH = "config.json"

FRAME_SIZES = ("QQVGA", "QCIF", "HQVGA", "QVGA", "CIF", "HVGA", "VGA", "SVGA", "XGA", "HD",
               "SXGA", "UXGA")

# The settings a `config` command may change, as protocol.json says them (type, range or
# choices, default); tests/test_node_protocol.py checks the two agree.
SETTINGS = {
    "interval": {"type": "int", "range": (0, 86400), "default": 0},
    "frame_size": {"type": "choice", "choices": FRAME_SIZES, "default": "VGA"},
    "quality": {"type": "int", "range": (1, 100), "default": 80},
    "flash_on_capture": {"type": "bool", "default": False},
    "sleep_interval": {"type": "int", "range": (0, 86400), "default": 0},
    "awake": {"type": "int", "range": (0, 600), "default": 5},
    "motion_cooldown": {"type": "int", "range": (0, 3600), "default": 10},
}

# Set at deploy time only, not by command:
DEFAULTS = {
    "node_id": None,          # default: "cam-" + last 3 bytes of the MAC
    "prefix": protocol.DEFAULT_PREFIX,
    "pir_pin": None,          # GPIO of a PIR sensor's output, e.g. 13
    "button_pin": None,       # GPIO of a doorbell button, e.g. 12 (one of BUTTON_PINS)
    "button_level": 0,        # 0: pressed pulls the pin to GND; 1: pressed drives it to 3.3 V
    "ring_cooldown": 5,       # seconds after a ring during which the button rings no more
    "chunk_size": 4096,
    "keepalive": 60,
    "socket_timeout": 10,     # seconds any single socket operation may take
    "wifi_timeout": 20,
    "watchdog": 60,           # seconds; 0 disables the watchdog
    "spool": "ram",           # where unconfirmed frames are kept: "ram" or "sd" (the microSD card)
    "spool_bytes": None,      # the spool's budget; None: SPOOL_BYTES of its kind (spool_budget)
    "spool_dir": "/sd/espcam-spool",
    "confirm_timeout": 15,    # seconds before an unconfirmed frame is sent again (then doubled)
    "ota_key": None,          # hex HMAC-SHA256 key that updates are signed with (ota.py)
}

# The default budget of each kind of spool (docs/node.md, "The spool", says why these).
SPOOL_BYTES = {"ram": 1500000, "sd": 32000000}

# GPIOs a doorbell button can use: the ESP32's RTC GPIOs (only they wake it from deep sleep)
# that have the internal pull resistors a button needs (not the input-only 34 to 39), less
# GPIO4, the ESP32-CAM's flash LED.
BUTTON_PINS = (0, 2, 12, 13, 14, 15, 25, 26, 27, 32, 33)


class ConfigError(Exception):
    pass


class Invalid(ValueError):
    # A value the protocol refuses: rule names the refusal (protocol.json's refusals.command),
    # msg says why to a person.
    def __init__(self, rule, msg):
        super().__init__(msg)
        self.rule = rule
        self.msg = msg


def check_value(name, spec, value):
    # Returns value if it is what spec (a setting's or a command argument's, in protocol.json's
    # terms) allows, else raises Invalid. The backend checks in the same order, so both sides
    # name the same rule for the same value.
    kind = spec["type"]
    if kind == "int":
        if type(value) is not int:
            raise Invalid("bad_type", "%s must be an integer" % name)
        low, high = spec["range"]
        if not low <= value <= high:
            raise Invalid("out_of_range", "%s must be between %d and %d" % (name, low, high))
    elif kind == "bool":
        if value is not True and value is not False:
            raise Invalid("bad_type", "%s must be true or false" % name)
    elif kind == "choice":
        if not isinstance(value, str):
            raise Invalid("bad_type", "%s must be a string" % name)
        if value not in spec["choices"]:
            raise Invalid("out_of_range",
                          "%s must be one of %s" % (name, ", ".join(spec["choices"])))
    elif kind == "int_list":
        if not isinstance(value, list):
            raise Invalid("bad_type", "%s must be a list of integers" % name)
        if not 1 <= len(value) <= spec["max_items"]:
            raise Invalid("out_of_range", "%s must hold 1 to %d items" % (name, spec["max_items"]))
        low, high = spec["range"]
        for v in value:
            if type(v) is not int:
                raise Invalid("bad_type", "%s must hold integers" % name)
            if not low <= v <= high:
                raise Invalid("out_of_range", "%s must hold integers %d to %d" % (name, low, high))
    elif kind == "settings":
        if not isinstance(value, dict):
            raise Invalid("bad_type", "%s must be an object of settings" % name)
        if not value:
            raise Invalid("missing", "%s needs at least one setting" % name)
        for k in value:
            check_setting(k, value[k])
    else:
        raise ValueError("no such type: %s" % kind)
    return value


def check_setting(name, value):
    spec = SETTINGS.get(name)
    if spec is None:
        raise Invalid("unknown_setting", "unknown setting \"%s\" (known: %s)"
                      % (name[:32], ", ".join(SETTINGS)))
    return check_value(name, spec, value)


def _need(cond, msg):
    if not cond:
        raise ConfigError(msg)


def check(cfg, default_node_id):
    # Fills defaults and validates a whole config dict; raises ConfigError with a sentence.
    _need(isinstance(cfg, dict), "config.json must hold a JSON object")
    for k in SETTINGS:
        if k not in cfg:
            cfg[k] = SETTINGS[k]["default"]
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
    tls = broker.setdefault("tls", False)
    _need(tls is True or tls is False, "broker.tls must be true or false")
    broker.setdefault("port", 8883 if tls else 1883)
    _need(type(broker["port"]) is int and 0 < broker["port"] < 65536, "broker.port is wrong")
    if tls:
        # Checked further (the certificate itself) when the connection is set up (secure.py).
        ca = broker.get("ca")
        _need(isinstance(ca, str) and ca.strip(), "broker.tls needs broker.ca: the CA "
              "certificate (PEM) that signed the broker's, or the name of a file holding it")
        name = broker.get("server_hostname")
        _need(name is None or (isinstance(name, str) and name),
              "broker.server_hostname must be the name in the broker's certificate")
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
        except Invalid as e:
            raise ConfigError(e.msg)
    cs = cfg["chunk_size"]
    _need(type(cs) is int and protocol.MIN_CHUNK <= cs <= protocol.MAX_CHUNK,
          "chunk_size must be between %d and %d" % (protocol.MIN_CHUNK, protocol.MAX_CHUNK))
    pir = cfg["pir_pin"]
    _need(pir is None or (type(pir) is int and 0 <= pir <= 39), "pir_pin must be a GPIO number")
    button = cfg["button_pin"]
    if button is not None:
        _need(type(button) is int and button in BUTTON_PINS,
              "button_pin must be a GPIO that wakes the board from deep sleep and has a pull "
              "resistor: one of %s" % ", ".join(str(p) for p in BUTTON_PINS))
        _need(button != pir, "button_pin and pir_pin must be different GPIOs")
    _need(cfg["button_level"] in (0, 1) and type(cfg["button_level"]) is int,
          "button_level must be 0 (pressed pulls the pin low) or 1 (pressed drives it high)")
    _need(type(cfg["ring_cooldown"]) is int and cfg["ring_cooldown"] >= 0,
          "ring_cooldown must be a whole number of seconds")
    for k in ("keepalive", "socket_timeout", "wifi_timeout", "watchdog"):
        _need(type(cfg[k]) is int and cfg[k] >= 0, "%s must be a whole number of seconds" % k)
    # A socket timeout of 0 would make every read non-blocking; MQTT's keepalive has 16 bits.
    _need(cfg["socket_timeout"] >= 1, "socket_timeout must be at least 1 second")
    _need(cfg["keepalive"] <= 65535, "keepalive must be at most 65535 seconds")
    _need(cfg["spool"] in SPOOL_BYTES, 'spool must be "ram" or "sd"')
    b = cfg["spool_bytes"]
    _need(b is None or (type(b) is int and b >= 0), "spool_bytes must be a number of bytes")
    _need(isinstance(cfg["spool_dir"], str) and cfg["spool_dir"].strip("/"),
          "spool_dir must name a folder")
    _need(type(cfg["confirm_timeout"]) is int and cfg["confirm_timeout"] >= 1,
          "confirm_timeout must be at least 1 second")
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


def spool_budget(cfg):
    b = cfg["spool_bytes"]
    return SPOOL_BYTES[cfg["spool"]] if b is None else b


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
