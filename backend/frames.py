"""A frame's way through the backend, in the loop's thread: chunk -> ledger (seen before?) ->
reassembly -> the check-and-store lanes -> back here as an Outcome -> announced. Also what
becomes of frames that do not make it: resend requests while chunks are missing, and a `LOST`
line and a count when a frame is given up.

The last chunk of a frame (QoS 1) is acknowledged to the broker only when the frame is settled:
stored, a duplicate, or given up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from espcam.backend.announce import Announcer
from espcam.backend.lanes import Lanes
from espcam.backend.ledger import Ledger
from espcam.backend.nodes import NodeBook
from espcam.backend.protocol import (
    Ack,
    Chunk,
    CommandError,
    build_command,
    encode_command,
    new_command_id,
    topic,
)
from espcam.backend.ratelog import RateLimitedLog
from espcam.backend.reassembly import FrameRejected, Lost, Reassembler, ResendRequest
from espcam.backend.records import Frame, Outcome
from espcam.backend.store import FrameStore

log = logging.getLogger("espcam.backend")

Publish = Callable[[str, bytes | str, bool, int], None]
FrameKey = tuple[str, int]


class FramePath:
    def __init__(self, prefix: str, ledger: Ledger, reassembler: Reassembler, lanes: Lanes,
                 store: FrameStore, nodes: NodeBook, announcer: Announcer, publish: Publish,
                 release: Callable[[FrameKey], None], deliver: Callable[[Any], None],
                 disk_refuses: Callable[[], bool], warn: RateLimitedLog) -> None:
        """`release(key)`: acknowledge the held messages of a settled frame; `deliver(result)`:
        hand a store worker's result back to the loop; `disk_refuses()`: whether the disk is
        failing writes now."""
        self.prefix = prefix
        self.ledger, self.reassembler, self.lanes, self.store = ledger, reassembler, lanes, store
        self.nodes, self.announcer = nodes, announcer
        self._publish, self._release, self._deliver, self._warn = publish, release, deliver, warn
        self.disk_refuses = disk_refuses
        self.counters: Counter[str] = Counter()
        self._in_lanes: set[FrameKey] = set()
        self.parked: Frame | None = None  # a complete frame waiting for room in the lanes

    # -- chunks in -------------------------------------------------------------------------

    def chunk(self, node: str, chunk: Chunk, now: float) -> FrameKey | None:
        """Take one decoded chunk; returns the key of its frame while the frame is open (its
        QoS 1 message is then acknowledged only when the frame is settled)."""
        key = (node, chunk.frame_id)
        verdict = self.ledger.check_chunk(node, chunk.frame_id, chunk.crc32)
        if verdict in ("duplicate", "stored_before"):
            # A late copy (a node's retransmission, the broker's redelivery after a restart).
            self.counters["chunks"] += 1
            self.counters["duplicate_chunks"] += 1
            if verdict == "stored_before" and self.lanes.submit(
                    node, self.store.again_job(node, chunk.frame_id, chunk.crc32,
                                               self._deliver), force=True):
                # Stored by an earlier run, which may have died before announcing it: its
                # message is held until the frame is announced (again).
                self._in_lanes.add(key)
            return key if key in self._in_lanes else None
        try:
            frame, evicted = self.reassembler.add(node, chunk, now)
            self.lost(evicted)
        except FrameRejected as e:
            self.lost(e.evicted)
            if e.retry:
                self._warn.warning(f"crc:{node}", "%s", e)
                return key
            self._warn.error(f"lost-crc:{node}", "%s", e)
            self.ledger.finished(node, e.frame_id, e.crc32)
            self.nodes.lost(node)
            self._release(key)
            return None
        except ValueError as e:
            self._warn.warning(f"chunk:{node}", "node %s: dropped chunk: %s", node, e)
            return key if self.reassembler.holds(node, chunk.frame_id) else None
        if frame is None:
            return key if self.reassembler.holds(node, chunk.frame_id) else None
        frame.received_at = time.time()
        self.ledger.finished(node, frame.frame_id, frame.crc32)
        self._submit(frame)
        return key if key in self._in_lanes or self.parked is frame else None

    def _submit(self, frame: Frame) -> None:
        key = (frame.node, frame.frame_id)
        if self.lanes.submit(frame.node, self.store.job(frame, self._deliver)):
            self._in_lanes.add(key)
            return
        if self.disk_refuses():
            # The disk says no and memory is bounded: keeping on would only stall every
            # node's messages behind frames that cannot be written.
            self.counters["frames_lost_storage"] += 1
            self.nodes.lost(frame.node)
            self._release(key)
            log.error("LOST frame %d of node %s: storage unavailable and %d frames (%d bytes) "
                      "already waiting (max_pending_frames, max_pending_bytes)",
                      frame.frame_id, frame.node, self.lanes.jobs, self.lanes.bytes)
            return
        # The store is busy, not broken: hold this frame and take no more messages until
        # it has room (subscriber.py). The inbox fills, paho stops reading, the broker keeps
        # the rest: back-pressure, nothing dropped.
        self.parked = frame
        self.counters["intake_paused"] += 1

    def unpark(self) -> bool:
        """Try the parked frame again; True once nothing is parked."""
        frame = self.parked
        if frame is None:
            return True
        if not self.lanes.submit(frame.node, self.store.job(frame, self._deliver)):
            if not self.disk_refuses():
                return False
            self.parked = None
            self._submit(frame)  # now counted lost, as above
            return True
        self.parked = None
        self._in_lanes.add((frame.node, frame.frame_id))
        return True

    # -- frames out ------------------------------------------------------------------------

    def settle(self, result: Outcome | BaseException) -> None:
        """A store worker's result, in each node's order."""
        if not isinstance(result, Outcome):
            self.counters["errors"] += 1
            log.error("unexpected error in the store stage: %r", result)
            return
        frame = result.frame
        key = (frame.node, frame.frame_id)
        self._in_lanes.discard(key)
        self._release(key)
        if result.refused is not None:
            self.counters[result.counter or "refused"] += 1
            self.nodes.lost(frame.node)
            if result.counter == "storage_rejected":
                self.counters["frames_lost"] += 1
                log.error("LOST frame %d of node %s: %s", frame.frame_id, frame.node,
                          result.refused)
            else:
                self._warn.error(f"{result.counter}:{frame.node}", "node %s frame %d rejected, "
                                 "%s", frame.node, frame.frame_id, result.refused)
            return
        if result.duplicate or result.stored is None:
            self.counters["duplicate_frames"] += 1
            log.info("node %s frame %d is already stored; duplicate ignored", frame.node,
                     frame.frame_id)
            return
        self.counters["announced_again" if result.again else "frames_stored"] += 1
        self.nodes.stored(frame.node, result.stored, result.count, result.newest)
        self.announcer.frame(result.stored, frame.data, result.newest)

    def lost(self, lost: list[Lost] | Lost | None) -> None:
        """Frames given up by reassembly (logged and counted there); counted per node here."""
        for item in lost if isinstance(lost, list) else [lost] if lost else []:
            self.ledger.finished(item.node, item.frame_id, item.crc32)
            self.nodes.lost(item.node)
            self._release((item.node, item.frame_id))

    def count_lost(self, node: str) -> None:
        """A frame given up outside reassembly (the node no longer holds it)."""
        self.counters["frames_lost"] += 1
        if node in self.nodes.views:
            self.nodes.lost(node)

    # -- asking nodes for frames -----------------------------------------------------------

    def tick(self, now: float) -> None:
        requests, lost = self.reassembler.tick(now)  # lost ones are logged there
        self.lost(lost)
        for req in requests:
            self.request_resend(req)

    def request_resend(self, req: ResendRequest) -> None:
        cmd_id = new_command_id("resend")
        try:
            doc = build_command("resend", cmd_id, frame=req.frame_id, chunks=req.chunks)
        except CommandError:
            doc = build_command("resend", cmd_id, frame=req.frame_id)  # too many: ask for all
        self.ledger.asked(cmd_id, req.node, req.frame_id, "resend")
        if req.whole:
            log.info("node %s frame %d: asking again for the whole frame (try %d)", req.node,
                     req.frame_id, req.attempt)
        else:
            log.info("node %s frame %d: asking again for %d missing chunk(s) (try %d)",
                     req.node, req.frame_id, len(req.chunks), req.attempt)
        self._publish(topic(self.prefix, req.node, "cmd"), encode_command(doc), False, 1)

    def request_gap(self, node: str, frame_id: int) -> None:
        """Ask for a whole frame of which nothing arrived (the node's state names it)."""
        if self.reassembler.holds(node, frame_id) or self.ledger.is_finished(node, frame_id):
            return
        cmd_id = new_command_id("resend")
        self.ledger.asked(cmd_id, node, frame_id, "gap")
        self._publish(topic(self.prefix, node, "cmd"),
                      encode_command(build_command("resend", cmd_id, frame=frame_id)), False, 1)

    def ack(self, node: str, ack: Ack) -> None:
        """A node's ack, if it answers one of our requests."""
        req = self.ledger.answered(ack.id)
        if req is None or ack.ok:
            return  # someone else's command (the CLI, Home Assistant), or done
        if req.kind == "gap":
            log.warning("LOST frame %d of node %s: no chunk of it arrived and the node cannot "
                        "resend it: %s", req.frame_id, node, ack.error)
            self.ledger.finished(node, req.frame_id, 0)
            self.count_lost(node)
            return
        self.lost(self.reassembler.give_up(node, req.frame_id,
                                           f"node cannot resend: {ack.error}"))

    # -- the end ---------------------------------------------------------------------------

    def open_frames(self) -> int:
        return self.reassembler.frames_held + len(self._in_lanes) + (self.parked is not None)

    def forget(self, node: str) -> None:
        self.lost(self.reassembler.forget_node(node))
        self.ledger.forget(node)
