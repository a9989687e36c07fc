"""Users in a Mosquitto password file, written in the format `mosquitto_passwd` writes.

The hash is computed here (PBKDF2-SHA512, Mosquitto 2's `$7$` format) rather than by running
`mosquitto_passwd -b`, so that the password never appears on a command line (other users can
read those in `ps`) and the host needs no Mosquitto install; the broker reads the file either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import re
import secrets
from pathlib import Path

from espcam.provision.errors import ProvisionError

# The file holds password hashes (a target for offline guessing): the broker reads it, nobody
# else may (Mosquitto 2.0.17+ also warns that it will refuse world-readable password and ACL
# files). The broker reads it as another user than the one writing it: in the eclipse-mosquitto
# image as uid and gid 1883 (docker-compose.yml mounts deploy/mosquitto read-only, so the image
# cannot fix ownership itself). Hence mode 0640 with group 1883: the writer keeps read and write,
# the broker reads through its group. Only root may give a file to group 1883; anyone else gets a
# file of their own group, which the broker cannot read until `sudo chgrp 1883 FILE` (the
# `broker-users` command says so, docs/docker.md "File permissions"). A group that someone gave
# the file (1883, or `mosquitto` for a broker outside Docker) is kept when it is rewritten.
FILE_MODE = 0o640
BROKER_UID = 1883  # the `mosquitto` user and group of the eclipse-mosquitto image
BROKER_GID = 1883
ITERATIONS = 101  # what mosquitto_passwd 2.x uses; the broker reads the count from the line
SALT_BYTES = 12
HASH_BYTES = 64
USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The part after `user:` of a password file line."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(entry: str, password: str) -> bool:
    """True if `password` matches a `$7$` entry (other formats are not checked here)."""
    parts = entry.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(want))
    return hmac.compare_digest(got, want)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def read_users(path: Path) -> dict[str, str]:
    """user -> hash entry; an absent file has no users."""
    users: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return users
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            user, entry = line.split(":", 1)
            users[user] = entry
    return users


def _write(path: Path, users: dict[str, str], mode: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{u}:{e}\n" for u, e in users.items())
    try:
        old: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old = None
    uid, gid = _owner_for(old)
    if old is not None and gid == old.st_gid and not _may_give(gid):
        # The file has a group this user cannot give a new file (after `sudo chgrp 1883
        # passwd`): rewrite it in place, which keeps its owner and group.
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()
        os.chmod(path, mode)
        return
    # Write-then-rename so a broker reloading the file never reads half of it.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if _may_give(gid):
        os.chown(tmp, uid if os.geteuid() == 0 else -1, gid)
    os.replace(tmp, path)


def _may_give(gid: int) -> bool:
    """May this process give a file of its own to group `gid`?"""
    return os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups()


def _owner_for(old: os.stat_result | None) -> tuple[int, int]:
    """(uid, gid) a written file should have: the owner it had (-1: the writer), and group 1883,
    unless someone gave the file another group than its owner's own (a broker outside Docker
    runs as `mosquitto`): then that group."""
    if old is None:
        return -1, BROKER_GID
    try:
        owners_group = pwd.getpwuid(old.st_uid).pw_gid
    except KeyError:
        owners_group = None
    if old.st_gid not in (BROKER_GID, owners_group):
        return old.st_uid, old.st_gid
    return old.st_uid, BROKER_GID


def restrict(path: Path, mode: int = FILE_MODE) -> None:
    """Give an existing file the broker reads (the ACL, which comes from the repository) group
    1883 and mode 0640, where this process may. A file left in its owner's own group keeps its
    mode: it stays readable for the broker (other users can read it too, and Mosquitto warns)."""
    path = Path(path)
    uid, gid = _owner_for(path.stat())
    if _may_give(gid):
        os.chown(path, uid if os.geteuid() == 0 else -1, gid)
    if path.stat().st_gid == gid:
        os.chmod(path, mode)


def broker_access(path: Path) -> tuple[bool, bool]:
    """(the broker, uid and gid 1883, can read the file; other users cannot)."""
    st = Path(path).stat()
    readable = (st.st_uid == BROKER_UID and st.st_mode & 0o400
                or st.st_gid == BROKER_GID and st.st_mode & 0o040
                or st.st_mode & 0o004)
    return bool(readable), not st.st_mode & 0o007


def add_user(
    path: Path,
    user: str,
    password: str | None = None,
    *,
    replace: bool = False,
    mode: int = FILE_MODE,
) -> str:
    """Adds `user` (or, with replace=True, gives it a new password); returns the password.

    Refuses to silently change an existing user's password: the node deployed with the old
    one would be locked out until it is redeployed.
    """
    if not USER_RE.match(user):
        raise ProvisionError(f"broker user {user!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    users = read_users(path)
    if user in users and not replace:
        raise ProvisionError(
            f"user {user!r} already exists in {path}; use --rotate to give it a new password "
            "(then redeploy the node)"
        )
    password = password or new_password()
    users[user] = hash_password(password)
    _write(path, users, mode)
    return password


def remove_user(path: Path, user: str, mode: int = FILE_MODE) -> bool:
    users = read_users(path)
    if users.pop(user, None) is None:
        return False
    _write(path, users, mode)
    return True
