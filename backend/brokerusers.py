"""`espcam broker-users`: the broker's password file and users for docker compose.

The compose broker makes every client's user name its client id (`use_username_as_clientid`),
so that no one can take over another client's session; hence one user per program
(deploy/mosquitto/espcam.acl gives each its rights):
- `espcam-backend`: `espcam serve` only;
- `espcam-cli`: the `espcam` commands (capture, flash, config, forget, ...);
- `espcam-health`: the container healthcheck (`espcam health`);
- `homeassistant`: Home Assistant's MQTT integration;
- one user per node, named after the node id: the ACL's `pattern` lines use the user name
  (`%u`) to confine a node to its own topics.

The password file is written in mosquitto_passwd's format by provision/credentials.py (the
password never appears on a command line), mode 0640, group 1883 (the broker's, in the image)
when this runs as root; the ACL beside it gets the same. The service passwords go to an env
file (`.env` beside docker-compose.yml, mode 0600), which compose reads; a node's password is
printed once, as the `broker` block of its config.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from espcam.backend.names import check_node_id

BACKEND_USER = "espcam-backend"
CLI_USER = "espcam-cli"
HEALTH_USER = "espcam-health"
HA_USER = "homeassistant"
# env file variable -> broker user whose password it holds
ENV_PASSWORDS = {"ESPCAM_BACKEND_PASSWORD": BACKEND_USER, "ESPCAM_CLI_PASSWORD": CLI_USER,
                 "ESPCAM_HEALTH_PASSWORD": HEALTH_USER, "HA_MQTT_PASSWORD": HA_USER}
SERVICE_USERS = tuple(ENV_PASSWORDS.values())
DEFAULT_PASSWD = Path("deploy/mosquitto/passwd")
DEFAULT_ENV = Path(".env")
ACL_NAME = "espcam.acl"  # beside the password file; its permissions are set with it


class BrokerUsersError(Exception):
    """A sentence for the user."""


def _credentials():
    try:
        from espcam.provision import credentials
    except ImportError as e:  # provision/ must be importable (installed, or on PYTHONPATH)
        raise BrokerUsersError(f"the provisioning package is not available: {e}") from None
    return credentials


def read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


def write_env(path: Path, values: dict[str, str]) -> None:
    """Set `values` in the env file, keeping its other lines; mode 0600 (it holds secrets)."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else [
        "# Written by `espcam broker-users`: broker passwords for docker compose. Keep private."]
    done: set[str] = set()
    for i, line in enumerate(lines):
        key = line.partition("=")[0].strip()
        if key in values:
            lines[i] = f"{key}={values[key]}"
            done.add(key)
    lines += [f"{k}={v}" for k, v in values.items() if k not in done]
    tmp = path.with_name(path.name + ".tmp")
    # A stale tmp file (an interrupted run, or someone's 0644 file) would keep its own mode:
    # O_CREAT's mode only applies to a new file. Start from a new one, and make sure.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    if os.geteuid() == 0 and path.exists():  # run with sudo: the file stays its owner's
        st = path.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


@dataclass
class Outcome:
    services: list[str] = field(default_factory=list)  # lines about the service users
    nodes: dict[str, str] = field(default_factory=dict)  # node -> its new password
    unreadable: list[Path] = field(default_factory=list)  # files the broker cannot read
    public: list[Path] = field(default_factory=list)  # files other users can read


def ensure_users(passwd: Path, env_file: Path, nodes: list[str], rotate: bool = False) -> Outcome:
    """Create the service users (kept if the file and env file agree), and the node users.
    A node that already has a user is an error unless `rotate` (it gets a new password)."""
    cred = _credentials()
    out = Outcome()
    for node in nodes:
        check_node_id(node)
        if node in SERVICE_USERS:
            raise BrokerUsersError(f"{node!r} is a service user name, not a node id")
    users = cred.read_users(passwd)
    env = read_env(env_file)
    new_env: dict[str, str] = {}
    for var, user in ENV_PASSWORDS.items():
        known = env.get(var)
        if user in users and known and not rotate and cred.check_password(users[user], known):
            out.services.append(f"{user}: kept (password in {env_file} as {var})")
            continue
        password = cred.add_user(passwd, user, replace=True)
        new_env[var] = password
        out.services.append(f"{user}: new password, written to {env_file} as {var}")
    if new_env:
        write_env(env_file, new_env)
    for node in nodes:
        if node in users and not rotate:
            raise BrokerUsersError(f"node {node} already has a broker user in {passwd}; add "
                                   "--rotate to give it a new password (then update the node)")
        out.nodes[node] = cred.add_user(passwd, node, replace=True)
    acl = Path(passwd).with_name(ACL_NAME)
    files = [Path(passwd)]
    if acl.is_file():
        cred.restrict(acl)
        files.append(acl)
    for f in files:
        readable, private = cred.broker_access(f)
        if not readable:
            out.unreadable.append(f)
        if not private:
            out.public.append(f)
    return out


def permission_advice(out: Outcome) -> list[str]:
    """What to run when the broker (uid and gid 1883 in the image) cannot read a file, or
    others can (docs/docker.md, "File permissions")."""
    files = sorted(set(out.unreadable) | set(out.public))
    if not files:
        return []
    names = " ".join(str(f) for f in files)
    why = ("the broker (uid and gid 1883 in the container) cannot read "
           + ", ".join(str(f) for f in out.unreadable) if out.unreadable
           else "other users can read " + ", ".join(str(f) for f in out.public))
    return [f"note: {why}; give the files to the broker's group once (later runs keep it):",
            f"  sudo chgrp 1883 {names} && chmod 0640 {names}"]


def node_config(node: str, password: str, host: str, port: int, prefix: str) -> dict:
    """The part of the node's config.json (docs/node.md) that these credentials fill."""
    return {"node_id": node, "prefix": prefix,
            "broker": {"host": host, "port": port, "user": node, "password": password}}


def format_node(node: str, password: str, host: str, port: int, prefix: str) -> str:
    doc = json.dumps(node_config(node, password, host, port, prefix), indent=2)
    return f"node {node}: put these keys into its config.json (shown once):\n{doc}"


def add_arguments(subparsers, common=None) -> None:
    """Add `broker-users` to an argparse subparsers object (`common` adds shared flags)."""
    p = subparsers.add_parser(
        "broker-users", help="create the broker's password file and users (docker compose)",
        description="Create or update the Mosquitto password file: users for the backend, the "
        "espcam commands, the healthcheck and Home Assistant (passwords into the env file "
        "docker compose reads) and one per node (its config.json broker block is printed).")
    if common:
        common(p)
    p.add_argument("nodes", nargs="*", metavar="NODE", help="node ids to create users for")
    p.add_argument("--passwd-file", default=str(DEFAULT_PASSWD),
                   help=f"password file (default {DEFAULT_PASSWD}, mounted by compose)")
    p.add_argument("--env-file", default=str(DEFAULT_ENV),
                   help=f"env file for the service passwords (default {DEFAULT_ENV})")
    p.add_argument("--node-broker", metavar="HOST[:PORT]",
                   help="address the nodes reach the broker at (default: --broker)")
    p.add_argument("--rotate", action="store_true",
                   help="give existing users new passwords")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from espcam.backend.config import ConfigError, split_broker

    try:
        host, port = split_broker(args.node_broker or settings.broker)
    except ConfigError as e:
        print(f"espcam: {e}")
        return 2
    try:
        out = ensure_users(Path(args.passwd_file), Path(args.env_file), args.nodes,
                           rotate=args.rotate)
    except (BrokerUsersError, ValueError) as e:
        print(f"espcam: {e}")
        return 2
    except PermissionError as e:
        print(f"espcam: {e.strerror}: {e.filename} (a file given to the broker with `chown "
              "1883`: run this with sudo)")
        return 1
    except Exception as e:  # ProvisionError and OSError: a sentence for the user
        print(f"espcam: {e}")
        return 1
    print(f"password file {args.passwd_file}:")
    for line in out.services:
        print(f"  {line}")
    for line in permission_advice(out):
        print(line)
    for node, password in out.nodes.items():
        print(format_node(node, password, host, port, settings.prefix))
    if out.nodes and host in ("localhost", "127.0.0.1", "::1"):
        print(f"note: nodes cannot reach {host}; pass --node-broker with the home server's "
              "LAN address, or edit the host in config.json")
    print("the broker reads the password file when it starts: docker compose restart mosquitto")
    return 0
