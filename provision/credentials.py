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
import re
import secrets
from pathlib import Path

from provision.errors import ProvisionError

# The file holds salted hashes, not passwords, and the broker runs as another user (its own uid
# in Docker, `mosquitto` when started as root), so it must be readable by others.
FILE_MODE = 0o644
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
    # Write-then-rename so a broker reloading the file never reads half of it.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{u}:{e}\n" for u, e in users.items())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


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
