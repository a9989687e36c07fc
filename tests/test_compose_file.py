"""docker-compose.yml, the Dockerfile and the broker files they use: structure and references
(there is no Docker engine here; test_compose_stack.py runs the pieces)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from compose import ROOT, load, mounts, substitute  # noqa: E402
from espcam.backend import config  # noqa: E402
from espcam.backend.brokerusers import (  # noqa: E402
    BACKEND_USER,
    CLI_USER,
    ENV_PASSWORDS,
    HEALTH_USER,
    SERVICE_USERS,
)
from espcam.backend.protocol import SPEC  # noqa: E402


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
            from espcam.backend.brokerusers import DEFAULT_PASSWD
            assert ROOT / DEFAULT_PASSWD == host
    assert conf["listener"] == ["1883"]


def test_the_broker_makes_user_names_client_ids_on_every_listener():
    """Otherwise any password lets a client take over another's client id (and session)."""
    text = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    listeners = [i for i, ln in enumerate(lines) if re.match(r"#?listener \d+", ln)]
    assert len(listeners) == 2  # 1883, and the TLS one to uncomment
    for i in listeners:
        commented = lines[i].startswith("#")
        block = lines[i + 1:next((j for j in listeners if j > i), len(lines))]
        assert ("#" if commented else "") + "use_username_as_clientid true" in block, lines[i]
    # Not for ./run's anonymous local broker: anonymous clients have no user name.
    assert "use_username_as_clientid" not in (ROOT / "deploy/mosquitto/local.conf").read_text()


def test_acl_names_the_users_broker_users_makes_and_confines_nodes_by_user_name():
    acl = (ROOT / "deploy/mosquitto/espcam.acl").read_text()
    users = re.findall(r"^user (\S+)$", acl, re.M)
    assert users == list(SERVICE_USERS)
    patterns = re.findall(r"^pattern (\w+) (\S+)$", acl, re.M)
    assert patterns and all("espcam/%u/" in t for _, t in patterns)
    # Exactly what the protocol lets a node publish, and read: its commands, confirmations and
    # the pieces of an update offered to it.
    topics = {**SPEC["topics"], **SPEC["ota"]["topics"]}
    kinds = {(a, t.split("/", 2)[2]) for a, t in patterns}
    assert {k for a, k in kinds if a == "write"} == {
        k for k, v in topics.items() if v["from"] == "node"}
    assert {k for a, k in kinds if a == "read"} == {"cmd", "confirm", "ota/offer", "ota/piece"}


def test_backend_runs_espcam_serve_configured_by_environment_with_a_healthcheck():
    b = load()["services"]["backend"]
    assert b["build"] == "." and (ROOT / "Dockerfile").is_file()
    env = b["environment"]
    known = {f"ESPCAM_{name.upper()}" for name in config.TYPES}
    ours = {k for k in env if k.startswith("ESPCAM_")}
    assert ours <= known, ours - known
    # Every ${VAR} is a password `espcam broker-users` writes to .env (all but Home
    # Assistant's, which is typed into Home Assistant).
    referenced = {m for v in env.values() for m in re.findall(r"\$\{(\w+)", str(v))}
    assert referenced == set(ENV_PASSWORDS) - {"HA_MQTT_PASSWORD"}
    assert env["ESPCAM_BROKER"] == "mosquitto:1883"

    def login(shell: str, variables: dict[str, str]) -> tuple[str, str, str]:
        """(user, .env variable of its password, espcam command) of a shell command line."""
        m = re.fullmatch(r'ESPCAM_USERNAME=(\S+) ESPCAM_PASSWORD="\$(\w+)" exec espcam (\w+)',
                         substitute(shell, {}))
        assert m, shell
        source = re.fullmatch(r"\$\{(\w+)(:\?.*)?\}", str(variables[m.group(2)]))
        assert source, variables[m.group(2)]
        return m.group(1), source.group(1), m.group(3)

    # Each program has a user of its own (the broker makes user names client ids): the
    # environment is the espcam commands', serve and the healthcheck switch to theirs.
    def password_var(user: str) -> str:
        return next(var for var, u in ENV_PASSWORDS.items() if u == user)

    assert env["ESPCAM_USERNAME"] == CLI_USER
    assert env["ESPCAM_PASSWORD"].startswith("${" + password_var(CLI_USER) + ":?")
    assert b["command"][:2] == ["sh", "-c"] and len(b["command"]) == 3
    assert login(b["command"][2], env) == (BACKEND_USER, password_var(BACKEND_USER), "serve")
    data = env["ESPCAM_DATA_DIR"]
    assert any(src == "espcam-data" and target == data for src, target, _ in mounts(b))
    hc = b["healthcheck"]
    assert hc["test"][0] == "CMD-SHELL" and len(hc["test"]) == 2
    assert login(hc["test"][1], env) == (HEALTH_USER, password_var(HEALTH_USER), "health")
    assert {"interval", "timeout", "retries"} <= set(hc)
    # The image's own healthcheck (docker run) is the same command.
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK .*? CMD (.+)$", dockerfile, re.M)
    assert m and m.group(1).strip() == substitute(hc["test"][1], {})


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
