"""A plain paho subscriber for tests: sees what a user would see with `mosquitto_sub -v`."""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field

from espcam.backend.protocol import Chunk, decode_chunk
from espcam.backend.session import make_client  # noqa: E402


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float = field(default_factory=time.monotonic)


def parse_chunk(b: bytes) -> Chunk:
    """A chunk as the backend decodes it: any chunk a test looks at must be valid."""
    return decode_chunk(b)


class Observer:
    def __init__(self, host: str, port: int, topic: str | list[str] = "espcam/#",
                 **auth) -> None:
        """Subscribes to `topic` (or each of a list) again after every reconnection."""
        self.msgs: list[Msg] = []
        self.cond = threading.Condition()
        self.subscriptions = 0  # one more after every (re)connection
        topics = [topic] if isinstance(topic, str) else topic
        self.c = make_client(f"obs-{uuid.uuid4()}", username=auth.get("user", ""),
                             password=auth.get("password", ""))
        self.c.on_message = self._on_message
        subscribed = threading.Event()

        def on_subscribe(*a) -> None:
            self.subscriptions += 1
            subscribed.set()

        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.c.on_subscribe = on_subscribe
        self.c.connect(host, port)
        self.c.loop_start()
        assert subscribed.wait(10), "observer could not subscribe"

    def _on_message(self, c, u, m) -> None:
        with self.cond:
            self.msgs.append(Msg(m.topic, m.payload, m.retain, m.qos))
            self.cond.notify_all()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()

    def poll(self, pred, timeout: float, start: int = 0) -> Msg | None:
        """First message (from index `start`) for which pred(msg) is true; None if none
        comes within `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.msgs):
                    if pred(self.msgs[i]):
                        return self.msgs[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def wait(self, pred, timeout: float = 30, start: int = 0) -> Msg:
        """First message (from index `start`) for which pred(msg) is true."""
        m = self.poll(pred, timeout, start)
        if m is None:
            with self.cond:
                seen = [(m.topic, m.payload[:80]) for m in self.msgs[-15:]]
            raise AssertionError(f"no matching message in {timeout}s; last: {seen}")
        return m

    def mark(self) -> int:
        with self.cond:
            return len(self.msgs)

    def topic(self, t: str, timeout: float = 30, start: int = 0, payload: bytes | None = None):
        return self.wait(
            lambda m: m.topic == t and (payload is None or m.payload == payload), timeout, start
        )

    def json_on(self, t: str, pred=lambda d: True, timeout: float = 30, start: int = 0) -> dict:
        m = self.wait(lambda m: m.topic == t and pred(json.loads(m.payload)), timeout, start)
        return json.loads(m.payload)

    def command(self, node: str, cmd: dict | bytes | str, prefix: str = "espcam",
                timeout: float = 30) -> dict:
        """Publish a command and return its ack (the one echoing its id, or the next one)."""
        start = self.mark()
        payload = cmd if isinstance(cmd, bytes | str) else json.dumps(cmd)
        self.c.publish(f"{prefix}/{node}/cmd", payload, qos=1)
        cid = cmd.get("id") if isinstance(cmd, dict) else None
        return self.json_on(
            f"{prefix}/{node}/ack",
            lambda d: cid is None or d.get("id") == cid,
            timeout,
            start,
        )

    def frame(self, node: str, frame_id: int, timeout: float = 30, start: int = 0,
              prefix: str = "espcam") -> tuple[bytes, dict | None, list[Chunk]]:
        """Reassemble one frame from its chunks; returns (jpeg, metadata, chunks seen)."""
        t = f"{prefix}/{node}/frame"
        deadline = time.monotonic() + timeout
        while True:
            chunks = [parse_chunk(m.payload) for m in self.msgs[start:] if m.topic == t]
            mine = [c for c in chunks if c.frame_id == frame_id]
            if mine and len({c.index for c in mine}) == mine[0].count:
                first = mine[0]
                data = bytearray(first.total_len)
                meta = None
                for c in mine:
                    data[c.index * c.chunk_size:c.index * c.chunk_size + len(c.payload)] = (
                        c.payload
                    )
                    meta = c.meta or meta
                assert zlib.crc32(data) == first.crc32, "CRC mismatch"
                return bytes(data), meta, mine
            if time.monotonic() > deadline:
                raise AssertionError(f"frame {frame_id} incomplete: {len(mine)} chunks")
            time.sleep(0.05)


def retained(host: str, port: int, topic: str, timeout: float = 5) -> bytes | None:
    """What a fresh subscriber gets as the retained message on `topic`."""
    o = Observer(host, port, topic)
    try:
        return o.wait(lambda m: m.retain, timeout).payload
    except AssertionError:
        return None
    finally:
        o.close()
