"""Who watches for a deployed node's birth message on the broker.

Never the node itself: the shipped ACL (deploy/mosquitto/espcam.acl) lets a node read nothing
but its own commands, and the shipped broker makes user names client ids
(`use_username_as_clientid`), so a watcher logged in as the node and the booting node would
disconnect each other. The default watcher is `espcam-cli`, the user of the espcam commands,
which may read all of espcam/ and whose password `espcam broker-users` writes to .env; any
other user may be given. A broker without passwords (the one ./run starts) needs none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from espcam.backend.brokerusers import CLI_USER, ENV_PASSWORDS, read_env
from espcam.provision.errors import ProvisionError

CLI_PASSWORD_VAR = next(var for var, user in ENV_PASSWORDS.items() if user == CLI_USER)
# Where `espcam broker-users` writes the service passwords by default: the current directory.
ENV_FILE = Path(".env")


@dataclass(frozen=True)
class Login:
    """The watcher's broker login; `source` says where it came from, for messages."""

    user: str | None = None
    password: str | None = None
    source: str = "no watcher login given"

    def words(self) -> str:
        return f"as {self.user!r} ({self.source})" if self.user else "anonymously"


def watch_login(
    user: str | None,
    password: str | None,
    env: Mapping[str, str] | None = None,
    env_file: Path = ENV_FILE,
) -> Login:
    """--watch-user/--watch-password; else espcam-cli with ESPCAM_CLI_PASSWORD from the
    environment or from `env_file`; else no login (a broker that lets anyone in)."""
    env = os.environ if env is None else env
    if password is not None and not user:
        raise ProvisionError("--watch-password needs --watch-user")
    if user and password is not None:
        return Login(user, password, "--watch-user and --watch-password")
    if user and user != CLI_USER:
        return Login(user, None, "--watch-user, no password")
    if env.get(CLI_PASSWORD_VAR):
        return Login(CLI_USER, env[CLI_PASSWORD_VAR], f"{CLI_PASSWORD_VAR} from the environment")
    try:
        found = read_env(env_file).get(CLI_PASSWORD_VAR)
    except OSError as e:
        raise ProvisionError(
            f"cannot read {env_file} for the watcher's password ({e.strerror}): set "
            f"{CLI_PASSWORD_VAR}, or give --watch-user and --watch-password"
        ) from None
    if found:
        return Login(CLI_USER, found, f"{CLI_PASSWORD_VAR} from {env_file}")
    if user:
        return Login(user, None, "--watch-user, no password")
    return Login()


def refused_advice(login: Login) -> str:
    if login.user:
        return (
            "check the watcher's user and password (--watch-user/--watch-password; "
            f"{CLI_USER}'s password is {CLI_PASSWORD_VAR} in the .env `espcam broker-users` "
            "wrote), or deploy with --no-wait"
        )
    return (
        f"a broker with passwords needs a watcher that may read the node's availability: run "
        f"deploy where `espcam broker-users` wrote .env, or set {CLI_PASSWORD_VAR} (the "
        f"watcher is then {CLI_USER}), or give --watch-user and --watch-password; or deploy "
        "with --no-wait"
    )
