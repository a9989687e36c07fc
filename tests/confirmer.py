"""The backend's half of protocol version 2, as small as a test needs it (docs/protocol.md,
"Confirmation and the spool"): a paho client on the real broker that reassembles every frame
with the backend's own chunk decoder and Reassembler, keeps each complete frame and each
`dropped` document as they arrive, and publishes `confirm` documents (retained, QoS 1) when the
test says so, or by itself (`auto`: a frame once it is complete, a dropped id once it is read).
A peer over the real broker, as the backend is; the node cannot tell it from one.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from espcam.backend.documents import parse_dropped
from espcam.backend.protocol import decode_chunk
from espcam.backend.reassembly import Limits, Reassembler
from espcam.backend.session import make_client


@dataclass
class Arrival:
    """One complete reception of a frame (a frame sent three times arrives three times)."""

    node: str
    frame_id: int
    data: bytes
    meta: dict
    resent: bool  # every chunk of this reception carried the resent flag
    version: int
    at: int = 0  # its place among all arrivals (frames and dropped), for ordering


@dataclass
class Dropped:
    node: str
    frames: list[int]
    reason: str
    payload: bytes
    at: int = 0


@dataclass
class Availability:
    """The node's `online`, `sleeping` or `offline`: what came after it was sent after it (one
    connection, one order), so it marks a new connection in the stream of arrivals."""

    node: str
    payload: bytes
    at: int = 0


@dataclass
class _Flags:
    resent: set[int] = field(default_factory=set)
    fresh: set[int] = field(default_factory=set)


class Confirmer:
    def __init__(self, host: str, port: int, prefix: str = "espcam", auto: bool = False) -> None:
        self.prefix = prefix
        self.auto = auto
        self.cond = threading.Condition()
        self.events: list[Arrival | Dropped | Availability] = []
        self.chunks: list[tuple[str, int, int, int]] = []  # (node, frame, index, flags)
        self.refused: list[str] = []  # anything that broke the protocol
        self.reasm = Reassembler(Limits(max_frames_per_node=64, max_frames_total=256,
                                        resend_after=3600, max_age=3600))
        self._flags: dict[tuple[str, int], _Flags] = {}
        # A persistent session, as the backend's: what the nodes send while this client is
        # away (a test restarting the broker) waits for it at the broker.
        self.c = make_client(f"confirmer-{uuid.uuid4()}", clean_session=False)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self._subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.c.connect(host, port)
        self.c.loop_start()
        assert self._subscribed.wait(10), "confirmer could not subscribe"

    def _on_connect(self, c, u, f, rc, p) -> None:
        # Again after every reconnect (a test restarting the broker).
        c.subscribe([(f"{self.prefix}/+/frame", 1), (f"{self.prefix}/+/dropped", 1),
                     (f"{self.prefix}/+/availability", 1)])

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()

    # ------------------------------------------------------------------ arriving

    def _on_message(self, c, u, m) -> None:
        node, leaf = m.topic.split("/")[-2:]
        with self.cond:
            try:
                if leaf == "frame":
                    self._chunk(node, m.payload)
                elif leaf == "dropped":
                    self._dropped(node, m.payload)
                elif not m.retain:
                    self.events.append(Availability(node, m.payload, len(self.events)))
            except ValueError as e:
                self.refused.append(f"{m.topic}: {e}")
            self.cond.notify_all()

    def _chunk(self, node: str, payload: bytes) -> None:
        chunk = decode_chunk(payload)
        self.chunks.append((node, chunk.frame_id, chunk.index, chunk.flags))
        fl = self._flags.setdefault((node, chunk.frame_id), _Flags())
        (fl.resent if chunk.flags & 2 else fl.fresh).add(chunk.index)
        frame, _ = self.reasm.add(node, chunk, time.monotonic())
        if frame is None:
            return
        fl = self._flags.pop((node, chunk.frame_id))
        self.events.append(Arrival(node, frame.frame_id, frame.data, frame.meta,
                                   not fl.fresh, chunk.version, len(self.events)))
        if self.auto:
            self.confirm(node, stored=[frame.frame_id], wait=False)

    def _dropped(self, node: str, payload: bytes) -> None:
        frames, reason = parse_dropped(payload)
        self.events.append(Dropped(node, frames, reason, payload, len(self.events)))
        if self.auto:
            self.confirm(node, lost=frames, wait=False)

    # ------------------------------------------------------------------ confirming

    def confirm(self, node: str, stored=(), lost=(), wait: bool = True) -> None:
        doc = json.dumps({"stored": list(stored), "lost": list(lost)}, separators=(",", ":"))
        info = self.c.publish(f"{self.prefix}/{node}/confirm", doc, qos=1, retain=True)
        if wait:
            info.wait_for_publish(10)

    # ------------------------------------------------------------------ reading

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def arrivals(self, node: str = "cam-1", start: int = 0) -> list[Arrival]:
        with self.cond:
            return [e for e in self.events[start:] if isinstance(e, Arrival) and e.node == node]

    def drops(self, node: str = "cam-1", start: int = 0) -> list[Dropped]:
        with self.cond:
            return [e for e in self.events[start:] if isinstance(e, Dropped) and e.node == node]

    def online(self, node: str = "cam-1", start: int = 0, timeout: float = 30) -> int:
        """The place in the stream of the node's next `online` from `start` on: everything
        after it was sent on that new connection."""
        def found():
            with self.cond:
                return next((e.at + 1 for e in self.events[start:] if isinstance(e, Availability)
                             and e.node == node and e.payload == b"online"), None)

        return self.wait(found, timeout, f"{node} online")

    def wait(self, pred, timeout: float = 30, what: str = "arrival"):
        """Until pred() returns something truthy (checked on every arrival); returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(type(e).__name__, getattr(e, "frame_id", None),
                             getattr(e, "frames", None)) for e in self.events[-10:]]
                    raise AssertionError(f"no {what} within {timeout} s; last: {tail}")
                self.cond.wait(min(left, 0.5))

    def wait_frame(self, frame_id: int, node: str = "cam-1", start: int = 0,
                   resent: bool | None = None, timeout: float = 30) -> Arrival:
        def found():
            for a in self.arrivals(node, start):
                if a.frame_id == frame_id and (resent is None or a.resent == resent):
                    return a
            return None

        return self.wait(found, timeout, f"arrival of frame {frame_id}")

    def wait_dropped(self, node: str = "cam-1", start: int = 0, pred=lambda d: True,
                     timeout: float = 30) -> Dropped:
        def found():
            return next((d for d in self.drops(node, start) if pred(d)), None)

        return self.wait(found, timeout, "dropped message")
