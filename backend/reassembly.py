"""Reassembling frames from chunks, with bounded memory and resend bookkeeping.

No MQTT and no disk here: the intake feeds decoded chunks in and acts on what comes out
(complete frames, resend requests, lost frames). Which frames are finished already (late
duplicates) is the ledger's to know (ledger.py); this holds only frames still incomplete.
Times are the monotonic clock's: a wall clock stepped back by NTP must not stall a resend.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from espcam.backend.protocol import Chunk
from espcam.backend.ratelog import FrameLog
from espcam.backend.records import Frame

log = logging.getLogger("espcam.reassembly")


@dataclass(frozen=True)
class Limits:
    """Bounds on what incomplete frames may cost; every field is a setting (docs/backend.md)."""

    max_frame_bytes: int = 4 * 1024 * 1024  # UXGA JPEGs are ~400 KB; the protocol allows 16 MiB
    max_chunks: int = 4096
    max_frames_per_node: int = 4
    max_frames_total: int = 1024  # 200 nodes sending at once fit; max_bytes_total is the bound
    max_bytes_total: int = 64 * 1024 * 1024
    resend_after: float = 2.0  # seconds without a new chunk before asking for the missing ones
    resend_tries: int = 3
    max_age: float = 60.0  # an incomplete frame older than this is lost whatever else happens
    # Frames of nodes that have not announced themselves (availability, state) get a small
    # budget of their own: junk under made-up ids cannot take a real node's room.
    max_stranger_frames: int = 32
    max_stranger_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class ResendRequest:
    node: str
    frame_id: int
    chunks: list[int]
    attempt: int
    whole: bool = False  # the whole frame again, after its CRC32 did not match


@dataclass(frozen=True)
class Lost:
    node: str
    frame_id: int
    reason: str
    missing: int  # chunks still missing when given up
    crc32: int = 0
    version: int = 1  # of its chunks: a version 2 node still holds it


class FrameRejected(ValueError):
    """A complete frame whose CRC32 does not match its header: never stored.

    `retry` True: the first mismatch of this frame; its chunks were let go and the whole frame
    will be asked for again (`tick`). False: it failed again and is given up (counted lost)."""

    def __init__(self, message: str, node: str, frame_id: int, retry: bool,
                 evicted: list[Lost] | None = None, crc32: int = 0) -> None:
        super().__init__(message)
        self.node, self.frame_id, self.retry, self.crc32 = node, frame_id, retry, crc32
        self.evicted = evicted or []


@dataclass
class _Partial:
    node: str
    frame_id: int
    shape: tuple[int, int, int, int]
    started: float
    last_chunk: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    meta: dict[str, Any] | None = None
    received: int = 0
    tries: int = 0
    crc_retried: bool = False  # the whole frame was asked for again after a CRC mismatch
    version: int = 1
    stranger: bool = False  # its node had not announced itself when its first chunk came

    @property
    def count(self) -> int:
        return self.shape[3]

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.chunks]


class Reassembler:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.counters: Counter[str] = Counter()
        # One line per node and cause per flush (the backend's tick), naming every frame: a
        # flood of junk frames evicted one after another would otherwise write the log full.
        self.losses = FrameLog(log, logging.WARNING, "LOST")
        self.let_go = FrameLog(log, logging.INFO, "let go:")
        # Insertion order is arrival order of each frame's first chunk: the oldest is evicted.
        self._partials: OrderedDict[tuple[str, int], _Partial] = OrderedDict()
        self._bytes = 0
        self._stranger_bytes = 0
        self._strangers = 0

    # -- public view ---------------------------------------------------------------------

    @property
    def bytes_held(self) -> int:
        return self._bytes

    @property
    def frames_held(self) -> int:
        return len(self._partials)

    # -- input ---------------------------------------------------------------------------

    def add(self, node: str, chunk: Chunk, now: float,
            stranger: bool = False) -> tuple[Frame | None, list[Lost]]:
        """Take one chunk. Returns a complete frame (CRC checked) if this chunk completed one,
        and frames evicted to make room. Raises ChunkError-like ValueError for a chunk that
        disagrees with the frame it claims to belong to or with the limits. `stranger`: its
        node has not announced itself (the frame goes to the strangers' small budget)."""
        self.counters["chunks"] += 1
        key = (node, chunk.frame_id)
        evicted: list[Lost] = []
        part = self._partials.get(key)
        if part is None:
            self._check_limits(chunk, stranger)
            evicted = self._make_room(node, stranger)
            part = _Partial(node, chunk.frame_id, chunk.shape(), now, now,
                            version=chunk.version, stranger=stranger)
            self._partials[key] = part
            self._strangers += stranger
        elif part.shape != chunk.shape():
            self.counters["rejected_chunks"] += 1
            raise ValueError(
                f"chunk {chunk.index} of frame {chunk.frame_id} disagrees with earlier chunks "
                f"(total_len, crc32, chunk_size, count {chunk.shape()} != {part.shape})"
            )
        if chunk.index in part.chunks:
            self.counters["duplicate_chunks"] += 1
            return None, evicted
        # Checked on every chunk, not only when a frame starts: frames admitted while there
        # was room would otherwise keep growing past the limit as their chunks arrive.
        evicted += self._fit(len(chunk.payload), part)
        part.chunks[chunk.index] = chunk.payload
        part.received += len(chunk.payload)
        part.last_chunk = now
        self._bytes += len(chunk.payload)
        if part.stranger:
            self._stranger_bytes += len(chunk.payload)
        if chunk.meta is not None:
            part.meta = chunk.meta
        if len(part.chunks) < part.count:
            return None, evicted
        return self._finish(part, now, evicted), evicted

    def _check_limits(self, chunk: Chunk, stranger: bool) -> None:
        lim = self.limits
        if stranger and chunk.total_len > lim.max_stranger_bytes:
            self.counters["rejected_chunks"] += 1
            raise ValueError(
                f"frame {chunk.frame_id} of {chunk.total_len} bytes from a node that has not "
                f"announced itself is above max_stranger_bytes={lim.max_stranger_bytes}"
            )
        if chunk.total_len > lim.max_frame_bytes:
            self.counters["rejected_chunks"] += 1
            raise ValueError(
                f"frame {chunk.frame_id} of {chunk.total_len} bytes is above the limit "
                f"max_frame_bytes={lim.max_frame_bytes}"
            )
        if chunk.count > lim.max_chunks:
            self.counters["rejected_chunks"] += 1
            raise ValueError(
                f"frame {chunk.frame_id} of {chunk.count} chunks is above the limit "
                f"max_chunks={lim.max_chunks}"
            )
        if chunk.total_len > lim.max_bytes_total:
            # It could only complete by holding more than the total budget.
            self.counters["rejected_chunks"] += 1
            raise ValueError(
                f"frame {chunk.frame_id} of {chunk.total_len} bytes is above the limit "
                f"max_bytes_total={lim.max_bytes_total}"
            )

    def _make_room(self, node: str, stranger: bool) -> list[Lost]:
        lim = self.limits
        out: list[Lost] = []
        mine = [p for p in self._partials.values() if p.node == node]
        while len(mine) >= lim.max_frames_per_node:
            out.append(self._drop(mine.pop(0), "evicted: too many incomplete frames of this node"))
        while stranger and self._strangers >= lim.max_stranger_frames:
            out.append(self._drop(self._victim(None, strangers_only=True),
                                  "evicted: too many incomplete frames of unannounced nodes"))
        while self._partials and len(self._partials) >= lim.max_frames_total:
            out.append(self._drop(self._victim(None),
                                  "evicted: too many incomplete frames in total"))
        return out

    def _fit(self, size: int, keep: _Partial) -> list[Lost]:
        """Evict incomplete frames until `size` more bytes fit the budgets. `keep` always fits
        on its own: _check_limits refused frames larger than its budget."""
        out: list[Lost] = []
        lim = self.limits
        while keep.stranger and self._stranger_bytes + size > lim.max_stranger_bytes:
            victim = self._victim(keep, strangers_only=True)
            if victim is None:
                break
            out.append(self._drop(victim, "evicted: incomplete frames of unannounced nodes hold "
                                          f"max_stranger_bytes={lim.max_stranger_bytes} bytes"))
        while self._bytes + size > lim.max_bytes_total:
            victim = self._victim(keep)
            if victim is None:
                break
            out.append(self._drop(victim, "evicted: incomplete frames hold max_bytes_total="
                                          f"{lim.max_bytes_total} bytes"))
        return out

    def _victim(self, keep: _Partial | None, strangers_only: bool = False) -> _Partial | None:
        """Whom a full budget costs: the oldest incomplete frame of the node holding the most
        bytes (strangers first). A flood under many made-up ids, or one node's huge frames,
        evicts its own frames before a small node's."""
        held: dict[str, int] = {}
        for p in self._partials.values():
            if p is not keep and (p.stranger or not strangers_only):
                # A stranger's bytes weigh more: junk goes before a real node's frame.
                held[p.node] = held.get(p.node, 0) + (p.received + 1) * (1 + 1000 * p.stranger)
        if not held:
            return None
        greediest = max(held, key=lambda n: held[n])
        return next(p for p in self._partials.values() if p.node == greediest and p is not keep
                    and (p.stranger or not strangers_only))

    def _finish(self, part: _Partial, now: float, evicted: list[Lost]) -> Frame | None:
        data = b"".join(part.chunks[i] for i in range(part.count))
        total_len, crc, _, _ = part.shape
        actual = zlib.crc32(data) & 0xFFFFFFFF
        if actual != crc:
            self.counters["crc_failures"] += 1
            if not part.crc_retried:
                # One bad chunk need not cost the frame: the node still holds it, so let the
                # chunks go and ask for all of them again (tick() sends the request now).
                part.crc_retried = True
                self._bytes -= part.received
                if part.stranger:
                    self._stranger_bytes -= part.received
                part.chunks.clear()
                part.received = 0
                part.tries = 0
                part.started = now
                part.last_chunk = -math.inf
                raise FrameRejected(
                    f"node {part.node} frame {part.frame_id}: CRC32 {actual:08x} does not match "
                    f"the header's {crc:08x}; asking the node for the whole frame again",
                    part.node, part.frame_id, retry=True, evicted=evicted)
            self._forget(part)
            if part.version < 2:  # a version 2 frame is counted once recorded (frames.py)
                self.counters["frames_lost"] += 1
            raise FrameRejected(
                f"LOST frame {part.frame_id} of node {part.node}: CRC32 {actual:08x} does not "
                f"match the header's {crc:08x} again after the node sent the whole frame again; "
                "not stored", part.node, part.frame_id, retry=False, evicted=evicted, crc32=crc)
        self._forget(part)
        self.counters["frames_complete"] += 1
        return Frame(part.node, part.frame_id, data, crc, part.meta or {}, part.started,
                     version=part.version)

    def _forget(self, part: _Partial) -> None:
        if self._partials.pop((part.node, part.frame_id), None) is None:
            return
        self._bytes -= part.received
        if part.stranger:
            self._strangers -= 1
            self._stranger_bytes -= part.received

    def _drop(self, part: _Partial, reason: str, every_one: bool = False) -> Lost:
        """Give a frame up; logged with others of its node and cause at the next flush, or at
        once (`every_one`: a stop)."""
        missing = len(part.missing())
        self._forget(part)
        lost = Lost(part.node, part.frame_id, reason, missing, part.shape[1], part.version)
        if every_one:  # a stop: each frame still held gets a line of its own, at once
            log.warning("%s frame %d of node %s: %s (%d of %d chunks missing)",
                        "LOST" if part.version < 2 else "let go:", part.frame_id, part.node,
                        reason, missing, part.count)
        if part.version >= 2:
            self.counters["frames_let_go"] += 1
            if not every_one:
                self.let_go.add(part.node, part.frame_id, f"{reason}; the node keeps it and "
                                "sends it again", part.stranger)
            return lost
        self.counters["frames_lost"] += 1
        if not every_one:
            self.losses.add(part.node, part.frame_id, reason, part.stranger)
        return lost

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> tuple[list[ResendRequest], list[Lost]]:
        """Ask again for missing chunks of quiet frames; give up on frames past their tries."""
        lim = self.limits
        requests: list[ResendRequest] = []
        lost: list[Lost] = []
        for part in list(self._partials.values()):
            if now - part.started > lim.max_age:
                lost.append(self._drop(part, f"incomplete after max_age={lim.max_age:g}s"))
            elif now - part.last_chunk >= lim.resend_after:
                if part.tries >= lim.resend_tries:
                    lost.append(self._drop(part, f"still incomplete after {part.tries} resend "
                                                 "requests"))
                    continue
                part.tries += 1
                part.last_chunk = now  # wait another resend_after for the answer
                self.counters["resend_requests"] += 1
                requests.append(ResendRequest(part.node, part.frame_id, part.missing(),
                                              part.tries, whole=part.crc_retried
                                              and not part.chunks))
        return requests, lost

    def give_up(self, node: str, frame_id: int, reason: str) -> Lost | None:
        """The node says it cannot resend (e.g. "frame N is no longer held")."""
        part = self._partials.get((node, frame_id))
        return self._drop(part, reason) if part else None

    def holds(self, node: str, frame_id: int) -> bool:
        """Is this frame being reassembled (some chunks in, not finished nor given up)?"""
        return (node, frame_id) in self._partials

    def forget_node(self, node: str) -> list[Lost]:
        """Drop everything held for a node; its incomplete frames are returned as lost."""
        return [self._drop(p, "the node was forgotten")
                for p in list(self._partials.values()) if p.node == node]

    def drop_all(self, reason: str) -> list[Lost]:
        """Give up every incomplete frame (the service is stopping); each one is logged."""
        return [self._drop(p, reason, every_one=True) for p in list(self._partials.values())]
