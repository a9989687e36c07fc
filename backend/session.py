"""A short MQTT session for one-shot commands (`espcam forget`, `espcam health`): connect with
the configured credentials, subscribe, read messages with a deadline."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend.commands import BrokerUnreachable
from espcam.backend.config import Settings
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class Session:
    def __init__(self, settings: Settings, tag: str) -> None:
        self.s = settings
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"espcam-{tag}-{secrets.token_hex(4)}",
                                  clean_session=True, protocol=mqtt.MQTTv311)
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password or None)
        if settings.tls:
            self.client.tls_set(ca_certs=settings.ca_file or None)
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
