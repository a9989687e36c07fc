"""`espcam provision NODE`: the node's broker user and its config.json, in one step.

The broker user is named after the node, so a Mosquitto ACL can give each node its own topics
with `pattern readwrite <prefix>/%u/#`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provision import credentials, nodeconfig
from provision.errors import ProvisionError

DEFAULT_PASSWD = Path("deploy/mosquitto/passwd")
DEFAULT_NODES_DIR = Path("deploy/nodes")


@dataclass
class ProvisionOptions:
    node_id: str
    wifi_ssid: str | None
    wifi_password: str | None
    broker: str | None
    prefix: str | None = None
    mqtt_user: str | None = None
    passwd_file: Path = DEFAULT_PASSWD
    config_out: Path | None = None
    rotate: bool = False
    show_password: bool = False


def config_path(opts: ProvisionOptions) -> Path:
    return Path(opts.config_out or DEFAULT_NODES_DIR / f"{opts.node_id}.json")


def provision_node(opts: ProvisionOptions, say=print) -> int:
    user = opts.mqtt_user or opts.node_id
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
    password = credentials.add_user(opts.passwd_file, user, replace=opts.rotate)
    cfg["broker"]["password"] = password
    nodeconfig.write(out, cfg)
    say(f"broker user {user!r} {'updated' if opts.rotate else 'added'} in {opts.passwd_file}")
    say(f"config for {opts.node_id} written to {out} (owner-only; it holds the passwords)")
    if opts.show_password:
        say(f"broker password for {user}: {password}")
    else:
        say("the broker password is in that file, not shown (--show-password prints it)")
    say("the broker reads the password file at start: restart or reload (SIGHUP) Mosquitto")
    say(f"next: espcam deploy --port PORT --config {out}")
    return 0
