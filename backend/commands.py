"""Sending one command to a node and finding out what became of it: done, refused, queued
(node asleep or offline, the broker holds the command until it wakes) or no answer."""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend.config import Settings
from espcam.backend.documents import encode_command, parse_ack
from espcam.backend.protocol import BACKEND_LEVEL, topic
from espcam.backend.ratelog import printable
from espcam.backend.session import BrokerUnreachable, client_for
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class Outcome(Enum):
    DONE = "done"
    REFUSED = "refused"
    QUEUED = "queued"
    NO_ANSWER = "no answer"


@dataclass
class Result:
    outcome: Outcome
    message: str
    ack_result: Any = None
    state: dict[str, Any] | None = None
    event: dict[str, Any] | None = None


class CommandClient:
    """A short-lived MQTT session (clean, random client id) for one command."""

    def __init__(self, settings: Settings, node: str) -> None:
        self.s, self.node, self.prefix = settings, node, settings.prefix
        self.client_id = f"espcam-cli-{secrets.token_hex(4)}"
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.availability: str | None = None
        self.state: dict[str, Any] | None = None
        self.events: list[bytes] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self.client = client_for(settings, self.client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        self._connected.set()

    def t(self, kind: str) -> str:
        return topic(self.prefix, self.node, kind)

    def __enter__(self) -> CommandClient:
        timeout = self.s.command_timeout
        try:
            self.client.connect(self.s.host, self.s.port, 30)
        except OSError as e:
            raise BrokerUnreachable(f"cannot reach broker {self.s.broker}: {e}") from None
        self.client.loop_start()
        if not self._connected.wait(timeout) or self._refused:
            self.client.loop_stop()
            raise BrokerUnreachable(
                f"broker {self.s.broker} refused the connection: {self._refused}"
                if self._refused else f"no answer from broker {self.s.broker}")
        # Retained availability and state come right after SUBACK; a message to ourselves sent
        # afterwards arrives after them, which tells us we have seen them all.
        marker = f"{self.prefix}/{BACKEND_LEVEL}/cli/{self.client_id}"
        kinds = ("ack", "availability", "state", "event")
        self.client.subscribe([(self.t(k), 1) for k in kinds] + [(marker, 1)])
        self.client.publish(marker, b"", qos=1)
        self._wait_for(lambda t, p: t == marker, time.monotonic() + timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _wait_for(self, match: Callable[[str, bytes], bool],
                  deadline: float) -> tuple[str, bytes] | None:
        """Read messages until one matches; keep availability and state current meanwhile."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                t, payload = self.inbox.get(timeout=left)
            except queue.Empty:
                return None
            if t == self.t("event"):
                # Kept: the node publishes a frame before acking the capture, so the backend's
                # event for it often arrives before the ack we are waiting for.
                self.events.append(payload)
            elif t == self.t("availability"):
                self.availability = payload.decode("utf-8", "replace")
            elif t == self.t("state"):
                try:
                    self.state = json.loads(payload)
                except ValueError:
                    pass
            if match(t, payload):
                return t, payload

    def send(self, doc: dict[str, Any], wait_frame: bool = False) -> Result:
        self.client.publish(self.t("cmd"), encode_command(doc), qos=1).wait_for_publish(
            self.s.command_timeout)
        if self.availability in ("sleeping", "offline"):
            return Result(Outcome.QUEUED, f"queued: node {self.node} is {self.availability}; "
                          "the broker keeps the command and the node runs it when it wakes")
        deadline = time.monotonic() + self.s.command_timeout

        def is_answer(t: str, payload: bytes) -> bool:
            if t == self.t("availability") and self.availability in ("sleeping", "offline"):
                return True
            if t != self.t("ack"):
                return False
            try:
                return parse_ack(payload).id == doc["id"]
            except ValueError:
                return False

        got = self._wait_for(is_answer, deadline)
        if got is None:
            seen = "" if self.availability else \
                " (it has never announced itself on this broker, so nothing is queued for it)"
            return Result(Outcome.NO_ANSWER, f"no answer from node {self.node} within "
                          f"{self.s.command_timeout:g}s{seen}")
        if got[0] == self.t("availability"):
            return Result(Outcome.QUEUED, f"queued: node {self.node} went {self.availability} "
                          "before answering; it runs the command when it wakes")
        ack = parse_ack(got[1])
        if not ack.ok:
            return Result(Outcome.REFUSED, f"refused: {printable(ack.error, 500)}",
                          state=self.state)
        result = Result(Outcome.DONE, f"done: {doc['cmd']} {json.dumps(ack.result)}",
                        ack_result=ack.result, state=self.state)
        if wait_frame and isinstance(ack.result, dict) and "frame" in ack.result:
            frame = ack.result["frame"]

            def is_event(t: str, payload: bytes) -> bool:
                if t != self.t("event"):
                    return False
                try:
                    return json.loads(payload).get("frame") == frame
                except (ValueError, AttributeError):
                    return False

            early = [p for p in self.events if is_event(self.t("event"), p)]
            got = (self.t("event"), early[0]) if early else self._wait_for(
                is_event, time.monotonic() + self.s.command_timeout)
            if got is None:
                return Result(Outcome.NO_ANSWER, f"node {self.node} captured frame {frame}, but "
                              f"it was not stored within {self.s.command_timeout:g}s (is "
                              "`espcam serve` running?)", ack_result=ack.result)
            result.event = json.loads(got[1])
            result.message = f"done: frame {frame} stored at {result.event.get('file')}"
        return result
