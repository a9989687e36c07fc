"""A light espcam node in CPython: speaks protocol v1 (docs/protocol.md) over paho-mqtt.

For the backend's tests and for benchmarks, where a MicroPython node would be slow to start.
Chunks come from the protocol's one encoder (espcam.backend.protocol.encode_chunks), which the
shared vectors check byte for byte, as they check the node's.
It can misbehave on purpose: skip chunks, corrupt chunks, refuse commands.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from espcam.backend.protocol import encode_chunks
from espcam.backend.session import make_client  # noqa: E402
from PIL import Image


def make_jpeg(width: int = 160, height: int = 120, seed: int = 0, quality: int = 80) -> bytes:
    """A JPEG of noise, so sizes are realistic and every seed gives different bytes."""
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rnd.randbytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def many_scans(n: int) -> bytes:
    """A progressive JPEG whose last scan is repeated `n` times: a decoder works through every
    one of them (5000 took 50 s to check before scans were counted)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 48), os.urandom(64 * 48 * 3)).save(
        buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * n + b"\xff\xd9"


class LightNode:
    def __init__(
        self,
        host: str,
        port: int,
        node_id: str,
        prefix: str = "espcam",
        chunk_size: int = 1024,
        first_frame_id: int = 1,
        hold: int = 1,
        proto: int = 1,
        confirm_timeout: float = 5.0,
    ) -> None:
        """`hold`: how many of its latest frames the node can resend (a version 1 node: 1).
        `proto` 2: a version 2 node, which keeps every frame until the backend confirms it
        (up to `hold` frames, dropping the oldest with a `dropped` message past that), and
        sends what it holds again after each reconnection, and whatever stays unconfirmed
        `confirm_timeout` seconds after it was sent."""
        self.host, self.port, self.node, self.prefix = host, port, node_id, prefix
        self.chunk_size = chunk_size
        self.next_frame_id = first_frame_id
        self.settings: dict[str, Any] = {
            "interval": 0, "frame_size": "QQVGA", "quality": 80, "flash_on_capture": False,
            "sleep_interval": 0, "awake": 5, "motion_cooldown": 10, "motion": False,
        }
        self.commands: list[dict[str, Any]] = []
        self.refuse: dict[str, str] = {}  # cmd -> error text to answer with
        self.capture_source: Callable[[int], bytes] = lambda fid: make_jpeg(seed=fid)
        self.hold = hold
        self.proto = proto
        self.confirmed: dict[int, str] = {}  # frame id -> "stored" / "lost", from `confirm`
        self.dropped_sent: list[dict[str, Any]] = []
        self.confirm_timeout = confirm_timeout
        self._sent_at: dict[int, float] = {}
        self._connections = 0
        self._stopped = threading.Event()
        # The latest `hold` frames' chunks, for resends: frame id -> chunks.
        self.history: OrderedDict[int, list[bytes]] = OrderedDict()
        # Merged over the state document, e.g. {"frame": None, "reset_cause": "power_on"}.
        self.state_overrides: dict[str, Any] = {}
        self.resend_requests: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = make_client(node_id, clean_session=False,
                                  will=(self.t("availability"), "offline"))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def t(self, kind: str) -> str:
        return f"{self.prefix}/{self.node}/{kind}"

    # -- session -------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> LightNode:
        self.client.connect(self.host, self.port, 60)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"light node {self.node} could not connect")
        if self.proto >= 2:
            self._stopped.clear()
            threading.Thread(target=self._resend_timer, daemon=True).start()
        return self

    def _resend_timer(self) -> None:
        while not self._stopped.wait(0.5):
            now = time.monotonic()
            with self._lock:
                due = [f for f in self.history if now - self._sent_at.get(f, now)
                       >= self.confirm_timeout]
            if due and self.client.is_connected():
                self.resend_unconfirmed(due)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        client.subscribe(self.t("cmd"), qos=1)
        if self.proto >= 2:
            client.subscribe(self.t("confirm"), qos=1)
        client.publish(self.t("availability"), "online", qos=1, retain=True)
        self.publish_state()
        self._connections += 1
        if self.proto >= 2 and self._connections > 1:
            # As a version 2 node: what it holds goes again, once the confirmations waiting
            # for it have come in.
            threading.Timer(1.0, self.resend_unconfirmed).start()
        self.connected.set()

    def resend_unconfirmed(self, only: list[int] | None = None) -> int:
        """Send held frames again (flags bit 1), all or `only`; returns how many."""
        with self._lock:
            held = [(f, c) for f, c in self.history.items() if only is None or f in only]
            for f, _ in held:
                self._sent_at[f] = time.monotonic()
        for _, chunks in held:
            for n, c in enumerate(chunks):
                b = bytearray(c)
                b[3] |= 2
                self.client.publish(self.t("frame"), bytes(b),
                                    qos=1 if n == len(chunks) - 1 else 0)
        return len(held)

    def _on_confirm(self, payload: bytes) -> None:
        doc = json.loads(payload) if payload else {}
        with self._lock:
            for verdict in ("stored", "lost"):
                for fid in doc.get(verdict, []):
                    self.confirmed[fid] = verdict
                    self.history.pop(fid, None)

    @property
    def held(self) -> tuple[int, list[bytes]] | None:
        """The last frame's id and chunks (what a real node can resend), or None."""
        if not self.history:
            return None
        fid = next(reversed(self.history))
        return fid, self.history[fid]

    @held.setter
    def held(self, value: tuple[int, list[bytes]] | None) -> None:
        with self._lock:
            if value is None:
                self.history.clear()
                return
            self.history[value[0]] = value[1]
            self.history.move_to_end(value[0])
            gone = []
            while len(self.history) > self.hold:
                gone.append(self.history.popitem(last=False)[0])
        if gone and self.proto >= 2:
            self.drop(gone, "spool full")

    def drop(self, frame_ids: list[int], reason: str) -> None:
        """Say that these frames are no longer kept (`dropped`, version 2)."""
        doc = {"frames": frame_ids, "reason": reason}
        self.dropped_sent.append(doc)
        self.client.publish(self.t("dropped"), json.dumps(doc), qos=1)

    def state_doc(self) -> dict[str, Any]:
        return {"proto": self.proto, "node": self.node, "app": "lightnode", "fw": "cpython",
                "driver": "fake", "frame": self.next_frame_id - 1, "camera": "ok",
                "reset_cause": "soft", "chunk_size": self.chunk_size, "sleep_until": None,
                "settings": dict(self.settings)} | self.state_overrides

    def publish_state(self) -> None:
        self.client.publish(self.t("state"), json.dumps(self.state_doc()), qos=1, retain=True)

    def sleep(self) -> None:
        """Announce `sleeping` and disconnect cleanly, as a node does before deep sleep."""
        self.publish_state()
        self.client.publish(self.t("availability"), "sleeping", qos=1,
                            retain=True).wait_for_publish(5)
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    # -- frames --------------------------------------------------------------------------

    def publish_frame(
        self,
        jpeg: bytes,
        frame_id: int | None = None,
        *,
        skip: Iterable[int] = (),
        corrupt: Iterable[int] = (),
        meta: dict[str, Any] | None = None,
        trigger: str = "interval",
        wait: bool = True,
        corrupt_held: bool = False,
    ) -> int:
        """Publish one frame as chunks (QoS 0, the last at QoS 1); returns its frame id.
        `skip` chunks are not sent, `corrupt` chunks have one payload byte flipped: on the way
        only, or also in what the node holds for resends (`corrupt_held`, a bad buffer)."""
        with self._lock:
            if frame_id is None:
                frame_id = self.next_frame_id
            self.next_frame_id = max(self.next_frame_id, frame_id + 1)
        if meta is None:
            meta = {"t": time.time(), "up": 1000, "trigger": trigger, "fs": "QQVGA", "q": 80,
                    "wake": "none"}
        chunks = encode_chunks(jpeg, frame_id, self.chunk_size, meta, version=self.proto)
        skip, corrupt = set(skip), set(corrupt)
        sent = []
        for i, c in enumerate(chunks):
            if i in corrupt:
                b = bytearray(c)
                b[-1] ^= 0xFF
                c = bytes(b)
            sent.append(c)
        self.held = (frame_id, sent if corrupt_held else chunks)
        self._sent_at[frame_id] = time.monotonic()
        info = None
        for i, c in enumerate(sent):
            if i in skip:
                continue
            info = self.client.publish(self.t("frame"), c, qos=1 if i == len(chunks) - 1 else 0)
        if wait and info is not None and info.mid:
            info.wait_for_publish(10)
        return frame_id

    # -- commands ------------------------------------------------------------------------

    def _ack(self, cmd_id: Any, cmd: Any, ok: bool, result: Any = None, error: str = "") -> None:
        doc: dict[str, Any] = {"id": cmd_id, "cmd": cmd, "ok": ok}
        if ok:
            doc["result"] = result
        else:
            doc["error"] = error
        self.client.publish(self.t("ack"), json.dumps(doc), qos=1)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.t("confirm"):
            self._on_confirm(msg.payload)
            return
        try:
            doc = json.loads(msg.payload)
            if not isinstance(doc, dict):
                raise ValueError
        except ValueError:
            self._ack(None, None, False, error="command is not a JSON object")
            return
        self.commands.append(doc)
        cmd_id, cmd = doc.get("id"), doc.get("cmd")
        if cmd in self.refuse:
            self._ack(cmd_id, cmd, False, error=self.refuse[cmd])
        elif cmd == "resend":
            self.resend_requests.append(doc)
            self._resend(cmd_id, doc)
        elif cmd == "capture":
            fid = self.next_frame_id
            self.publish_frame(self.capture_source(fid), fid, trigger="command", wait=False,
                               meta={"t": time.time(), "trigger": "command", "cmd": cmd_id})
            self._ack(cmd_id, cmd, True, {"frame": fid})
        elif cmd == "flash":
            state = doc.get("state")
            if state not in ("on", "off", "pulse"):
                self._ack(cmd_id, cmd, False, error="state must be one of on, off, pulse")
            else:
                self._ack(cmd_id, cmd, True, {"flash": "on" if state == "on" else "off"})
        elif cmd == "config":
            settings = doc.get("set")
            if not isinstance(settings, dict) or set(settings) - set(self.settings):
                self._ack(cmd_id, cmd, False, error="unknown setting")
            else:
                self.settings.update(settings)
                self.publish_state()
                self._ack(cmd_id, cmd, True, {"settings": dict(self.settings)})
        elif cmd == "status":
            self.publish_state()
            self._ack(cmd_id, cmd, True, {})
        elif cmd in ("sleep", "reboot"):
            self._ack(cmd_id, cmd, True, {"sleep": doc.get("seconds")} if cmd == "sleep" else {})
        else:
            self._ack(cmd_id, cmd, False, error=f"unknown command {cmd!r}")

    def _resend(self, cmd_id: Any, doc: dict[str, Any]) -> None:
        frame = doc.get("frame")
        with self._lock:
            chunks = self.history.get(frame) if isinstance(frame, int) else None
        if chunks is None:
            self._ack(cmd_id, "resend", False, error=f"frame {frame} is no longer held")
            return
        wanted = doc.get("chunks")
        wanted = list(range(len(chunks))) if wanted is None else wanted
        wanted = [i for i in wanted if isinstance(i, int) and 0 <= i < len(chunks)]
        for n, i in enumerate(wanted):
            b = bytearray(chunks[i])
            b[3] |= 2  # flags bit 1: resent chunk
            self.client.publish(self.t("frame"), bytes(b), qos=1 if n == len(wanted) - 1 else 0)
        self._ack(cmd_id, "resend", True, {"frame": frame, "chunks": len(wanted)})


class Watcher:
    """Subscribes to topics and lets a test wait for what arrives (the outcome a user sees)."""

    def __init__(self, host: str, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self.client = make_client(f"watcher-{random.randrange(1 << 30)}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(host, port, 60)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        if not self._ready.wait(10):
            raise TimeoutError("watcher could not subscribe")

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], Any],
                 timeout: float = 30) -> Any:
        """Wait until predicate(messages) is truthy and return its value; the timeout is only
        a guard against a hung test. The predicate is also re-checked now and then, so it may
        look at things other than the messages."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.messages)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("condition not met; messages: "
                                       + ", ".join(t for t, _, _ in self.messages[-20:]))
                self._cond.wait(min(left, 0.05))

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[Any]:
        return [json.loads(p) for p in self.payloads(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
