"""`espcam provision NODE`: the node's broker user and its config.json, in one step.

The broker user is named after the node, so a Mosquitto ACL can give each node its own topics
with `pattern` lines on `<prefix>/%u/...` (deploy/mosquitto/espcam.acl does that for `espcam/`).

The default files are those of this checkout (deploy/mosquitto/passwd, deploy/nodes/), found
from this file's place rather than the current directory, so running `espcam provision`
elsewhere does not scatter password files around. An installed espcam has no checkout: there
both files must be named.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from espcam.provision import credentials, nodeconfig
from espcam.provision.checkout import checkout_root
from espcam.provision.errors import ProvisionError

CHECKOUT = checkout_root()
BROKER_DIR: Path | None = CHECKOUT / "deploy" / "mosquitto" if CHECKOUT else None
DEFAULT_PASSWD: Path | None = BROKER_DIR / "passwd" if BROKER_DIR else None
DEFAULT_NODES_DIR: Path | None = CHECKOUT / "deploy" / "nodes" if CHECKOUT else None
BROKER_CONF = "mosquitto.conf"
ACL_PREFIX = "espcam"  # the prefix the shipped ACL (deploy/mosquitto/espcam.acl) is written for


@dataclass
class ProvisionOptions:
    node_id: str
    wifi_ssid: str | None
    wifi_password: str | None
    broker: str | None
    prefix: str | None = None
    mqtt_user: str | None = None
    passwd_file: Path | None = None  # None: this checkout's deploy/mosquitto/passwd
    config_out: Path | None = None  # None: this checkout's deploy/nodes/NODE.json
    rotate: bool = False
    show_password: bool = False


def _check_defaults(opts: ProvisionOptions) -> None:
    if opts.passwd_file is not None and opts.config_out is not None:
        return
    if BROKER_DIR is None:
        raise ProvisionError(
            "espcam is installed without its checkout, so there are no default files: give "
            "--passwd-file (the password file your Mosquitto reads) and --config-out FILE"
        )
    if not (BROKER_DIR / BROKER_CONF).is_file():
        raise ProvisionError(
            f"there is no espcam broker setup at {BROKER_DIR} ({BROKER_CONF} is missing), so "
            "the default files have no place: give --passwd-file (the password file your "
            "Mosquitto reads) and --config-out FILE"
        )


def passwd_path(opts: ProvisionOptions) -> Path:
    """Given, or the checkout's (_check_defaults made sure there is one)."""
    if opts.passwd_file is not None:
        return Path(opts.passwd_file)
    assert DEFAULT_PASSWD is not None
    return DEFAULT_PASSWD


def config_path(opts: ProvisionOptions) -> Path:
    if opts.config_out is not None:
        return Path(opts.config_out)
    assert DEFAULT_NODES_DIR is not None
    return DEFAULT_NODES_DIR / f"{opts.node_id}.json"


def _check_new_passwd_file(path: Path) -> None:
    """A password file that does not exist yet is created only next to a Mosquitto config,
    so a typo or the wrong folder does not leave a password file that no broker reads."""
    if path.exists() or (path.parent / BROKER_CONF).is_file():
        return
    raise ProvisionError(
        f"{path} does not exist and there is no {BROKER_CONF} next to it: give the password "
        "file your Mosquitto reads (its password_file setting); to start a new one there, "
        f"create it first (touch {path})"
    )


def acl_warnings(node_id: str, user: str, prefix: str) -> list[str]:
    """What the shipped ACL would refuse: it confines a node by user name = node id, under
    espcam/."""
    acl = "deploy/mosquitto/espcam.acl"
    out = []
    if user != node_id:
        out.append(
            f"warning: broker user {user!r} is not the node id {node_id!r}; the shipped ACL "
            f"({acl}) lets a node publish only under {ACL_PREFIX}/<its user>/, so this node "
            "would be refused its own topics unless you change the ACL"
        )
    if prefix != ACL_PREFIX:
        out.append(
            f"warning: prefix {prefix!r} is not {ACL_PREFIX!r}; the shipped ACL ({acl}) grants "
            f"nodes only {ACL_PREFIX}/<node>/..., so change the ACL (and the backend's prefix) "
            "to match"
        )
    return out


def provision_node(opts: ProvisionOptions, say: Callable[[str], None] = print) -> int:
    user = opts.mqtt_user or opts.node_id
    _check_defaults(opts)
    passwd = passwd_path(opts)
    out = config_path(opts)
    if out.exists() and not opts.rotate:
        raise ProvisionError(
            f"{out} already exists; use --rotate to make a new password and config for "
            f"{opts.node_id} (then redeploy it)"
        )
    # Check everything before touching the password file, so a typo changes nothing.
    cfg = nodeconfig.build(
        node_id=opts.node_id,
        wifi_ssid=opts.wifi_ssid,
        wifi_password=opts.wifi_password,
        broker=opts.broker,
        prefix=opts.prefix,
        mqtt_user=user,
        mqtt_password="placeholder",
    )
    _check_new_passwd_file(passwd)
    for line in acl_warnings(opts.node_id, user, cfg.get("prefix", ACL_PREFIX)):
        say(line)
    password = credentials.add_user(passwd, user, replace=opts.rotate)
    cfg["broker"]["password"] = password
    # The node's own key for updates over MQTT (node/lib/espcam/ota.py): `espcam ota` signs
    # with it, so an update made for one node is refused by every other.
    cfg["ota_key"] = secrets.token_hex(32)
    nodeconfig.write(out, cfg)
    say(f"broker user {user!r} {'updated' if opts.rotate else 'added'} in {passwd}")
    say(f"config for {opts.node_id} written to {out} (owner-only; it holds the passwords)")
    if opts.show_password:
        say(f"broker password for {user}: {password}")
    else:
        say("the broker password is in that file, not shown (--show-password prints it)")
    say("the broker reads the password file at start: restart or reload (SIGHUP) Mosquitto")
    say(f"next: espcam deploy --port PORT --config {out}")
    return 0
