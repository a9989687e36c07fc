"""docker-compose.yml, the Dockerfile and the broker files they use: structure and references
(there is no Docker engine here; test_compose_stack.py runs the pieces)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from compose import ROOT, load, mounts  # noqa: E402

from backend import config  # noqa: E402
from backend.brokerusers import BACKEND_USER, ENV_PASSWORDS, HA_USER  # noqa: E402


def conf_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def test_services_images_and_volumes():
    c = load()
    services = c["services"]
    assert set(services) == {"mosquitto", "backend", "homeassistant"}
    m, b, ha = services["mosquitto"], services["backend"], services["homeassistant"]
    assert m["image"] == "eclipse-mosquitto:2"
    assert "1883:1883" in m["ports"]
    assert ha["profiles"] == ["homeassistant"] and "mosquitto" in ha["depends_on"]
    assert "profiles" not in m and "profiles" not in b
    for s in services.values():
        assert s["restart"] == "unless-stopped"
    # Named volumes are declared; bind mounts point at files in the repository.
    named = {src for s in services.values() for src, _, _ in mounts(s) if not src.startswith(".")}
    assert named == set(c["volumes"]) == {"mosquitto-data", "espcam-data",
                                          "homeassistant-config"}
    for s in services.values():
        for src, _target, _ro in mounts(s):
            if src.startswith("."):
                assert (ROOT / src).exists(), src


def test_broker_gets_the_projects_config_read_only_and_what_it_names_is_mounted():
    m = load()["services"]["mosquitto"]
    binds = {target: (ROOT / src, ro) for src, target, ro in mounts(m) if src.startswith(".")}
    volumes = {target for src, target, _ in mounts(m) if not src.startswith(".")}
    assert binds["/mosquitto/config"] == (ROOT / "deploy/mosquitto", True)
    conf = conf_settings(ROOT / "deploy/mosquitto/mosquitto.conf")
    assert conf["allow_anonymous"] == ["false"]
    assert conf["persistence"] == ["true"]
    assert conf["persistence_location"][0].rstrip("/") in volumes
    for key in ("password_file", "acl_file"):
        path = conf[key][0]
        assert path.startswith("/mosquitto/config/")
        host = ROOT / "deploy/mosquitto" / path.removeprefix("/mosquitto/config/")
        if key == "acl_file":
            assert host.is_file()
        else:  # made by `espcam broker-users`, whose default is this very file
            from backend.brokerusers import DEFAULT_PASSWD
            assert ROOT / DEFAULT_PASSWD == host
    assert conf["listener"] == ["1883"]


def test_acl_names_the_users_broker_users_makes_and_confines_nodes_by_user_name():
    acl = (ROOT / "deploy/mosquitto/espcam.acl").read_text()
    users = re.findall(r"^user (\S+)$", acl, re.M)
    assert users == [BACKEND_USER, HA_USER]
    patterns = re.findall(r"^pattern (\w+) (\S+)$", acl, re.M)
    assert patterns and all("espcam/%u/" in t for _, t in patterns)
    assert ("read", "espcam/%u/cmd") in patterns
    assert {t.rsplit("/", 1)[1] for a, t in patterns if a == "write"} == {
        "availability", "state", "frame", "ack"}


def test_backend_runs_espcam_serve_configured_by_environment_with_a_healthcheck():
    b = load()["services"]["backend"]
    assert b["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert b["command"] == ["espcam", "serve"]
    env = b["environment"]
    known = {f"ESPCAM_{name.upper()}" for name in config.TYPES}
    assert set(env) <= known, set(env) - known
    assert env["ESPCAM_USERNAME"] == BACKEND_USER
    assert "ESPCAM_BACKEND_PASSWORD" in env["ESPCAM_PASSWORD"]
    assert set(ENV_PASSWORDS) >= {"ESPCAM_BACKEND_PASSWORD"}
    assert env["ESPCAM_BROKER"] == "mosquitto:1883"
    data = env["ESPCAM_DATA_DIR"]
    assert any(src == "espcam-data" and target == data for src, target, _ in mounts(b))
    hc = b["healthcheck"]
    assert hc["test"][:2] == ["CMD", "espcam"] and {"interval", "timeout", "retries"} <= set(hc)


def test_dockerfile_slim_non_root_data_volume():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'CMD ["espcam", "serve"]' in text and "HEALTHCHECK" in text
    assert re.search(r"^VOLUME .*/data", text, re.M)
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    for secret in (".env", "deploy"):  # passwords never go into the image
        assert secret in ignored
