"""The backend service: one MQTT session, a loop over its messages, each handed to the stage
that owns its topic (chunks to reassembly then storage; availability, state and acks to the
node view). paho's network thread only queues messages; all work happens in `run`.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend.config import Settings
from backend.jpeg import NotAJpeg, inspect_jpeg
from backend.protocol import (
    AVAILABILITY,
    BACKEND_LEVEL,
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
from backend.reassembly import Frame, FrameRejected, Reassembler, ResendRequest
from backend.storage import Storage, StorageError, StoredFrame

log = logging.getLogger("espcam.backend")

TICK = 0.2  # how often timers (resends, storage retries) are looked at, seconds
STATUS_EVERY = 30.0
MAX_STATE_BYTES = 16 * 1024
QUEUE_SIZE = 10_000  # a full queue blocks paho's thread, which pushes back through TCP


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
    """One line per key every `every` seconds, so a flood of junk cannot flood the log."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger, self.every = logger, every
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.every:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        more = self._suppressed.pop(key, 0)
        suffix = f" ({more} similar suppressed)" if more else ""
        self.logger.warning(msg + suffix, *args)


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self.reassembler = Reassembler(settings.limits())
        self.storage = Storage(settings.data_dir, settings.retention())
        self.nodes: dict[str, NodeView] = {}
        self.counters: Counter[str] = Counter()
        self.storage_error: str | None = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue(QUEUE_SIZE)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._pending: deque[_Pending] = deque()
        self._next_retry = 0.0
        self._resends: OrderedDict[str, tuple[str, int]] = OrderedDict()
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
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls:
            client.tls_set(ca_certs=s.ca_file or None)
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    @property
    def availability_topic(self) -> str:
        return backend_topic(self.prefix, "availability")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.settings.broker, reason_code)
            return
        log.info("connected to %s (session present: %s)", self.settings.broker,
                 flags.session_present)
        # Subscribing again is harmless when the session survived and needed when it did not.
        client.subscribe([(f"{self.prefix}/+/{kind}", 1)
                          for kind in ("frame", "availability", "state", "ack")])
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        self._status_due = 0.0
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from %s (%s); reconnecting", self.settings.broker,
                        reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def publish(self, topic_name: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic_name, payload, qos=1, retain=retain)

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until `stop()`; reconnects by itself whenever the broker goes away."""
        s = self.settings
        log.info("espcam backend: broker %s, prefix %s, data in %s", s.broker, s.prefix,
                 self.storage.root)
        self.storage.reconcile()
        self.client.connect_async(s.host, s.port, s.keepalive)
        self.client.loop_start()
        try:
            while not self._stop.is_set():
                try:
                    msg = self.messages.get(timeout=TICK)
                except queue.Empty:
                    msg = None
                with self._lock:
                    if msg is not None:
                        self.handle(msg)
                    self.tick(time.time())
        finally:
            if self.client.is_connected():
                self.client.publish(self.availability_topic, "offline", qos=1,
                                    retain=True).wait_for_publish(5)
            self.client.disconnect()
            self.client.loop_stop()
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
        try:
            node, kind = parse_topic(self.prefix, msg.topic)
        except TopicError as e:
            if msg.topic.startswith(f"{self.prefix}/{BACKEND_LEVEL}/"):
                return  # our own availability, matched by <prefix>/+/availability
            self.counters["bad_topics"] += 1
            self._warn.warning("topic", "dropped message: %s", e)
            return
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

    def _node(self, node: str) -> NodeView:
        view = self.nodes.get(node)
        if view is None:
            view = self.nodes[node] = NodeView()
        view.last_seen = time.time()
        return view

    def on_chunk(self, node: str, payload: bytes) -> None:
        now = time.time()
        self._node(node)
        try:
            chunk = decode_chunk(payload)
        except ChunkError as e:
            self.counters["bad_chunks"] += 1
            self._warn.warning(f"chunk:{node}", "node %s: dropped malformed chunk: %s", node, e)
            return
        try:
            # Evicted frames are logged and counted by the reassembler; nothing else to do.
            frame, _evicted = self.reassembler.add(node, chunk, now)
        except FrameRejected as e:
            log.error("%s", e)
            return
        except ValueError as e:
            self._warn.warning(f"chunk:{node}", "node %s: dropped chunk: %s", node, e)
            return
        if frame is not None:
            self.on_frame(frame, now)

    def on_frame(self, frame: Frame, received_at: float) -> None:
        if self.storage.has(frame.node, frame.frame_id):
            self.counters["duplicate_frames"] += 1
            log.info("node %s frame %d is already stored; duplicate ignored", frame.node,
                     frame.frame_id)
            return
        try:
            info = inspect_jpeg(frame.data)
        except NotAJpeg as e:
            self.counters["not_jpeg"] += 1
            log.error("node %s frame %d rejected, not stored: %s", frame.node, frame.frame_id, e)
            return
        self._store(_Pending(frame, info.width, info.height, received_at))

    def _store(self, item: _Pending) -> bool:
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
        if self.storage_error:
            log.warning("storage works again; %d frame(s) waiting", len(self._pending))
            self.storage_error = None
            self._status_due = 0.0
        if stored is None:
            self.counters["duplicate_frames"] += 1
            return True
        self.counters["frames_stored"] += 1
        self._node(f.node).last_frame = f.frame_id
        self._announce(stored, f.data)
        return True

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
            log.error("LOST frame %d of node %s: storage unavailable and %d frames already "
                      "waiting (max_pending_frames)", dropped.frame.frame_id, dropped.frame.node,
                      self.settings.max_pending_frames)
        self._next_retry = time.time() + self.settings.retry_interval

    def _announce(self, stored: StoredFrame, jpeg: bytes) -> None:
        self.publish(topic(self.prefix, stored.node, "image"), jpeg, retain=True)
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
        self._node(node).availability = value
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
        self._node(node).state = doc
        self._save_node(node, state=doc)

    def _save_node(self, node: str, **kw: Any) -> None:
        try:
            self.storage.update_node(node, seen_at=time.time(), **kw)
        except Exception as e:  # a full disk must not stop frames from being handled
            self._warn.warning("nodes", "cannot record node %s in the index: %s", node, e)

    def on_ack(self, node: str, payload: bytes) -> None:
        self._node(node)
        try:
            ack = parse_ack(payload)
        except ValueError as e:
            self.counters["bad_messages"] += 1
            self._warn.warning(f"ack:{node}", "node %s: ignored ack: %s", node, e)
            return
        if ack.id is None or ack.id not in self._resends:
            return  # someone else's command (the CLI, Home Assistant)
        _, frame_id = self._resends.pop(ack.id)
        if ack.ok:
            return
        self.reassembler.give_up(node, frame_id, f"node cannot resend: {ack.error}")

    # -- timers --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        requests, _lost = self.reassembler.tick(now)  # lost ones are logged there
        for req in requests:
            self.request_resend(req)
        if self._pending and now >= self._next_retry:
            while self._pending:
                if not self._store(self._pending[0]):
                    break
                self._pending.popleft()
        if now >= self._status_due and self.connected.is_set():
            self.publish_status()
            self._status_due = now + STATUS_EVERY

    def request_resend(self, req: ResendRequest) -> None:
        cmd_id = new_command_id("resend")
        try:
            doc = build_command("resend", cmd_id, frame=req.frame_id, chunks=req.chunks)
        except CommandError:
            doc = build_command("resend", cmd_id, frame=req.frame_id)  # too many: ask for all
        self._resends[cmd_id] = (req.node, req.frame_id)
        while len(self._resends) > 1000:
            self._resends.popitem(last=False)
        log.info("node %s frame %d: asking again for %d missing chunk(s) (try %d)", req.node,
                 req.frame_id, len(req.chunks), req.attempt)
        self.publish(topic(self.prefix, req.node, "cmd"), encode_command(doc))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        counters = Counter(self.counters)
        counters.update(self.reassembler.counters)
        return {
            "storage": "ok" if self.storage_error is None else self.storage_error,
            "pending_frames": len(self._pending),
            "frames_in_flight": self.reassembler.frames_held,
            "bytes_in_flight": self.reassembler.bytes_held,
            "counters": dict(counters),
            "time": time.time(),
        }

    def publish_status(self) -> None:
        self.publish(backend_topic(self.prefix, "status"), json.dumps(self._status()),
                     retain=True)
