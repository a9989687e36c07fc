"""The backend service's MQTT side: a loop over the broker's messages that hands each to the
stage owning its topic, and over the results the slow stages hand back. The stages, in the
order a frame travels (docs/architecture.md):

    connection.py   the MQTT session and the inbox (messages in, results back)
    intake.py       topic routing, node ids, bounded JSON
    frames.py       ledger.py (seen before?) -> reassembly.py -> lanes.py running
                    store.py (jpeg.py check, storage.py + index.py) -> announce.py,
                    confirm.py (version 2 nodes: which frames are done)
    nodes.py        availability, state, the backend's figures per node
    homeassistant.py discovery

The loop's thread owns every stage's state; only the lanes' workers run beside it, and they
touch nothing but the frame they were given and the storage.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

from espcam.backend import discovery
from espcam.backend.analyse import Analysis
from espcam.backend.analyse import available as analysis_off
from espcam.backend.announce import Announcer
from espcam.backend.config import Settings
from espcam.backend.confirm import Confirmer
from espcam.backend.connection import Connection, Inbox
from espcam.backend.documents import BadDocument, parse_object
from espcam.backend.doorbell import Doorbell
from espcam.backend.frames import FramePath
from espcam.backend.homeassistant import HomeAssistant
from espcam.backend.intake import Intake
from espcam.backend.jpeg import inspect_jpeg
from espcam.backend.lanes import Job, Lanes
from espcam.backend.ledger import Ledger
from espcam.backend.names import is_node_id
from espcam.backend.nodes import NodeBook
from espcam.backend.openstorage import open_storage
from espcam.backend.ota import Updates
from espcam.backend.protocol import backend_topic
from espcam.backend.ratelog import RateLimitedLog
from espcam.backend.reassembly import Reassembler
from espcam.backend.records import Outcome
from espcam.backend.store import Check, FrameStore, StorageHealth

log = logging.getLogger("espcam.backend")

TICK = 0.2  # how often timers (resends, reports, status) are looked at, seconds
STATUS_EVERY = 30.0
QUEUE_SIZE = 10_000  # messages in the inbox; a full inbox makes paho's thread wait
STOP_GRACE = 2.0  # seconds a stopping backend keeps handling what it has
RETENTION_LANE = "_retention"  # not a node id, so never a node's lane
MAX_FORGET_BYTES = 1024


class Backend:
    def __init__(self, settings: Settings, *, check: Check = inspect_jpeg) -> None:
        self.settings = settings
        self.prefix = prefix = settings.prefix
        self.storage = open_storage(settings)
        self._warn = RateLimitedLog(log)
        self.counters: Counter[str] = Counter()
        self.inbox = Inbox(QUEUE_SIZE, settings.max_queue_bytes)
        self.availability_topic = backend_topic(prefix, "availability")
        self.forget_topic = backend_topic(prefix, "forget")
        topics = [f"{prefix}/+/{kind}"
                  for kind in ("frame", "availability", "state", "ack", "dropped")]
        topics.append(self.forget_topic)
        self.ota = Updates(prefix, settings.data_dir, self.publish)
        topics += self.ota.topics
        if settings.ha_discovery:
            topics.append(f"{settings.ha_prefix}/status")
        self.connection = Connection(settings, self.inbox, topics,
                                     (self.availability_topic, "offline"), self._warn)
        # Ready means subscribed on the current connection (tests and embedders wait on it).
        self.connected = self.connection.ready
        self.nodes = NodeBook(settings.max_nodes,
                              lambda n: (self.storage.count(n), self.storage.latest(n)))
        try:
            self.nodes.known([r["node"] for r in self.storage.nodes()])
        except sqlite3.Error as e:
            log.warning("cannot read the known nodes from the index: %s", e)
        self.ledger = Ledger(self.storage.index.recent_ids)
        self.reassembler = Reassembler(settings.limits())
        self.health = StorageHealth()
        self.lanes = Lanes(settings.store_workers, settings.max_pending_frames,
                           settings.max_pending_bytes, depth=settings.store_overlap)
        self.store = FrameStore(self.storage, settings, self.health, check)
        self.announcer = Announcer(prefix, self.storage.locate, self.publish)
        self.confirmer = Confirmer(prefix, self.publish)
        # Analysis beside ingest, fed with stored frames (analyse.py); said once when off.
        off = analysis_off(settings)
        if off:
            log.info("%s", off)
        self.analysis = None if off else Analysis(
            settings, str(self.storage.root), self.storage.index, self.storage.locate,
            lambda f: self.inbox.put_result(("analysis", f)), self._warn,
            # Object storage has no files for the worker to open: it gets the bytes.
            self.storage.read if settings.frames_url else None)
        self.doorbell = Doorbell(prefix, settings, self.publish)
        self.ha = (HomeAssistant(prefix, settings.ha_prefix,
                                 lambda t, p, r: self.publish(t, p, r, 1), self._known,
                                 discovery.entities(self.analysis is not None))
                   if settings.ha_discovery else None)
        self.frames = FramePath(prefix, self.ledger, self.reassembler, self.lanes, self.store,
                                self.nodes, self.announcer, self.confirmer, self.publish,
                                self.connection.release,
                                lambda r: self.inbox.put_result(("frame", r)),
                                lambda: self.health.error is not None, self._warn,
                                self.analysis.offer if self.analysis else None)
        self.intake = Intake(prefix, self.frames, self.nodes, self.ha, self._save_node,
                             self.on_forget, self._warn)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Held while a message, result or timer is handled, so status() from another thread
        # never sees a half-updated stage.
        self._lock = threading.Lock()
        self._next_tick = 0.0
        self._next_status = 0.0
        self._next_overdue = 0.0
        self._next_retention = 0.0  # the first tick applies retention: it also runs at start
        self._announced = 0  # connections whose discovery and reports went out

    def publish(self, topic_name: str, payload: bytes | str, retain: bool = False,
                qos: int = 1) -> None:
        self.connection.publish(topic_name, payload, retain, qos)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until `stop()`; reconnects by itself whenever the broker goes away."""
        s = self.settings
        log.info("espcam backend: broker %s, prefix %s, data in %s", s.broker, s.prefix,
                 self.storage.root)
        try:
            self.storage.reconcile()
        except (OSError, sqlite3.Error) as e:
            # Serving beats refusing to: frames wait in the lanes and are retried.
            self.health.failed(f"reconcile failed: {e}")
            log.error("STORAGE ERROR: cannot reconcile files and index in %s: %s; serving "
                      "anyway", self.storage.root, e)
        self.connection.start()
        if self.analysis:
            self.analysis.start()
        try:
            while not self._stop.is_set():
                self._step(self._next())
            # Stopping: what is queued and frames half in are finished first, briefly.
            deadline = time.monotonic() + STOP_GRACE
            while (len(self.inbox) or self.frames.open_frames()) and (
                    time.monotonic() < deadline):
                self._step(self._next())
        finally:
            self._shutdown()

    def _next(self) -> tuple[str, Any] | None:
        """The next message or result; only results while a frame waits for room in the
        store's lanes (back-pressure: messages stay in the inbox, then at the broker)."""
        with self._lock:
            paused = not self.frames.unpark()
        return self.inbox.get(timeout=TICK, results_only=paused)

    def _step(self, item: tuple[str, Any] | None) -> None:
        with self._lock:
            now = time.monotonic()
            if item is not None:
                kind, value = item
                if kind == "message":
                    if self._updates(value):
                        self.connection.settle(value)
                    else:
                        self.connection.settle(value, self.intake.handle(value, now))
                else:
                    self._result(*value)
            if now < self._next_tick:
                return  # timers every TICK, not after every chunk: 4 % of the loop otherwise
            self._next_tick = now + TICK
            try:
                self.tick(now)
            except Exception:
                # A timer failing (e.g. retention on a full disk) must not end the service.
                self.counters["errors"] += 1
                self._warn.exception("tick", "unexpected error in the backend's timers; "
                                             "carrying on")

    def _updates(self, msg: Any) -> bool:
        """Update traffic goes to its stage (backend/ota.py), which also reads acks and states."""
        try:
            return self.ota.handle(msg.topic, msg.payload)
        except Exception:
            self.counters["errors"] += 1
            self._warn.exception("ota", "unexpected error in updates; carrying on")
            return False

    def _result(self, kind: str, result: Any) -> None:
        """A lane's result, back in the loop's thread."""
        if kind == "frame":
            self.frames.settle(result)
        elif kind == "retention":
            self._retention_done(result)
        elif kind == "forget":
            self._forget_done(*result)
        elif kind == "analysis":
            self.doorbell.findings(result)
        elif kind == "node_row" and isinstance(result, Exception):
            self._warn.warning("nodes", "cannot record a node in the index: %s", result)

    def tick(self, now: float) -> None:
        self.frames.tick(now)
        self.reassembler.losses.flush()
        self.reassembler.let_go.flush()
        ready = self.connected.is_set()
        if ready and self._announced != self.connection.connections:
            # A new connection: everyone's discovery and reports again (a broker that lost
            # its retained messages gets them back), and the status at once.
            self._announced = self.connection.connections
            for node in self._known():
                self.nodes.report(node)
            if self.ha:
                self.ha.announce_all()
            self._next_status = 0.0
        if now >= self._next_overdue:
            self._next_overdue = now + 5.0
            self.nodes.check_overdue(time.time())
        if ready:
            if self.ha:
                self.ha.tick(now)
            self.confirmer.flush()
            self.announcer.reports(self.nodes)
        if self.health.take_change():
            self._next_status = 0.0
        if self.settings.retention_interval > 0 and now >= self._next_retention:
            # Not only when a frame is stored: a node that stopped sending keeps its old
            # frames otherwise.
            self._next_retention = now + self.settings.retention_interval
            self.lanes.submit(RETENTION_LANE, self.store.retention_job(
                time.time(), lambda r: self.inbox.put_result(("retention", r))), force=True)
        if ready and now >= self._next_status:
            self.announcer.status(self._status())
            self._next_status = now + STATUS_EVERY

    def _retention_done(self, result: Any) -> None:
        if isinstance(result, Exception):
            self._warn.error("retention", "retention run failed: %s", result)
            return
        for node, n in result.items():
            if n and node in self.nodes.reports:
                try:
                    self.nodes.report(node).frames_stored = self.storage.count(node)
                except sqlite3.Error:
                    continue

    def _save_node(self, node: str, fields: dict[str, Any]) -> None:
        job = self.store.node_row_job(node, fields,
                                      lambda r: self.inbox.put_result(("node_row", r)))
        if not self.lanes.submit(node, job):
            self.counters["node_rows_skipped"] += 1

    def _known(self) -> dict[str, dict[str, Any] | None]:
        return self.intake.known_nodes(self.storage.nodes)

    # -- forgetting a node -----------------------------------------------------------------

    def on_forget(self, payload: bytes) -> None:
        """`espcam forget`: {"id", "node", "delete_frames"} on <prefix>/_backend/forget."""
        try:
            req = parse_object(payload, MAX_FORGET_BYTES)
            if not is_node_id(req.get("node")):
                raise BadDocument("not_object", "need a valid node id")
        except BadDocument as e:
            self.counters["bad_messages"] += 1
            self._warn.warning("forget", "ignored forget request: %s", e)
            return
        node, delete = req["node"], req.get("delete_frames") is True
        req_id = req.get("id") if isinstance(req.get("id"), str) else None
        # Home Assistant and the live state forget it now; the disk in the node's lane,
        # after any frame of it still being stored.
        if self.ha:
            self.ha.forget(node)
        else:
            self.publish(discovery.discovery_topic(self.settings.ha_prefix, node), b"", True)
        self.announcer.forget(node)
        self.doorbell.forget(node)
        self.confirmer.forget(node)
        self.frames.forget(node)
        self.nodes.forget(node)

        def run() -> int:
            return self.storage.forget_node(node, delete_frames=delete)

        job = Job(run, 0, lambda r: self.inbox.put_result(("forget", (node, req_id, delete, r))),
                  retry=False)
        self.lanes.submit(node, job, force=True)

    def _forget_done(self, node: str, req_id: str | None, delete: bool, result: Any) -> None:
        ack: dict[str, Any] = {"id": req_id, "cmd": "forget", "ok": True}
        if isinstance(result, Exception):
            log.error("forgetting node %s failed: %s", node, result)
            ack.update(ok=False, error=str(result))
        else:
            ack["result"] = {"node": node, "frames_deleted": result}
            log.info("forgot node %s%s", node, f" and deleted its {result} frame(s)"
                     if delete else " (its stored frames are kept)")
        self.publish(backend_topic(self.prefix, "ack"), json.dumps(ack))

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        counters = Counter(self.counters)
        for stage in (self.intake, self.frames, self.ledger, self.nodes, self.lanes,
                      self.reassembler, self.confirmer, self.analysis):
            if stage is not None:
                counters.update(stage.counters)
        if self.connection.oversize:
            counters["oversize_messages"] = self.connection.oversize
        return {
            "storage": self.health.error or "ok",
            # While the disk refuses, every frame in the store's lanes waits for it.
            "pending_frames": self.lanes.jobs if self.health.error else self.lanes.waiting(),
            "frames_in_flight": self.reassembler.frames_held,
            "bytes_in_flight": self.reassembler.bytes_held,
            "frames_in_store": self.lanes.jobs,
            "bytes_in_store": self.lanes.bytes,
            "queued_messages": len(self.inbox),
            "queued_bytes": self.inbox.bytes,
            "analysis": "on" if self.analysis else "off",
            "frames_to_analyse": self.analysis.waiting if self.analysis else 0,
            "nodes": len(self.nodes.views),
            "counters": dict(counters),
            "time": time.time(),
        }

    # -- stopping --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self.analysis:
            self.analysis.close()
        self.connection.stop()
        with self._lock:
            # Chunks paho had already read: a frame they complete is stored. Its last chunk
            # stays unacknowledged, so the broker sends it again after a restart, and it is
            # then recognised as stored. Other kinds come again from the broker (QoS 1).
            while (item := self.inbox.get(timeout=0)) is not None:
                kind, value = item
                if kind == "message" and value.topic.endswith("/frame"):
                    self.intake.handle(value, time.monotonic())
                elif kind == "result":
                    self._result(*value)
        with self._lock:
            self.frames.unpark()
            parked = self.frames.parked
        left = self.lanes.close(timeout=5.0)
        with self._lock:
            while (item := self.inbox.get(timeout=0)) is not None:
                if item[0] == "result":
                    self._result(*item[1])
            note = ("not acknowledged to the broker, so the next start asks the node for it "
                    "again; recovered only if the node still holds it")
            for frame in [j.about for j in left if j.about is not None] + (
                    [parked] if parked else []):
                self.counters["frames_lost_storage"] += 1
                log.error("LOST frame %d of node %s: not stored when the backend stopped "
                          "(%s); %s", frame.frame_id, frame.node, self.health.error, note)
            self.reassembler.losses.flush()
            self.reassembler.drop_all(f"incomplete when the backend stopped; {note}")
            self.storage.close()

    def start(self) -> Backend:
        """Run in a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self.run, name="espcam-backend", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask `run` to finish; safe from signal handlers and other threads."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)


__all__ = ["Backend", "Outcome"]
