"""The backend service: one MQTT session, a loop over its messages, each handed to the stage
that owns its topic (chunks to reassembly then storage; availability, state and acks to the
node view). paho's network thread only queues messages; all work happens in `run`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend import discovery
from espcam.backend.config import Settings
from espcam.backend.homeassistant import HomeAssistant
from espcam.backend.jpeg import NotAJpeg, TooManyPixels, inspect_jpeg
from espcam.backend.names import is_node_id
from espcam.backend.nodereport import NodeReport
from espcam.backend.protocol import (
    AVAILABILITY,
    BACKEND_LEVEL,
    FRAME_ID_BLOCK,
    MAX_MESSAGE_BYTES,
    Chunk,
    ChunkError,
    CommandError,
    TopicError,
    backend_topic,
    build_command,
    decode_chunk,
    encode_command,
    new_command_id,
    parse_ack,
    parse_topic,
    topic,
)
from espcam.backend.reassembly import Frame, FrameRejected, Lost, Reassembler, ResendRequest
from espcam.backend.session import client_for
from espcam.backend.storage import Storage, StorageError, StorageRejected, StoredFrame
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("espcam.backend")

TICK = 0.2  # how often timers (resends, storage retries) are looked at, seconds
STATUS_EVERY = 30.0
MAX_STATE_BYTES = 16 * 1024
QUEUE_SIZE = 10_000  # a full queue blocks paho's thread, which pushes back through TCP
RECENT_FRAME_IDS = 256  # per node, frame ids of which a chunk arrived (gap detection)
MAX_GAP_REQUESTS = 1000  # frames asked for because the state named them; oldest forgotten
MAX_HELD_ACKS = 64  # per frame; a real node sends one QoS 1 chunk per (re)transmission
STOP_GRACE = 2.0  # seconds a stopping backend keeps handling queued messages and open frames


@dataclass
class NodeView:
    """What the backend currently knows about one node."""

    availability: str | None = None
    state: dict[str, Any] | None = None
    last_seen: float | None = None
    last_frame: int | None = None


@dataclass
class _Pending:
    frame: Frame
    width: int
    height: int
    received_at: float
    failures: int = field(default=0)


class RateLimitedLog:
    """One line per key every `every` seconds, so a flood of junk cannot flood the log.
    Remembers at most `max_keys` keys (the least recent go), so junk under ever new node ids
    cannot grow it either."""

    def __init__(self, logger: logging.Logger, every: float = 10.0,
                 max_keys: int = 1024) -> None:
        self.logger, self.every, self.max_keys = logger, every, max_keys
        self._last: OrderedDict[str, float] = OrderedDict()
        self._suppressed: Counter[str] = Counter()
        self._mutex = threading.Lock()  # also used from paho's thread (_on_message)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.WARNING, key, msg, args)

    def error(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.ERROR, key, msg, args)

    def exception(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.ERROR, key, msg, args, exc_info=True)

    def _emit(self, level: int, key: str, msg: str, args: tuple[Any, ...],
              exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._mutex:
            if now - self._last.get(key, -math.inf) < self.every:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > self.max_keys:
                old, _ = self._last.popitem(last=False)
                self._suppressed.pop(old, None)
            more = self._suppressed.pop(key, 0)
        suffix = f" ({more} similar suppressed)" if more else ""
        self.logger.log(level, msg + suffix, *args, exc_info=exc_info)


class MessageQueue:
    """Messages from paho's thread to the loop, bounded by count and by bytes.

    A full queue blocks paho's thread, which then stops reading the socket: the broker keeps
    the rest (it queues for our session) and TCP pushes back, so nothing is dropped. One
    message is always let in, however large, so a single big one cannot wedge it."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self._items: deque[mqtt.MQTTMessage] = deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, msg: mqtt.MQTTMessage) -> None:
        size = len(msg.payload)
        with self._cond:
            while not self._closed and self._items and (
                    len(self._items) >= self.max_count or self._bytes + size > self.max_bytes):
                self._cond.wait()
            self._items.append(msg)
            self._bytes += size
            self._cond.notify_all()

    def get(self, timeout: float) -> mqtt.MQTTMessage | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            msg = self._items.popleft()
            self._bytes -= len(msg.payload)
            self._cond.notify_all()
            return msg

    def close(self) -> None:
        """Stop blocking put(): the loop no longer empties the queue (shutting down), and
        paho's thread must be able to finish so that the client can disconnect."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self.reassembler = Reassembler(settings.limits())
        self.storage = Storage(settings.data_dir, settings.retention())
        self.nodes: dict[str, NodeView] = {}
        self.counters: Counter[str] = Counter()
        self.storage_error: str | None = None
        self.messages = MessageQueue(QUEUE_SIZE, settings.max_queue_bytes)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._pending: deque[_Pending] = deque()
        self._next_retry = 0.0
        self._next_tick = 0.0
        self._next_retention = 0.0  # the first tick applies retention: it also runs at start
        # QoS 1 chunks of frames not yet stored nor given up, by (node, frame id): they are
        # acknowledged to the broker only then, so a backend that dies before that gets them
        # again from the broker after a restart (see "What survives a crash" in backend.md).
        self._held_acks: dict[tuple[str, int], set[tuple[int, int]]] = {}
        self._acks_open = True
        self._chunk_key: tuple[str, int] | None = None  # the frame the current message is of
        self._oversize = 0  # counted in paho's thread, hence apart from `counters`
        self._resends: OrderedDict[str, tuple[str, int]] = OrderedDict()
        # Gap detection: the highest frame id seen per node (chunks and state documents), the
        # recent ids of which a chunk arrived, and frames already asked for (once each).
        self._highest: dict[str, int] = {}
        self._chunk_ids: dict[str, deque[int]] = {}
        self._gap_asked: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._gap_requests: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self.reports: dict[str, NodeReport] = {}
        self.ha = (HomeAssistant(self.prefix, settings.ha_prefix,
                                 lambda t, p, r: self.publish(t, p, retain=r))
                   if settings.ha_discovery else None)
        self._announce_due = False
        self._reports_due: set[str] = set()  # published from tick: a flood costs one per tick
        self._status_due = 0.0
        self._warn = RateLimitedLog(log)
        self._thread: threading.Thread | None = None
        # Held while a message or timer is handled, so status() from another thread (tests,
        # embedding) never sees a half-updated counter dict.
        self._lock = threading.Lock()
        self.client = self._make_client()

    # -- MQTT session --------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        # Fixed id and a persistent session: the broker queues chunks while we are away.
        # QoS 1 messages are acknowledged only once handled, and a frame's (its last chunk)
        # only once the frame is stored or given up. A backend killed with a backlog or frames
        # in memory gets those messages again from the broker.
        client = client_for(s, s.client_id, clean_session=False, manual_ack=True,
                            will=(self.availability_topic, "offline"))
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    @property
    def availability_topic(self) -> str:
        return backend_topic(self.prefix, "availability")

    @property
    def forget_topic(self) -> str:
        return backend_topic(self.prefix, "forget")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.settings.broker, reason_code)
            return
        log.info("connected to %s (session present: %s)", self.settings.broker,
                 flags.session_present)
        # Subscribing again is harmless when the session survived and needed when it did not.
        topics = [(f"{self.prefix}/+/{kind}", 1)
                  for kind in ("frame", "availability", "state", "ack")]
        topics.append((self.forget_topic, 1))
        if self.ha:
            topics.append((self.ha.status_topic, 1))
        client.subscribe(topics)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        self._status_due = 0.0
        self._announce_due = True  # discovery and node reports, from the loop's thread
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any,
                       flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from %s (%s); reconnecting", self.settings.broker,
                        reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > MAX_MESSAGE_BYTES:
            # Larger than any valid chunk (header + metadata + 64 KiB): never queued, so junk
            # cannot take the queue's memory. Acknowledged, or the broker would send it again.
            self._oversize += 1
            self._warn.warning("oversize", "dropped a message of %d bytes on %s: larger than "
                               "any valid message (%d bytes)", len(msg.payload), msg.topic[:80],
                               MAX_MESSAGE_BYTES)
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        self.messages.put(msg)

    def publish(self, topic_name: str, payload: bytes | str, retain: bool = False,
                qos: int = 1) -> None:
        self.client.publish(topic_name, payload, qos=qos, retain=retain)

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until `stop()`; reconnects by itself whenever the broker goes away."""
        s = self.settings
        log.info("espcam backend: broker %s, prefix %s, data in %s", s.broker, s.prefix,
                 self.storage.root)
        try:
            self.storage.reconcile()
        except (OSError, sqlite3.Error) as e:
            # Serving beats refusing to: frames are kept in memory and retried (tick).
            self.storage_error = f"reconcile failed: {e}"
            log.error("STORAGE ERROR: cannot reconcile files and index in %s: %s; serving "
                      "anyway", self.storage.root, e)
        self.client.connect_async(s.host, s.port, s.keepalive)
        self.client.loop_start()
        try:
            while not self._stop.is_set():
                self._step(self.messages.get(timeout=TICK))
            # Stopping: what is queued and frames half in are finished first, briefly.
            deadline = time.monotonic() + STOP_GRACE
            while (len(self.messages) or self.reassembler.frames_held) and (
                    time.monotonic() < deadline):
                self._step(self.messages.get(timeout=TICK))
        finally:
            self._shutdown()

    def _step(self, msg: mqtt.MQTTMessage | None) -> None:
        with self._lock:
            if msg is not None:
                self._chunk_key = None
                try:
                    self.handle(msg)
                finally:
                    self._settle(msg)
            now = time.time()
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

    def _settle(self, msg: mqtt.MQTTMessage) -> None:
        """Acknowledge a handled QoS 1 message, unless it belongs to a frame not yet stored
        nor given up: that one is held until the frame is settled (`_release`)."""
        key = self._chunk_key
        is_open = key is not None and self._frame_open(key)
        if key is not None and not is_open:
            self._release(*key)  # settled by this message, which may be a QoS 0 chunk
        if not msg.qos:
            return
        if key is not None and is_open:
            held = self._held_acks.setdefault(key, set())
            if len(held) < MAX_HELD_ACKS:
                held.add((msg.mid, msg.qos))
                return
        self._ack(msg.mid, msg.qos)

    def _frame_open(self, key: tuple[str, int]) -> bool:
        return self.reassembler.holds(*key) or any(
            (p.frame.node, p.frame.frame_id) == key for p in self._pending)

    def _release(self, node: str, frame_id: int) -> None:
        """The frame is stored or given up for good: acknowledge its held messages."""
        for mid, qos in self._held_acks.pop((node, frame_id), ()):
            self._ack(mid, qos)

    def _ack(self, mid: int, qos: int) -> None:
        if self._acks_open:
            self.client.ack(mid, qos)

    def _shutdown(self) -> None:
        self.messages.close()  # paho's thread may be waiting for room
        if self.client.is_connected():
            self.client.publish(self.availability_topic, "offline", qos=1,
                                retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        self._acks_open = False
        with self._lock:
            # Chunks paho had already read: a frame they complete is stored. Its last chunk
            # stays unacknowledged, so the broker sends it again after a restart, and it is
            # then recognised as stored. Other kinds come again from the broker (QoS 1).
            while (msg := self.messages.get(timeout=0)) is not None:
                if msg.topic.endswith("/frame"):
                    self.handle(msg)
            while self._pending and self._store(self._pending[0]):
                self._pending.popleft()
            note = ("not acknowledged to the broker, so the next start asks the node for it "
                    "again; recovered only if the node still holds it")
            for item in self._pending:
                self.counters["frames_lost_storage"] += 1
                log.error("LOST frame %d of node %s: not stored when the backend stopped "
                          "(%s); %s", item.frame.frame_id, item.frame.node, self.storage_error,
                          note)
            self._pending.clear()
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
            self._thread.join(10)

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, msg: mqtt.MQTTMessage) -> None:
        """Hand one message to the stage owning its topic; nothing a message holds can stop
        the loop."""
        self.counters["messages"] += 1
        if msg.topic == self.forget_topic:
            self.on_forget(msg.payload)
            return
        if self.ha and msg.topic == self.ha.status_topic:
            self.ha.on_status(msg.payload, self._known_nodes())
            return
        try:
            node, kind = parse_topic(self.prefix, msg.topic)
        except TopicError as e:
            if msg.topic.startswith(f"{self.prefix}/{BACKEND_LEVEL}/"):
                return  # our own availability, matched by <prefix>/+/availability
            self.counters["bad_topics"] += 1
            self._warn.warning("topic", "dropped message: %s", e)
            return
        if not msg.payload and kind in ("availability", "state"):
            return  # a retained message being cleared (`espcam forget`)
        try:
            if kind == "frame":
                self.on_chunk(node, msg.payload)
            elif kind == "availability":
                self.on_availability(node, msg.payload)
            elif kind == "state":
                self.on_state(node, msg.payload)
            elif kind == "ack":
                self.on_ack(node, msg.payload)
        except Exception:
            self.counters["errors"] += 1
            log.exception("unexpected error handling %s; carrying on", msg.topic)

    def _node(self, node: str) -> NodeView | None:
        """The node's view, made on its first valid message; None (and the message ignored)
        when `max_nodes` nodes are already tracked, so that made-up ids cannot grow memory."""
        view = self.nodes.get(node)
        if view is None:
            if len(self.nodes) >= self.settings.max_nodes:
                self.counters["refused_nodes"] += 1
                self._warn.warning("max_nodes", "ignoring node %s: already tracking "
                                   "max_nodes=%d nodes (raise the setting if they are real)",
                                   node, self.settings.max_nodes)
                return None
            view = self.nodes[node] = NodeView()
            self._first_seen(node)
        view.last_seen = time.time()
        return view

    def _first_seen(self, node: str) -> None:
        if node not in self.reports:
            self._report(node)
        if self.ha:
            self.ha.node_seen(node, self.nodes[node].state)

    def _known_nodes(self) -> dict[str, dict[str, Any] | None]:
        """Nodes of the index and of this run, with their last state document."""
        known: dict[str, dict[str, Any] | None] = {}
        try:
            known = {r["node"]: r["state"] for r in self.storage.nodes()}
        except Exception as e:  # an unreadable index must not stop the live nodes
            self._warn.warning("nodes", "cannot read nodes from the index: %s", e)
        for node, view in self.nodes.items():
            known[node] = view.state or known.get(node)
        return {n: s for n, s in known.items() if is_node_id(n)}

    # -- the backend's per-node report -----------------------------------------------------

    def _report(self, node: str, publish: bool = True) -> NodeReport:
        report = self.reports.get(node)
        if report is None:
            try:
                report = NodeReport.from_storage(self.storage.count(node),
                                                 self.storage.latest(node))
            except Exception as e:
                self._warn.warning("nodes", "cannot read node %s from the index: %s", node, e)
                report = NodeReport()
            self.reports[node] = report
        if publish:
            self._reports_due.add(node)
        return report

    def _publish_reports(self) -> None:
        for node in sorted(self._reports_due):
            report = self.reports.get(node)
            if report is not None:
                self.publish(discovery.report_topic(self.prefix, node), report.encode(node),
                             retain=True)
        self._reports_due.clear()

    def _lost(self, lost: list[Lost] | Lost | None) -> None:
        for item in lost if isinstance(lost, list) else [lost] if lost else []:
            self._report(item.node, publish=False).frames_lost += 1
            self._report(item.node)
            self._release(item.node, item.frame_id)

    def announce(self) -> None:
        """After (re)connecting: every known node's report and discovery."""
        known = self._known_nodes()
        for node in known:
            self._report(node)
        if self.ha:
            self.ha.announce_all(known)

    def on_chunk(self, node: str, payload: bytes) -> None:
        now = time.time()
        try:
            chunk = decode_chunk(payload)
        except ChunkError as e:
            self.counters["bad_chunks"] += 1
            self._warn.warning(f"chunk:{node}", "node %s: dropped malformed chunk: %s", node, e)
            return
        # Only a message that decodes makes a node known: junk under a new id creates no
        # state here and no Home Assistant device.
        if self._node(node) is None:
            return
        self._chunk_key = (node, chunk.frame_id)
        self._saw_frame(node, chunk.frame_id, chunk=True)
        if self._stored_already(node, chunk):
            self.counters["chunks"] += 1
            self.counters["duplicate_chunks"] += 1
            return
        try:
            # Evicted frames are logged and counted by the reassembler; counted per node here.
            frame, evicted = self.reassembler.add(node, chunk, now)
            self._lost(evicted)
        except FrameRejected as e:
            self._lost(e.evicted)
            if e.retry:
                self._warn.warning(f"crc:{node}", "%s", e)
            else:
                self._warn.error(f"lost-crc:{node}", "%s", e)
                self._count_lost(node, counted=True)
            return
        except ValueError as e:
            self._warn.warning(f"chunk:{node}", "node %s: dropped chunk: %s", node, e)
            return
        if frame is not None:
            self.on_frame(frame, now)

    def _stored_already(self, node: str, chunk: Chunk) -> bool:
        """The first chunk seen of a frame that is already stored (its last chunk sent again
        by the broker after a restart, a node's retransmission): a duplicate, not the start
        of a frame that would be asked for and then reported lost."""
        if self.reassembler.holds(node, chunk.frame_id) or self.reassembler.is_done(
                node, chunk.frame_id):
            return False
        try:
            stored = self.storage.has(node, chunk.frame_id, chunk.crc32)
        except sqlite3.Error:
            return False  # unknown: reassemble it; storing finds out
        if stored:
            self.reassembler.mark_done(node, chunk.frame_id, chunk.crc32)
        return stored

    def on_frame(self, frame: Frame, received_at: float) -> None:
        # Same id and same CRC: the same frame again. A re-used id (a node that lost its
        # flash numbers from 1 again) has another CRC and is stored as a new frame.
        try:
            stored = self.storage.has(frame.node, frame.frame_id, frame.crc32)
        except sqlite3.Error:
            stored = False  # the index cannot say; store() finds out, and retries if need be
        if stored:
            self.counters["duplicate_frames"] += 1
            log.info("node %s frame %d is already stored; duplicate ignored", frame.node,
                     frame.frame_id)
            return
        try:
            info = inspect_jpeg(frame.data, self.settings.max_pixels)
        except NotAJpeg as e:
            self.counters["too_many_pixels" if isinstance(e, TooManyPixels) else "not_jpeg"] += 1
            self._warn.error(f"jpeg:{frame.node}", "node %s frame %d rejected, not stored: %s",
                             frame.node, frame.frame_id, e)
            return
        self._store(_Pending(frame, info.width, info.height, received_at))

    def _count_lost(self, node: str, counted: bool = False) -> None:
        """A frame given up; `counted` when the reassembler has counted it already."""
        if not counted:
            self.counters["frames_lost"] += 1
        if node in self.nodes:
            self._report(node, publish=False).frames_lost += 1
            self._report(node)

    def _store(self, item: _Pending) -> bool:
        """Try to store a frame; True once it needs no more trying (stored, a duplicate or
        rejected for good), False if it waits for the disk (kept in `_pending`)."""
        f = item.frame
        t = f.meta.get("t")
        # A node without a set clock sends null, or the seconds since 1970 it believes in.
        captured = float(t) if isinstance(t, int | float) and 1e9 < t < 1e10 else None
        trigger = f.meta.get("trigger")
        trigger = trigger[:32] if isinstance(trigger, str) else None
        try:
            stored = self.storage.store(
                f.node, f.frame_id, f.data, crc=f.crc32, received_at=item.received_at,
                captured_at=captured, width=item.width, height=item.height, trigger=trigger,
            )
        except StorageError as e:
            self._storage_failed(item, e)
            return False
        except StorageRejected as e:
            # Retrying cannot help (the index says it clashes with a stored frame): a clear
            # line, counted lost, and the next frames are not held up behind it.
            self.counters["storage_rejected"] += 1
            log.error("LOST frame %d of node %s: REJECTED by storage, not stored: %s",
                      f.frame_id, f.node, e)
            self._count_lost(f.node)
            self._release(f.node, f.frame_id)
            return True
        if self.storage_error:
            log.warning("storage works again; %d frame(s) waiting", len(self._pending))
            self.storage_error = None
            self._status_due = 0.0
        self._release(f.node, f.frame_id)
        if stored is None:
            self.counters["duplicate_frames"] += 1
            return True
        self.counters["frames_stored"] += 1
        view = self.nodes.get(f.node)
        if view is not None:
            view.last_frame = f.frame_id
        newest = self._is_newest(stored)
        self._announce(stored, f.data, newest)
        try:
            count = self.storage.count(f.node)
        except Exception:
            count = self._report(f.node, publish=False).frames_stored + 1
        report = self._report(f.node, publish=False)
        if newest:
            report.stored(stored, count)
        else:
            report.frames_stored = count
        self._report(f.node)
        return True

    def _is_newest(self, stored: StoredFrame) -> bool:
        try:
            return self.storage.is_latest(stored.node, stored.path)
        except sqlite3.Error:
            return True  # as before there was this check: better a stale image than none

    def _storage_failed(self, item: _Pending, e: StorageError) -> None:
        self.counters["storage_errors"] += 1
        if self.storage_error is None:
            self._status_due = 0.0
        self.storage_error = str(e)
        log.error("STORAGE ERROR: %s; the frame is kept in memory and retried every %gs",
                  e, self.settings.retry_interval)
        if not any(p is item for p in self._pending):
            self._pending.append(item)
        while len(self._pending) > self.settings.max_pending_frames:
            dropped = self._pending.popleft()
            self.counters["frames_lost_storage"] += 1
            self._report(dropped.frame.node, publish=False).frames_lost += 1
            self._report(dropped.frame.node)
            self._release(dropped.frame.node, dropped.frame.frame_id)
            log.error("LOST frame %d of node %s: storage unavailable and %d frames already "
                      "waiting (max_pending_frames)", dropped.frame.frame_id, dropped.frame.node,
                      self.settings.max_pending_frames)
        self._next_retry = time.time() + self.settings.retry_interval

    def _announce(self, stored: StoredFrame, jpeg: bytes, newest: bool = True) -> None:
        if newest:  # a frame completing late must not replace a newer picture
            # QoS 0: the picture is a copy of a stored file, and the next frame replaces it.
            # At QoS 1 paho holds every JPEG until the broker acks it: 144 -> 97 MB peak RSS
            # in a backlog (docs/benchmarks.md).
            self.publish(topic(self.prefix, stored.node, "image"), jpeg, retain=True, qos=0)
        event = {
            "node": stored.node,
            "frame": stored.frame_id,
            "path": stored.path,
            "file": str(Path(self.storage.root, stored.path)),
            "bytes": stored.bytes,
            "width": stored.width,
            "height": stored.height,
            "trigger": stored.trigger,
            "captured_at": stored.captured_at,
            "received_at": stored.received_at,
            "crc32": stored.crc,
        }
        self.publish(topic(self.prefix, stored.node, "event"), json.dumps(event))
        log.info("stored node %s frame %d: %s (%d bytes, %dx%d)", stored.node,
                 stored.frame_id, stored.path, stored.bytes, stored.width or 0,
                 stored.height or 0)

    def on_availability(self, node: str, payload: bytes) -> None:
        value = payload.decode("utf-8", "replace")
        if value not in AVAILABILITY:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"avail:{node}", "node %s: ignored availability %r", node,
                               value[:40])
            return
        view = self._node(node)
        if view is None:
            return
        view.availability = value
        self._save_node(node, availability=value)

    def on_state(self, node: str, payload: bytes) -> None:
        try:
            if len(payload) > MAX_STATE_BYTES:
                raise ValueError(f"{len(payload)} bytes, more than {MAX_STATE_BYTES}")
            doc = json.loads(payload.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"state:{node}", "node %s: ignored state document: %s", node, e)
            return
        view = self._node(node)
        if view is None:
            return
        view.state = doc
        self._save_node(node, state=doc)
        if self.ha:
            self.ha.node_state(node, doc)
        frame_id = doc.get("frame")
        # null: the node has captured nothing since it was powered on; no frame to look for.
        if isinstance(frame_id, int) and not isinstance(frame_id, bool) and frame_id >= 0:
            if self._fresh_id_block(node, doc, frame_id):
                if node in self._highest:
                    log.info("node %s was powered off; its frame ids continue above %d (a "
                             "new block), which is not a frame", node, frame_id)
                self._saw_frame(node, frame_id)
            else:
                self._check_gap(node, frame_id)

    def _fresh_id_block(self, node: str, doc: dict[str, Any], frame_id: int) -> bool:
        """Nodes that report `"frame": <id>` before their first capture after a power-on name
        the start of their next block of reserved ids (docs/protocol.md, "Frame ids"): never a
        frame they sent, so not a gap. Recognised as a jump to a block boundary in a state
        published after a reset that was not a deep-sleep wake (which keeps the counter)."""
        return (frame_id % FRAME_ID_BLOCK == 0 and frame_id > self._highest.get(node, -1)
                and doc.get("reset_cause") != "deepsleep"
                and frame_id not in self._chunk_ids.get(node, ()))

    def _save_node(self, node: str, **kw: Any) -> None:
        try:
            self.storage.update_node(node, seen_at=time.time(), **kw)
        except Exception as e:  # a full disk must not stop frames from being handled
            self._warn.warning("nodes", "cannot record node %s in the index: %s", node, e)

    def on_ack(self, node: str, payload: bytes) -> None:
        try:
            ack = parse_ack(payload)
        except ValueError as e:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"ack:{node}", "node %s: ignored ack: %s", node, e)
            return
        if self._node(node) is None:
            return
        if ack.id is not None and ack.id in self._gap_requests:
            _, frame_id = self._gap_requests.pop(ack.id)
            if not ack.ok:
                log.warning("LOST frame %d of node %s: no chunk of it arrived and the node "
                            "cannot resend it: %s", frame_id, node, ack.error)
                self._count_lost(node)
            return
        if ack.id is None or ack.id not in self._resends:
            return  # someone else's command (the CLI, Home Assistant)
        _, frame_id = self._resends.pop(ack.id)
        if ack.ok:
            return
        self._lost(self.reassembler.give_up(node, frame_id, f"node cannot resend: {ack.error}"))

    # -- frames of which no chunk arrived --------------------------------------------------

    def _saw_frame(self, node: str, frame_id: int, chunk: bool = False) -> None:
        self._highest[node] = max(self._highest.get(node, frame_id), frame_id)
        if chunk:
            ids = self._chunk_ids.setdefault(node, deque(maxlen=RECENT_FRAME_IDS))
            if frame_id not in ids:
                ids.append(frame_id)

    def _check_gap(self, node: str, frame_id: int) -> None:
        """The state document names the node's last frame. If it is above every frame id seen
        from this node since the backend started tracking it, and no chunk of it arrived, ask
        for the whole frame, once: the node holds its last frame until the next capture."""
        tracked = node in self._highest
        newer = tracked and frame_id > self._highest[node]
        self._saw_frame(node, frame_id)
        if not newer or frame_id in self._chunk_ids.get(node, ()):
            return
        key = (node, frame_id)
        if key in self._gap_asked or self.reassembler.is_done(node, frame_id):
            return
        try:
            if self.storage.has(node, frame_id):
                return  # stored before this run started tracking the node's chunks
        except sqlite3.Error:
            pass
        self._gap_asked[key] = None
        while len(self._gap_asked) > MAX_GAP_REQUESTS:
            self._gap_asked.popitem(last=False)
        cmd_id = new_command_id("resend")
        self._gap_requests[cmd_id] = key
        while len(self._gap_requests) > MAX_GAP_REQUESTS:
            self._gap_requests.popitem(last=False)
        self.counters["gap_requests"] += 1
        log.info("node %s reports frame %d, of which no chunk arrived; asking for all of it",
                 node, frame_id)
        self.publish(topic(self.prefix, node, "cmd"),
                     encode_command(build_command("resend", cmd_id, frame=frame_id)))

    # -- forgetting a node -----------------------------------------------------------------

    def on_forget(self, payload: bytes) -> None:
        """`espcam forget`: {"id", "node", "delete_frames"} on <prefix>/_backend/forget."""
        try:
            req = json.loads(payload.decode("utf-8"))
            if not isinstance(req, dict) or not is_node_id(req.get("node")):
                raise ValueError("need a JSON object with a valid node id")
        except ValueError as e:
            self.counters["bad_messages"] += 1
            self._warn.warning("forget", "ignored forget request: %s", e)
            return
        node, delete = req["node"], req.get("delete_frames") is True
        ack: dict[str, Any] = {"id": req.get("id"), "cmd": "forget", "ok": True}
        try:
            deleted = self.forget(node, delete_frames=delete)
            ack["result"] = {"node": node, "frames_deleted": deleted}
        except Exception as e:
            log.exception("forgetting node %s failed", node)
            ack.update(ok=False, error=str(e))
        self.publish(backend_topic(self.prefix, "ack"), json.dumps(ack))

    def forget(self, node: str, delete_frames: bool = False) -> int:
        """Remove the node from Home Assistant and the live state (retained availability,
        state, image, report; the index's node row); its frames only if asked."""
        if self.ha:
            self.ha.forget(node)
        else:
            self.publish(discovery.discovery_topic(self.settings.ha_prefix, node), b"",
                         retain=True)
        for kind in ("availability", "state", "image"):
            self.publish(topic(self.prefix, node, kind), b"", retain=True)
        self.publish(discovery.report_topic(self.prefix, node), b"", retain=True)
        self._lost(self.reassembler.forget_node(node))
        for table in (self.nodes, self.reports, self._highest, self._chunk_ids):
            table.pop(node, None)
        self._reports_due.discard(node)
        deleted = self.storage.forget_node(node, delete_frames=delete_frames)
        log.info("forgot node %s%s", node,
                 f" and deleted its {deleted} frame(s)" if delete_frames else
                 " (its stored frames are kept)")
        return deleted

    # -- timers --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        requests, lost = self.reassembler.tick(now)  # lost ones are logged there
        self._lost(lost)
        for req in requests:
            self.request_resend(req)
        # Read once: _on_connect (paho's thread) sets _announce_due before `connected`, so with
        # one reading the status never goes out before the discovery of the same connection.
        connected = self.connected.is_set()
        if self._announce_due and connected:
            self._announce_due = False
            self.announce()
        if self._reports_due and connected:
            self._publish_reports()
        if self._pending and now >= self._next_retry:
            while self._pending:
                if not self._store(self._pending[0]):
                    break
                self._pending.popleft()
        if self.settings.retention_interval > 0 and now >= self._next_retention:
            # Not only when a frame is stored: a node that stopped sending keeps its old
            # frames otherwise.
            self._next_retention = now + self.settings.retention_interval
            self._apply_retention(now)
        if now >= self._status_due and connected:
            self.publish_status()
            self._status_due = now + STATUS_EVERY

    def _apply_retention(self, now: float) -> None:
        try:
            deleted = self.storage.apply_retention_all(now)
        except (OSError, sqlite3.Error) as e:
            self._warn.error("retention", "retention run failed: %s", e)
            return
        for node, n in deleted.items():
            if n and node in self.reports:
                try:
                    self.reports[node].frames_stored = self.storage.count(node)
                except sqlite3.Error:
                    continue
                self._report(node)

    def request_resend(self, req: ResendRequest) -> None:
        cmd_id = new_command_id("resend")
        try:
            doc = build_command("resend", cmd_id, frame=req.frame_id, chunks=req.chunks)
        except CommandError:
            doc = build_command("resend", cmd_id, frame=req.frame_id)  # too many: ask for all
        self._resends[cmd_id] = (req.node, req.frame_id)
        while len(self._resends) > 1000:
            self._resends.popitem(last=False)
        if req.whole:
            log.info("node %s frame %d: asking again for the whole frame (try %d)", req.node,
                     req.frame_id, req.attempt)
        else:
            log.info("node %s frame %d: asking again for %d missing chunk(s) (try %d)",
                     req.node, req.frame_id, len(req.chunks), req.attempt)
        self.publish(topic(self.prefix, req.node, "cmd"), encode_command(doc))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        counters = Counter(self.counters)
        counters.update(self.reassembler.counters)
        if self._oversize:
            counters["oversize_messages"] = self._oversize
        return {
            "storage": "ok" if self.storage_error is None else self.storage_error,
            "pending_frames": len(self._pending),
            "frames_in_flight": self.reassembler.frames_held,
            "bytes_in_flight": self.reassembler.bytes_held,
            "queued_messages": len(self.messages),
            "queued_bytes": self.messages.bytes,
            "nodes": len(self.nodes),
            "counters": dict(counters),
            "time": time.time(),
        }

    def publish_status(self) -> None:
        self.publish(backend_topic(self.prefix, "status"), json.dumps(self._status()),
                     retain=True)
