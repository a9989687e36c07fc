"""The front of the loop: every message from the broker goes to the stage that owns its topic.
Topics and node ids are checked first, so nothing under a malformed or hostile id reaches
any stage; JSON documents are parsed with a size and depth bound. No handler's failure stops
the loop: it is caught, counted and logged once per cause.

    <prefix>/<node>/frame          -> frames.py (reassembly, store, announce)
    <prefix>/<node>/availability   -> nodes.py (and the index's node row)
    <prefix>/<node>/state          -> nodes.py, Home Assistant, the ledger's gap check
    <prefix>/<node>/ack            -> frames.py (answers to resend requests)
    <prefix>/<node>/dropped        -> frames.py (frames a version 2 node could not keep)
    <prefix>/_backend/forget       -> the service (espcam forget)
    <ha_prefix>/status             -> Home Assistant discovery again
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend.documents import (
    MAX_STATE_BYTES,
    BadDocument,
    DocumentError,
    parse_ack,
    parse_dropped,
    parse_object,
)
from espcam.backend.frames import FrameKey, FramePath
from espcam.backend.homeassistant import HomeAssistant
from espcam.backend.names import is_node_id
from espcam.backend.nodes import NodeBook
from espcam.backend.protocol import (
    AVAILABILITY,
    BACKEND_LEVEL,
    ChunkError,
    TopicError,
    decode_chunk,
    parse_topic,
)
from espcam.backend.ratelog import RateLimitedLog

log = logging.getLogger("espcam.backend")


class Intake:
    def __init__(self, prefix: str, frames: FramePath, nodes: NodeBook,
                 ha: HomeAssistant | None, save_node: Callable[[str, dict[str, Any]], None],
                 forget: Callable[[bytes], None], warn: RateLimitedLog) -> None:
        """`save_node(node, fields)`: the node's row in the index (on a store worker);
        `forget(payload)`: an `espcam forget` request."""
        self.prefix, self.frames, self.nodes, self.ha = prefix, frames, nodes, ha
        self._save_node, self._forget, self._warn = save_node, forget, warn
        self.forget_topic = f"{prefix}/{BACKEND_LEVEL}/forget"
        self._own = f"{prefix}/{BACKEND_LEVEL}/"
        self.counters: Counter[str] = Counter()

    def handle(self, msg: mqtt.MQTTMessage, now: float) -> FrameKey | None:
        """Hand one message to its stage; returns the key of a frame still open that the
        message belongs to (its acknowledgement waits for the frame)."""
        self.counters["messages"] += 1
        try:
            return self._route(msg, now)
        except Exception:
            self.counters["errors"] += 1
            self._warn.exception(f"error:{msg.topic[:60]}", "unexpected error handling %s; "
                                 "carrying on", msg.topic[:80])
            return None

    def _route(self, msg: mqtt.MQTTMessage, now: float) -> FrameKey | None:
        if msg.topic == self.forget_topic:
            self._forget(msg.payload)
            return None
        if self.ha and msg.topic == self.ha.status_topic:
            self.ha.on_status(msg.payload)
            return None
        try:
            node, kind = parse_topic(self.prefix, msg.topic)
        except TopicError as e:
            if msg.topic.startswith(self._own):
                return None  # our own availability, matched by <prefix>/+/availability
            self.counters["bad_topics"] += 1
            self._warn.warning("topic", "dropped message: %s", e)
            return None
        if kind == "frame":
            return self._chunk(node, msg.payload, now)
        if not msg.payload and kind in ("availability", "state"):
            return None  # a retained message being cleared (`espcam forget`)
        if kind == "availability":
            self._availability(node, msg.payload)
        elif kind == "state":
            self._state(node, msg.payload)
        elif kind == "ack":
            self._ack(node, msg.payload)
        elif kind == "dropped":
            self._dropped(node, msg.payload)
        return None

    def _chunk(self, node: str, payload: bytes, now: float) -> FrameKey | None:
        try:
            chunk = decode_chunk(payload)
        except ChunkError as e:
            self.counters["bad_chunks"] += 1
            self._warn.warning(f"chunk:{node}", "node %s: dropped malformed chunk: %s", node, e)
            return None
        # Only a node that has announced itself gets a view, a report and a Home Assistant
        # device; junk under a made-up id is reassembled in the strangers' small budget.
        if not self.nodes.is_announced(node):
            self.counters["stranger_chunks"] += 1
            return self.frames.chunk(node, chunk, now, stranger=True)
        if not self._admit(node):
            return None
        return self.frames.chunk(node, chunk, now)

    def _admit(self, node: str) -> bool:
        view, new = self.nodes.admit(node)
        if view is None:
            self._warn.warning("max_nodes", "ignoring node %s: already tracking max_nodes=%d "
                               "nodes (raise the setting if they are real)", node,
                               self.nodes.max_nodes)
            return False
        if new and self.ha:
            self.ha.node_seen(node, view.state)
        return True

    def _availability(self, node: str, payload: bytes) -> None:
        value = payload.decode("utf-8", "replace")
        if value not in AVAILABILITY:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"avail:{node}", "node %s: ignored availability %r", node,
                               value[:40])
            return
        self.nodes.announce(node)
        if not self._admit(node):
            return
        self.nodes.views[node].availability = value
        self._save_node(node, {"availability": value})

    def _state(self, node: str, payload: bytes) -> None:
        try:
            doc = parse_object(payload, MAX_STATE_BYTES)
        except BadDocument as e:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"state:{node}", "node %s: ignored state document: %s", node, e)
            return
        self.nodes.announce(node)
        if not self._admit(node):
            return
        view = self.nodes.views[node]
        if _new_power_on(view.state, doc):
            # Frames a version 2 node held in RAM did not survive; nothing counts them
            # (docs/protocol.md, "Limits a node cannot get round").
            log.warning("node %s lost power: frames it held in RAM and had not seen confirmed, "
                        "if any, are gone", node)
        view.state = doc
        self._save_node(node, {"state": doc})
        if self.ha:
            self.ha.node_state(node, doc)
        gap = self.frames.ledger.state(node, doc)
        if gap is not None:
            self.frames.request_gap(node, gap)

    def _ack(self, node: str, payload: bytes) -> None:
        try:
            ack = parse_ack(payload)
        except ValueError as e:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"ack:{node}", "node %s: ignored ack: %s", node, e)
            return
        self.frames.ack(node, ack)  # acted on only if it answers one of our requests

    def _dropped(self, node: str, payload: bytes) -> None:
        try:
            frame_ids, reason = parse_dropped(payload)
        except DocumentError as e:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"dropped:{node}", "node %s: ignored dropped document: %s", node,
                               e)
            return
        if self.nodes.is_announced(node) and self._admit(node):
            self.frames.dropped(node, frame_ids, reason)

    def known_nodes(self, from_index: Callable[[], list[dict[str, Any]]]
                    ) -> dict[str, dict[str, Any] | None]:
        """Nodes of the index and of this run, with their last state document."""
        known: dict[str, dict[str, Any] | None] = {}
        try:
            known = {r["node"]: r["state"] for r in from_index()}
        except Exception as e:  # an unreadable index must not stop the live nodes
            self._warn.warning("nodes", "cannot read nodes from the index: %s", e)
        for node, view in self.nodes.views.items():
            known[node] = view.state or known.get(node)
        return {n: s for n, s in known.items() if is_node_id(n)}


def _new_power_on(before: dict[str, Any] | None, doc: dict[str, Any]) -> bool:
    """The first state document of a version 2 node after it was powered on, spool in RAM."""
    spool, proto = doc.get("spool"), doc.get("proto")
    if not isinstance(proto, int) or proto < 2 or doc.get("reset_cause") != "power_on" or not (
            isinstance(spool, dict) and spool.get("kind") == "ram"):
        return False
    # `boot` changes at every power-on and at nothing else. Uptimes cannot tell: the last
    # state document of a boot may be its first (a node that lost its link soon after it
    # connected), which the next boot's first easily outlasts.
    boot, boot_before = doc.get("boot"), (before or {}).get("boot")
    if before is not None and isinstance(boot, int) and not isinstance(boot, bool):
        return boot != boot_before
    up, up_before = doc.get("uptime"), (before or {}).get("uptime")
    if not isinstance(up, int | float):
        return False
    if not isinstance(up_before, int | float):
        return up < 300  # first seen in this run: only if the boot is recent
    return up < up_before
