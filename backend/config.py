"""Backend settings: a TOML file, then ESPCAM_* environment variables, then command-line flags,
each later source winning over the earlier ones (docs/backend.md lists every setting)."""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from espcam.backend.jpeg import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SCANS
from espcam.backend.motion import DEFAULT_THRESHOLD, parse_thresholds
from espcam.backend.names import check_prefix
from espcam.backend.objectstorage import parse_frames_url
from espcam.backend.people import DEFAULT_TOLERANCE
from espcam.backend.reassembly import Limits
from espcam.backend.storage import Retention


class ConfigError(ValueError):
    """A setting that is unknown, of the wrong type or out of range; says where it came from."""


@dataclass(frozen=True)
class Settings:
    # [mqtt]
    broker: str = "localhost:1883"
    username: str = ""
    password: str = ""
    prefix: str = "espcam"
    client_id: str = "espcam-backend"
    # 0: no MQTT keepalive; TCP's own (session.py) notices a dead broker. A backend that
    # pauses reading under back-pressure would otherwise be cut off by the broker after
    # 1.5 keepalives, and the broker would drop what it had buffered for it.
    keepalive: int = 0
    tls: bool = False
    ca_file: str = ""
    # [storage]
    data_dir: str = "./data"
    retention_days: float = 30.0
    retention_bytes: int = 0
    retry_interval: float = 5.0
    max_pending_frames: int = 256
    max_pending_bytes: int = 64 * 1024 * 1024
    store_workers: int = 4
    store_overlap: int = 3
    retention_interval: float = 3600.0
    # Frames in an S3-compatible object store (s3://bucket[/prefix]) instead of data_dir,
    # which keeps the index (docs/backend.md, "Object storage"; needs the s3 extra).
    frames_url: str = ""
    s3_endpoint: str = ""  # e.g. http://minio:9000; empty: AWS S3
    s3_region: str = ""
    # [limits]
    max_frame_bytes: int = Limits.max_frame_bytes
    max_chunks: int = Limits.max_chunks
    max_frames_per_node: int = Limits.max_frames_per_node
    max_frames_total: int = Limits.max_frames_total
    max_bytes_total: int = Limits.max_bytes_total
    resend_after: float = Limits.resend_after
    resend_tries: int = Limits.resend_tries
    max_age: float = Limits.max_age
    max_stranger_frames: int = Limits.max_stranger_frames
    max_stranger_bytes: int = Limits.max_stranger_bytes
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_scans: int = DEFAULT_MAX_SCANS
    max_clock_ahead: float = 3600.0
    max_nodes: int = 1000
    max_queue_bytes: int = 32 * 1024 * 1024
    # [cli]
    command_timeout: float = 10.0
    # [homeassistant]
    ha_discovery: bool = True
    ha_prefix: str = "homeassistant"
    # [analysis] (docs/backend.md, "Analysis"; runs only with the faces extra installed)
    analysis: bool = True
    analysis_queue: int = 16  # frames waiting; past it the oldest non-doorbell one is skipped
    analysis_nice: int = 19  # the worker's CPU priority: ingest comes first
    motion_threshold: float = DEFAULT_THRESHOLD  # percent of the picture changed
    motion_thresholds: str = ""  # per node: "cam-door=5, cam-yard=1.5"
    face_tolerance: float = DEFAULT_TOLERANCE
    person_events: str = "doorbell"  # or "all": every analysed frame with a face
    person_event_cooldown: float = 300.0  # with "all": per node and person, seconds
    # top level
    log_level: str = "INFO"

    @property
    def host(self) -> str:
        return split_broker(self.broker)[0]

    @property
    def port(self) -> int:
        return split_broker(self.broker)[1]

    def limits(self) -> Limits:
        names = {f.name for f in fields(Limits)}
        return Limits(**{k: v for k, v in self.__dict__.items() if k in names})

    def retention(self) -> Retention:
        return Retention(max_age_days=self.retention_days, max_bytes=self.retention_bytes)


SECTIONS: dict[str, tuple[str, ...]] = {
    "mqtt": ("broker", "username", "password", "prefix", "client_id", "keepalive", "tls",
             "ca_file"),
    "storage": ("data_dir", "retention_days", "retention_bytes", "retry_interval",
                "max_pending_frames", "max_pending_bytes", "store_workers", "store_overlap",
                "retention_interval", "frames_url", "s3_endpoint", "s3_region"),
    "limits": ("max_frame_bytes", "max_chunks", "max_frames_per_node", "max_frames_total",
               "max_bytes_total", "resend_after", "resend_tries", "max_age",
               "max_stranger_frames", "max_stranger_bytes", "max_pixels", "max_scans",
               "max_clock_ahead", "max_nodes", "max_queue_bytes"),
    "cli": ("command_timeout",),
    "homeassistant": ("ha_discovery", "ha_prefix"),
    "analysis": ("analysis", "analysis_queue", "analysis_nice", "motion_threshold",
                 "motion_thresholds", "face_tolerance", "person_events",
                 "person_event_cooldown"),
    "": ("log_level",),
}
TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(Settings)}
ENV_PREFIX = "ESPCAM_"
# ESPCAM_* variables that are not backend settings but belong to other parts of espcam:
# ./run, scripts/setup.sh, the simulator, the board tools, docker compose.
OTHER_ENV = frozenset({
    "ESPCAM_CONFIG", "ESPCAM_PORT", "ESPCAM_BROKER_PORT", "ESPCAM_NODES", "ESPCAM_INTERVAL",
    "ESPCAM_RUN_DIR",
    "ESPCAM_SETUP_VERBOSE", "ESPCAM_SIM_DIR", "ESPCAM_BACKEND_PASSWORD",
    "ESPCAM_MQTT_PASSWORD", "ESPCAM_WIFI_PASSWORD", "ESPCAM_CLI_PASSWORD",
    "ESPCAM_HEALTH_PASSWORD", "ESPCAM_TEST_SEED",
})
log = logging.getLogger("espcam.config")


def split_broker(value: str) -> tuple[str, int]:
    """'host', 'host:port' or 'mqtt://host:port' -> (host, port)."""
    v = value.removeprefix("mqtt://").removeprefix("mqtts://").rstrip("/")
    host, sep, port = v.rpartition(":")
    if not sep:
        host, port = v, "1883"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"broker {value!r}: port {port!r} is not a number") from None
    if not host or not 0 < number < 65536:
        raise ConfigError(f"broker {value!r} is not HOST:PORT")
    return host, number


def _coerce(name: str, value: Any, source: str) -> Any:
    want = TYPES[name]
    if isinstance(value, str) and want is not str:
        text = value.strip().lower()
        try:
            if want is bool:
                if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return text in ("1", "true", "yes", "on")
            return want(text)
        except ValueError:
            raise ConfigError(f"{source}: {name} must be {want.__name__}, not {value!r}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {name} must be {want.__name__}, not {value!r}")
    return value


def _from_file(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                if sub not in SECTIONS[key]:
                    raise ConfigError(f"{path}: unknown setting [{key}] {sub}")
                if sub == "motion_thresholds" and isinstance(v, dict):
                    # A table reads best in TOML: motion_thresholds = { cam-door = 5.0 }
                    v = ", ".join(f"{node}={t}" for node, t in v.items())
                out[sub] = _coerce(sub, v, str(path))
        elif key in SECTIONS[""]:
            out[key] = _coerce(key, value, str(path))
        else:
            raise ConfigError(f"{path}: unknown setting or section {key!r}")
    return out


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """ESPCAM_* variables that nothing in espcam reads: most likely a typo of a setting."""
    known = {ENV_PREFIX + name.upper() for name in TYPES} | OTHER_ENV
    return sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)


def load(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then environment, then `overrides` (the CLI flags; None values are ignored)."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    values: dict[str, Any] = {}
    if config_file:
        values.update(_from_file(Path(config_file)))
    for name in TYPES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"environment {ENV_PREFIX}{name.upper()}")
    for var in unknown_env(env):
        known = [ENV_PREFIX + n.upper() for n in TYPES]
        close = difflib.get_close_matches(var, known, n=1)
        log.warning("environment %s is not an espcam setting and is ignored%s", var,
                    f" (did you mean {close[0]}?)" if close else "")
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    settings = Settings(**values)
    split_broker(settings.broker)
    try:
        check_prefix(settings.prefix)
        check_prefix(settings.ha_prefix)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in TYPES:
        value = getattr(settings, name)
        if TYPES[name] in (int, float) and value < 0:
            raise ConfigError(f"{name} must not be negative, not {value}")
    for name in ("store_workers", "store_overlap", "max_pending_frames", "analysis_queue"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be at least 1, not {getattr(settings, name)}")
    _check_analysis(settings)
    if settings.frames_url:
        try:
            parse_frames_url(settings.frames_url)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return settings


def _check_analysis(s: Settings) -> None:
    if s.person_events not in ("doorbell", "all"):
        raise ConfigError(f"person_events must be doorbell or all, not {s.person_events!r}")
    if s.analysis_nice > 19:
        raise ConfigError(f"analysis_nice must be 0 ... 19, not {s.analysis_nice}")
    if not 0 < s.face_tolerance <= 2:
        raise ConfigError(f"face_tolerance must be over 0 and at most 2, not {s.face_tolerance}")
    if s.motion_threshold > 100:
        raise ConfigError(f"motion_threshold is a percentage, 0 ... 100, not "
                          f"{s.motion_threshold}")
    try:
        parse_thresholds(s.motion_thresholds)
    except ValueError as e:
        raise ConfigError(str(e)) from None
