"""The backend's connection to the broker: its one MQTT session, and the inbox through which
everything reaches the loop in subscriber.py (messages from paho's thread, results from the
store workers).

The session is persistent (fixed client id, clean_session false): the broker queues chunks
while the backend is away. QoS 1 messages are acknowledged by hand, and a frame's (its last
chunk) only once the frame is stored or given up, so a backend killed with frames in memory
gets those messages again from the broker after a restart (docs/backend.md, "What survives a
crash"). Ready means subscribed: until the broker has granted the subscriptions (or says it
kept them, with the session), a chunk published reaches no one, so neither the loop nor
`espcam health` call the backend ready.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend.config import Settings
from espcam.backend.protocol import MAX_MESSAGE_BYTES
from espcam.backend.ratelog import RateLimitedLog
from espcam.backend.session import client_for
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("espcam.backend")

MAX_HELD_ACKS = 64  # per frame; a real node sends one QoS 1 chunk per (re)transmission


class Inbox:
    """Messages from paho's thread and results from the workers, to the loop, in order.

    Messages are bounded by count and by bytes: a full inbox makes paho's thread wait, which
    stops it reading the socket; the broker keeps the rest and TCP pushes back. The session
    has no MQTT keepalive (config.py), so a long wait is not taken for a dead backend. One
    message is always let in, however large, so a single big one cannot wedge it. Results
    are not bounded here: the lanes that make them are."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self._msgs: deque[mqtt.MQTTMessage] = deque()
        self._results: deque[Any] = deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, msg: mqtt.MQTTMessage) -> None:
        size = len(msg.payload)
        with self._cond:
            while not self._closed and self._msgs and (
                    len(self._msgs) >= self.max_count or self._bytes + size > self.max_bytes):
                self._cond.wait()
            self._msgs.append(msg)
            self._bytes += size
            self._cond.notify_all()

    def put_result(self, result: Any) -> None:
        with self._cond:
            self._results.append(result)
            self._cond.notify_all()

    def get(self, timeout: float, results_only: bool = False) -> tuple[str, Any] | None:
        """("result", r) before ("message", m): a stored frame is announced before more chunks
        are taken; None after `timeout` with nothing."""
        with self._cond:
            if not self._results and (results_only or not self._msgs):
                self._cond.wait(timeout)
            if self._results:
                return "result", self._results.popleft()
            if results_only or not self._msgs:
                return None
            msg = self._msgs.popleft()
            self._bytes -= len(msg.payload)
            self._cond.notify_all()
            return "message", msg

    def close(self) -> None:
        """Stop blocking put(): the loop no longer empties the inbox (shutting down), and
        paho's thread must be able to finish so that the client can disconnect."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._msgs)


class Connection:
    def __init__(self, settings: Settings, inbox: Inbox, topics: Iterable[str],
                 will: tuple[str, str], warn: RateLimitedLog) -> None:
        self.settings, self.inbox, self._warn = settings, inbox, warn
        self.topics = list(topics)
        self.will_topic = will[0]
        self.ready = threading.Event()  # subscribed, on the current connection
        self.connections = 0  # connections made, so the loop can tell a new one
        self.oversize = 0  # counted in paho's thread
        self._sub_mid: int | None = None
        self._held: dict[Any, set[tuple[int, int]]] = {}
        self._acks_open = True
        self.client = client_for(settings, settings.client_id, clean_session=False,
                                 manual_ack=True, will=will)
        self.client.reconnect_delay_set(1, 30)
        # No window on our QoS 1 publishes: a publish past paho's window (20 by default) waits
        # while acks queued after it go out first, and a frame's event must reach the broker
        # before the ack of its last chunk (frames.py, settle). paho holds each QoS 1 message
        # until the broker acks it either way, so this costs no memory.
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- paho's thread ---------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.settings.broker, reason_code)
            return
        log.info("connected to %s (session present: %s)", self.settings.broker,
                 flags.session_present)
        # Subscribing again is harmless when the session survived and needed when it did not.
        _, self._sub_mid = client.subscribe([(t, 1) for t in self.topics])
        if flags.session_present:
            # The broker kept this session's subscriptions, so chunks reach the backend already;
            # its SUBACK may wait behind thousands of messages queued while it was away, and
            # must not hold readiness (and `online`) back until they are all read.
            self._now_ready(client)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Properties | None) -> None:
        if mid != self._sub_mid:
            return
        refused = [t for t, rc in zip(self.topics, reason_codes, strict=False) if rc.is_failure]
        if refused:
            # Under an ACL that does not grant them; serving anyway would look healthy and
            # receive nothing, so say which, loudly, and stay not ready.
            log.error("broker %s refused the subscriptions %s: check the backend's broker user "
                      "and the ACL", self.settings.broker, ", ".join(refused))
            self.ready.clear()
            return
        if not self.ready.is_set():
            self._now_ready(client)

    def _now_ready(self, client: mqtt.Client) -> None:
        client.publish(self.will_topic, "online", qos=1, retain=True)
        self.connections += 1
        self.ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any,
                       flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self.ready.clear()
        if self._acks_open:
            log.warning("disconnected from %s (%s); reconnecting", self.settings.broker,
                        reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > MAX_MESSAGE_BYTES:
            # Larger than any valid message: never queued, so junk cannot take the inbox's
            # memory. Acknowledged, or the broker would send it again.
            self.oversize += 1
            self._warn.warning("oversize", "dropped a message of %d bytes on %s: larger than "
                               "any valid message (%d bytes)", len(msg.payload), msg.topic[:80],
                               MAX_MESSAGE_BYTES)
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        self.inbox.put(msg)

    # -- the loop's thread -----------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.client.connect_async(s.host, s.port, s.keepalive)
        self.client.loop_start()

    def publish(self, topic_name: str, payload: bytes | str, retain: bool = False,
                qos: int = 1) -> None:
        self.client.publish(topic_name, payload, qos=qos, retain=retain)

    def settle(self, msg: mqtt.MQTTMessage, hold_for: Any = None) -> None:
        """A handled message: acknowledged now, or (`hold_for`, a frame still open) when
        `release(hold_for)` says the frame is stored or given up."""
        if not msg.qos:
            return
        if hold_for is not None:
            held = self._held.setdefault(hold_for, set())
            if len(held) < MAX_HELD_ACKS:
                held.add((msg.mid, msg.qos))
                return
        self._ack(msg.mid, msg.qos)

    def release(self, key: Any) -> None:
        for mid, qos in self._held.pop(key, ()):
            self._ack(mid, qos)

    def _ack(self, mid: int, qos: int) -> None:
        if self._acks_open:
            self.client.ack(mid, qos)

    def stop(self) -> None:
        """Say goodbye (`offline`, retained) and disconnect. Messages held unacknowledged stay
        so: the broker hands them to the next start."""
        self.inbox.close()  # paho's thread may be waiting for room
        if self.client.is_connected():
            self.client.publish(self.will_topic, "offline", qos=1,
                                retain=True).wait_for_publish(5)
        self._acks_open = False
        self.client.disconnect()
        self.client.loop_stop()
