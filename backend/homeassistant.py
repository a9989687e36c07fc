"""When the backend publishes Home Assistant discovery, and removes it.

Discovery (backend/discovery.py builds it) is published retained, QoS 1:
- for every known node when the backend connects;
- for all of them again when Home Assistant announces itself on `<ha_prefix>/status` (`online`),
  at most once every 30 s (a client repeating `online` cannot make the backend republish
  every device on each message);
- when a node first appears, and when its state changes what the document says (MAC, software
  version) or its settings change;
- empty, retained, when a node is forgotten: Home Assistant then removes the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from espcam.backend import discovery

log = logging.getLogger("espcam.homeassistant")

ANNOUNCE_EVERY = 30.0  # seconds between two republications asked for on the status topic

Publish = Callable[[str, bytes | str, bool], None]  # topic, payload, retain
Known = Callable[[], dict[str, dict[str, Any] | None]]  # node -> its last state document


class HomeAssistant:
    def __init__(self, prefix: str, ha_prefix: str, publish: Publish, known: Known,
                 entities: tuple[discovery.Entity, ...] = discovery.ENTITIES) -> None:
        self.prefix, self.ha_prefix, self.entities = prefix, ha_prefix, entities
        self._publish = publish
        self._known = known
        self._published: dict[str, bytes] = {}  # node -> discovery document last published
        self._wanted = False  # Home Assistant asked (status `online`) since the last one
        self._next_allowed = 0.0
        self._settings: dict[str, Any] = {}  # node -> settings in its last state document

    @property
    def status_topic(self) -> str:
        return f"{self.ha_prefix}/status"

    def announce(self, node: str, state: dict[str, Any] | None, force: bool = False) -> bool:
        """Publish the node's discovery if it is new or changed (or `force`); True if sent."""
        doc = discovery.encode(discovery.build(self.prefix, node, state, self.entities))
        if not force and self._published.get(node) == doc:
            return False
        self._publish(discovery.discovery_topic(self.ha_prefix, node), doc, True)
        self._published[node] = doc
        log.info("Home Assistant discovery published for node %s", node)
        return True

    def announce_all(self) -> None:
        for node, state in sorted(self._known().items()):
            self.announce(node, state, force=True)

    def node_state(self, node: str, state: dict[str, Any]) -> None:
        """A node's state document arrived: first sight, new MAC or version, new settings."""
        settings = state.get("settings")
        changed = node in self._settings and self._settings[node] != settings
        self._settings[node] = settings
        self.announce(node, state, force=changed)

    def node_seen(self, node: str, state: dict[str, Any] | None) -> None:
        if node not in self._published:
            self.announce(node, state)

    def on_status(self, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            self._wanted = True

    def tick(self, now: float) -> None:
        """The loop's timer (monotonic seconds): answer Home Assistant's `online`, throttled."""
        if self._wanted and now >= self._next_allowed:
            self._wanted = False
            self._next_allowed = now + ANNOUNCE_EVERY
            log.info("Home Assistant is online; publishing discovery")
            self.announce_all()

    def forget(self, node: str) -> None:
        self._publish(discovery.discovery_topic(self.ha_prefix, node), b"", True)
        self._published.pop(node, None)
        self._settings.pop(node, None)
