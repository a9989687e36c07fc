"""MQTT sessions. `make_client` is the one place a paho client is made (MQTT 3.1.1, client id,
credentials, TLS, last will, TCP_NODELAY): the backend, the espcam commands, the board tools,
the tests and the benchmarks all use it. `Session` is a short one for one-shot commands
(`espcam forget`, `espcam health`): connect, subscribe, read messages with a deadline."""

from __future__ import annotations

import queue
import secrets
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend.config import Settings
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class BrokerUnreachable(ConnectionError):
    pass


# A dead peer is noticed by TCP itself: probes after 30 s of silence, every 10 s, 6 of them;
# data unacknowledged for 120 s ends the connection. The kernel answers probes whether or not
# the program reads, so a backend that pauses its intake (back-pressure) stays connected.
_TCP_KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6),
                  ("TCP_USER_TIMEOUT", 120_000))


def _socket_options(client: mqtt.Client, userdata: Any, sock: socket.socket | Any) -> None:
    try:
        # PUBACKs and small messages would wait out Nagle's algorithm against the broker's
        # delayed ACK (about 40 ms each): p50 latency chunk-to-disk 40 ms -> 4 ms (bench/).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _TCP_KEEPALIVE:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a test's stand-in); defaults then


def make_client(client_id: str, *, username: str = "", password: str = "", tls: bool = False,
                ca_file: str = "", clean_session: bool = True,
                will: tuple[str, bytes | str] | None = None,
                manual_ack: bool = False) -> mqtt.Client:
    """A paho client, not yet connected. `will`: (topic, payload), sent retained at QoS 1."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean_session, protocol=mqtt.MQTTv311,
                         manual_ack=manual_ack)
    if username:
        client.username_pw_set(username, password or None)
    if tls:
        client.tls_set(ca_certs=ca_file or None)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.on_socket_open = _socket_options
    return client


def client_for(settings: Settings, client_id: str, **kw: Any) -> mqtt.Client:
    """make_client with the credentials and TLS of the settings."""
    return make_client(client_id, username=settings.username, password=settings.password,
                       tls=settings.tls, ca_file=settings.ca_file, **kw)


class Session:
    def __init__(self, settings: Settings, tag: str) -> None:
        self.s = settings
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self.client = client_for(settings, f"espcam-{tag}-{secrets.token_hex(4)}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.inbox.put(m)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        self._connected.set()

    def __enter__(self) -> Session:
        try:
            self.client.connect(self.s.host, self.s.port, 30)
        except OSError as e:
            raise BrokerUnreachable(f"cannot reach broker {self.s.broker}: {e}") from None
        self.client.loop_start()
        if not self._connected.wait(self.s.command_timeout) or self._refused:
            self.client.loop_stop()
            raise BrokerUnreachable(
                f"broker {self.s.broker} refused the connection: {self._refused}"
                if self._refused else f"no answer from broker {self.s.broker}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, *topics: str) -> None:
        self._subscribed.clear()
        self.client.subscribe([(t, 1) for t in topics])
        self._subscribed.wait(self.s.command_timeout)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(
            self.s.command_timeout)

    def next(self, deadline: float) -> mqtt.MQTTMessage | None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return self.inbox.get(timeout=left)
        except queue.Empty:
            return None
