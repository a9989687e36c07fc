"""`espcam health`: is the backend up, connected and working? For container healthchecks.

Healthy when the backend's retained availability is `online` and its retained status document
is fresh (published every 30 s) and reports storage `ok`.

It logs in with the configured user, which must not be the backend's: the compose broker makes
user names client ids, so a check as `espcam-backend` would disconnect the backend it checks.
docker-compose.yml and the Dockerfile run it as `espcam-health`, which may read only the two
topics below (deploy/mosquitto/espcam.acl).
"""

from __future__ import annotations

import json
import time

from espcam.backend.config import Settings
from espcam.backend.protocol import backend_topic
from espcam.backend.session import Session

STALE_AFTER = 90.0  # three status periods


def check(settings: Settings, now: float | None = None) -> tuple[bool, str]:
    avail_t = backend_topic(settings.prefix, "availability")
    status_t = backend_topic(settings.prefix, "status")
    seen: dict[str, bytes] = {}
    with Session(settings, "health") as s:
        s.subscribe(avail_t, status_t)
        deadline = time.monotonic() + settings.command_timeout
        while len(seen) < 2 and (msg := s.next(deadline)) is not None:
            seen[msg.topic] = msg.payload
    now = time.time() if now is None else now
    if seen.get(avail_t) != b"online":
        return False, f"backend availability is {seen.get(avail_t, b'unknown').decode()!r}"
    try:
        status = json.loads(seen[status_t])
        age = now - float(status["time"])
    except (KeyError, ValueError, TypeError):
        return False, "no backend status document"
    if age > STALE_AFTER:
        return False, f"backend status is {age:.0f}s old"
    if status.get("storage") != "ok":
        return False, f"storage: {status.get('storage')}"
    return True, "ok"
