"""The backend service: one MQTT session, a loop over its messages, each handed to the stage
that owns its topic (chunks to reassembly then storage; availability, state and acks to the
node view). paho's network thread only queues messages; all work happens in `run`.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from backend import discovery
from backend.config import Settings
from backend.homeassistant import HomeAssistant
from backend.jpeg import NotAJpeg, inspect_jpeg
from backend.names import is_node_id
from backend.nodereport import NodeReport
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
from backend.reassembly import Frame, FrameRejected, Lost, Reassembler, ResendRequest
from backend.storage import Storage, StorageError, StoredFrame

log = logging.getLogger("espcam.backend")

TICK = 0.2  # how often timers (resends, storage retries) are looked at, seconds
STATUS_EVERY = 30.0
MAX_STATE_BYTES = 16 * 1024
QUEUE_SIZE = 10_000  # a full queue blocks paho's thread, which pushes back through TCP
RECENT_FRAME_IDS = 256  # per node, frame ids of which a chunk arrived (gap detection)
MAX_GAP_REQUESTS = 1000  # frames asked for because the state named them; oldest forgotten


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # PUBACKs and small messages would wait out Nagle's algorithm against the broker's
    # delayed ACK (about 40 ms each): p50 latency chunk-to-disk 40 ms -> 4 ms (bench/).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


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
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            # QoS 1 messages are acknowledged only once handled (the last chunk of a frame:
            # once the frame is stored). A backend killed with a backlog in its queue gets
            # those messages again from the broker instead of losing them.
            manual_ack=True,
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
        client.on_socket_open = _no_delay
        return client

    @property
    def availability_topic(self) -> str:
        return backend_topic(self.prefix, "availability")

    @property
    def forget_topic(self) -> str:
        return backend_topic(self.prefix, "forget")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
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
                        try:
                            self.handle(msg)
                        finally:
                            if msg.qos:
                                self.client.ack(msg.mid, msg.qos)
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

    def _node(self, node: str) -> NodeView:
        view = self.nodes.get(node)
        if view is None:
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

    def announce(self) -> None:
        """After (re)connecting: every known node's report and discovery."""
        known = self._known_nodes()
        for node in known:
            self._report(node)
        if self.ha:
            self.ha.announce_all(known)

    def on_chunk(self, node: str, payload: bytes) -> None:
        now = time.time()
        self._node(node)
        try:
            chunk = decode_chunk(payload)
        except ChunkError as e:
            self.counters["bad_chunks"] += 1
            self._warn.warning(f"chunk:{node}", "node %s: dropped malformed chunk: %s", node, e)
            return
        self._saw_frame(node, chunk.frame_id, chunk=True)
        try:
            # Evicted frames are logged and counted by the reassembler; counted per node here.
            frame, evicted = self.reassembler.add(node, chunk, now)
            self._lost(evicted)
        except FrameRejected as e:
            log.error("%s", e)
            return
        except ValueError as e:
            self._warn.warning(f"chunk:{node}", "node %s: dropped chunk: %s", node, e)
            return
        if frame is not None:
            self.on_frame(frame, now)

    def on_frame(self, frame: Frame, received_at: float) -> None:
        # Same id and same CRC: the same frame again. A re-used id (a node that lost its
        # flash numbers from 1 again) has another CRC and is stored as a new frame.
        if self.storage.has(frame.node, frame.frame_id, frame.crc32):
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
        try:
            count = self.storage.count(f.node)
        except Exception:
            count = self._report(f.node, publish=False).frames_stored + 1
        self._report(f.node, publish=False).stored(stored, count)
        self._report(f.node)
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
            self._report(dropped.frame.node, publish=False).frames_lost += 1
            self._report(dropped.frame.node)
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
        view = self._node(node)
        view.availability = value
        self._save_node(node, availability=value)
        if value == "offline":  # power loss or crash: the flash LED is off after the reset
            self._set_flash(node, "off")

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
        previous, view.state = view.state, doc
        self._save_node(node, state=doc)
        uptime, before = doc.get("uptime"), (previous or {}).get("uptime")
        if isinstance(uptime, int | float) and isinstance(before, int | float) and uptime < before:
            self._set_flash(node, "off")  # the node was reset since its last state document
        if self.ha:
            self.ha.node_state(node, doc)
        frame_id = doc.get("frame")
        if isinstance(frame_id, int) and not isinstance(frame_id, bool) and frame_id >= 0:
            self._check_gap(node, frame_id)

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
        if ack.ok and ack.cmd == "flash" and isinstance(ack.result, dict):
            if ack.result.get("flash") in ("on", "off"):
                self._set_flash(node, ack.result["flash"])
        if ack.id is not None and ack.id in self._gap_requests:
            _, frame_id = self._gap_requests.pop(ack.id)
            if not ack.ok:
                self.counters["frames_lost"] += 1
                log.warning("LOST frame %d of node %s: no chunk of it arrived and the node "
                            "cannot resend it: %s", frame_id, node, ack.error)
                self._report(node, publish=False).frames_lost += 1
                self._report(node)
            return
        if ack.id is None or ack.id not in self._resends:
            return  # someone else's command (the CLI, Home Assistant)
        _, frame_id = self._resends.pop(ack.id)
        if ack.ok:
            return
        self._lost(self.reassembler.give_up(node, frame_id, f"node cannot resend: {ack.error}"))

    def _set_flash(self, node: str, state: str) -> None:
        report = self._report(node, publish=False)
        if report.flash != state:
            report.flash = state
            self._report(node)

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
        if self._announce_due and self.connected.is_set():
            self._announce_due = False
            self.announce()
        if self._reports_due and self.connected.is_set():
            self._publish_reports()
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
