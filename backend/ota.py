"""The backend's side of updates over MQTT (docs/protocol.md, "Updates"): answers a node's
`ota/get` with pieces of the package offered to it, records what the node reports on
`ota/status` (and a refusal in its ack) per node, clears the retained offer once the node is
done with it, keeps Home Assistant's update entity state (`<prefix>/<node>/update`), and
publishes a staged offer on Install. Packages and records live in <data_dir>/ota
(backend/otapack.py); `espcam ota` makes them and tells this stage on `_backend/ota`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from espcam.backend.documents import MAX_STATE_BYTES, BadDocument, parse_object
from espcam.backend.names import is_node_id
from espcam.backend.otapack import (
    MAX_WINDOW,
    PIECE_DATA,
    TERMINAL,
    NodeRecord,
    Package,
    encode_piece,
)
from espcam.backend.protocol import backend_topic

log = logging.getLogger("espcam.backend.ota")

Publish = Callable[[str, bytes | str, bool, int], None]
SUFFIXES = ("ota/get", "ota/status", "ota/install", "ack", "state")


class Updates:
    def __init__(self, prefix: str, data_dir: str | Path, publish: Publish) -> None:
        self.prefix = prefix
        self.root = Path(data_dir) / "ota"
        self.publish = publish
        self.control_topic = backend_topic(prefix, "ota")
        self.topics = [f"{prefix}/+/ota/get", f"{prefix}/+/ota/status",
                       f"{prefix}/+/ota/install", self.control_topic]
        self._packages: dict[str, Package] = {}
        self._apps: dict[str, str] = {}  # each node's app version, from its state
        self.counters: dict[str, int] = {"pieces": 0, "bad_gets": 0}

    # -- routing ---------------------------------------------------------------------------

    def handle(self, topic_name: str, payload: bytes) -> bool:
        """Takes the messages of this stage; False for the rest. Acks and states are looked at
        (for refusals and the installed version) and left to the intake as well."""
        if topic_name == self.control_topic:
            self._control(payload)
            return True
        head = self.prefix + "/"
        if not topic_name.startswith(head):
            return False
        node, _, kind = topic_name[len(head):].partition("/")
        if kind not in SUFFIXES or not is_node_id(node):
            return False
        if kind == "ack":
            self._ack(node, payload)
            return False
        if kind == "state":
            self._state(node, payload)
            return False
        try:
            if kind == "ota/get":
                self._get(node, payload)
            elif kind == "ota/status":
                self._status(node, payload)
            else:
                self.install(node)
        except (ValueError, OSError, KeyError, TypeError) as e:
            self.counters["bad_gets"] += 1
            log.warning("update message from %s on %s refused: %s", node, kind, e)
        return True

    # -- what nodes ask and say ------------------------------------------------------------

    def _package(self, pid: str) -> Package:
        p = self._packages.get(pid)
        if p is None:
            p = self._packages[pid] = Package(self.root, pid)
        return p

    def _get(self, node: str, payload: bytes) -> None:
        d = parse_object(payload, MAX_STATE_BYTES)
        rec = NodeRecord.load(self.root, node)
        if d.get("id") != rec.package or rec.package is None:
            raise ValueError(f"asks for {d.get('id')!r}, not the update offered to it")
        index, offset, n = d["file"], d["offset"], d["len"]
        if not all(type(v) is int for v in (index, offset, n)) or not 0 < n <= MAX_WINDOW:
            raise ValueError("file, offset and len must be integers, len within the window")
        pkg = self._package(rec.package)
        data = pkg.read(index, offset, n)
        t = f"{self.prefix}/{node}/ota/piece"
        for i in range(0, len(data), PIECE_DATA):
            self.publish(t, encode_piece(pkg.tag, index, offset + i, data[i:i + PIECE_DATA]),
                         False, 0)
            self.counters["pieces"] += 1

    def _status(self, node: str, payload: bytes) -> None:
        if not payload:
            return
        d = parse_object(payload, MAX_STATE_BYTES)
        rec = NodeRecord.load(self.root, node)
        state, uid = str(d.get("state")), d.get("id")
        if isinstance(d.get("installed"), str):
            rec.installed = d["installed"]
        if uid == rec.package:
            rec.state = state
            rec.progress = d.get("progress") if type(d.get("progress")) is int else None
            rec.error = d.get("error") if isinstance(d.get("error"), str) else None
        if state in TERMINAL:
            if rec.outcome(uid, state, rec.error if uid == rec.package else d.get("error"),
                           time.time()):
                log.info("update %s on %s: %s%s", uid, node, state,
                         f" ({d.get('error')})" if d.get("error") else "")
            if uid == rec.package and rec.offered:
                self._withdraw(node, rec)
        rec.save(self.root)
        self._ha(node, rec)

    def _ack(self, node: str, payload: bytes) -> None:
        try:
            d = parse_object(payload, MAX_STATE_BYTES)
        except BadDocument:
            return  # the intake says what is wrong with an ack
        if d.get("cmd") != "update":
            return
        rec = NodeRecord.load(self.root, node)
        if d.get("ok"):
            if d.get("id") == rec.package:
                rec.state, rec.progress = "downloading", 0
        else:
            # A refused offer is never retried by the node: take it down and say why.
            error = str(d.get("error"))[:200]
            rec.outcome(d.get("id"), "refused", f"{d.get('code')}: {error}", time.time())
            log.warning("update refused by %s: %s (%s)", node, error, d.get("code"))
            rec.state, rec.error, rec.progress = "refused", error, None
            if rec.offered:
                self._withdraw(node, rec)
        rec.save(self.root)
        self._ha(node, rec)

    def _state(self, node: str, payload: bytes) -> None:
        try:
            app = parse_object(payload, MAX_STATE_BYTES).get("app")
        except BadDocument:
            return  # the intake says what is wrong with a state
        rec_path = NodeRecord.path(self.root, node)
        if not isinstance(app, str):
            return
        changed, self._apps[node] = self._apps.get(node) != app, app
        if not rec_path.exists():
            if changed:  # never offered an update: up to date with what it runs
                self._ha(node, NodeRecord(node, installed=app))
            return
        rec = NodeRecord.load(self.root, node)
        if rec.installed != app:
            rec.installed = app
            rec.save(self.root)
            self._ha(node, rec)

    # -- what the operator asks ------------------------------------------------------------

    def _control(self, payload: bytes) -> None:
        """`espcam ota` staged packages: {"nodes": [...], "install": bool}."""
        try:
            d = parse_object(payload, MAX_STATE_BYTES)
            nodes = [n for n in d["nodes"] if is_node_id(n)]
        except (ValueError, KeyError, TypeError):
            log.warning("bad message on %s", self.control_topic)
            return
        for node in nodes:
            rec = NodeRecord.load(self.root, node)
            if d.get("install"):
                self.install(node)
            else:
                self._ha(node, rec)

    def install(self, node: str) -> bool:
        """Publishes the offer staged for the node (retained: a sleeping node finds it when it
        wakes). False if there is none."""
        rec = NodeRecord.load(self.root, node)
        if not rec.offer:
            log.warning("install asked for %s, but no update is staged for it", node)
            return False
        rec.offered, rec.state, rec.progress, rec.error = True, "offered", None, None
        rec.save(self.root)
        self.publish(f"{self.prefix}/{node}/ota/offer", rec.offer, True, 1)
        self._ha(node, rec)
        return True

    def _withdraw(self, node: str, rec: NodeRecord) -> None:
        rec.offered = False
        self.publish(f"{self.prefix}/{node}/ota/offer", b"", True, 1)

    def _ha(self, node: str, rec: NodeRecord) -> None:
        if rec.installed is None:
            rec.installed = self._apps.get(node)
        self.publish(f"{self.prefix}/{node}/update", json.dumps(rec.ha_state()), True, 1)

    def record(self, node: str) -> dict[str, Any]:
        return NodeRecord.load(self.root, node).__dict__
