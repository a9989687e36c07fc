"""A frame's way through the backend, in the loop's thread: chunk -> ledger (seen before?) ->
reassembly -> the check-and-store lanes -> back here as an Outcome -> announced, and for a
version 2 node confirmed. Also what becomes of frames that do not make it: resend requests while
chunks are missing, and a `LOST` line and a count when a frame is given up for good.

A version 1 frame given up while incomplete is lost: its node keeps only its newest frame. A
version 2 node keeps every frame until it is confirmed, so an incomplete frame let go here is
sent again and is neither confirmed nor counted; its losses are what the node itself drops
(`dropped`) and frames that can never be stored.

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
from espcam.backend.confirm import Confirmer
from espcam.backend.documents import (
    Ack,
    CommandError,
    build_command,
    encode_command,
    new_command_id,
)
from espcam.backend.lanes import Lanes
from espcam.backend.ledger import Ledger
from espcam.backend.nodes import NodeBook
from espcam.backend.protocol import Chunk, topic
from espcam.backend.ratelog import RateLimitedLog, id_ranges, printable
from espcam.backend.reassembly import FrameRejected, Lost, Reassembler, ResendRequest
from espcam.backend.records import Frame, Losses, Outcome, StoredFrame
from espcam.backend.store import FrameStore

log = logging.getLogger("espcam.backend")

Publish = Callable[[str, bytes | str, bool, int], None]
FrameKey = tuple[str, int]


class FramePath:
    def __init__(self, prefix: str, ledger: Ledger, reassembler: Reassembler, lanes: Lanes,
                 store: FrameStore, nodes: NodeBook, announcer: Announcer,
                 confirmer: Confirmer, publish: Publish,
                 release: Callable[[FrameKey], None], deliver: Callable[[Any], None],
                 disk_refuses: Callable[[], bool], warn: RateLimitedLog,
                 on_stored: Callable[[StoredFrame], None] | None = None) -> None:
        """`release(key)`: acknowledge the held messages of a settled frame; `deliver(result)`:
        hand a store worker's result back to the loop; `disk_refuses()`: whether the disk is
        failing writes now; `on_stored(frame)`: every frame announced as stored (analysis)."""
        self.prefix = prefix
        self.ledger, self.reassembler, self.lanes, self.store = ledger, reassembler, lanes, store
        self.nodes, self.announcer, self.confirmer = nodes, announcer, confirmer
        self._publish, self._release, self._deliver, self._warn = publish, release, deliver, warn
        self.disk_refuses = disk_refuses
        self.on_stored = on_stored
        self.counters: Counter[str] = Counter()
        self._in_lanes: set[FrameKey] = set()
        self.parked: Frame | None = None  # a complete frame waiting for room in the lanes

    # -- chunks in -------------------------------------------------------------------------

    def chunk(self, node: str, chunk: Chunk, now: float,
              stranger: bool = False) -> FrameKey | None:
        """Take one decoded chunk; returns the key of its frame while the frame is open (its
        QoS 1 message is then acknowledged only when the frame is settled). `stranger`: its
        node has not announced itself."""
        key = (node, chunk.frame_id)
        verdict = self.ledger.check_chunk(node, chunk.frame_id, chunk.crc32)
        if verdict in ("duplicate", "stored_before"):
            # A late copy (a node's retransmission, the broker's redelivery after a restart).
            self.counters["chunks"] += 1
            self.counters["duplicate_chunks"] += 1
            if verdict == "stored_before" and self.lanes.submit(
                    node, self.store.again_job(node, chunk.frame_id, chunk.crc32, chunk.version,
                                               self._deliver), force=True):
                # Stored by an earlier run, which may have died before announcing it: its
                # message is held until the frame is announced (again).
                self._in_lanes.add(key)
            elif chunk.version >= 2 and key not in self._in_lanes:
                # Sent again by a node that did not get its confirmation: confirm it again.
                end = self.ledger.verdict(node, chunk.frame_id)
                if end == "stored":
                    self.confirmer.stored(node, chunk.frame_id)
                elif end == "lost":
                    self.confirmer.lost(node, chunk.frame_id)
            return key if key in self._in_lanes else None
        try:
            frame, evicted = self.reassembler.add(node, chunk, now, stranger)
            self.lost(evicted)
        except FrameRejected as e:
            self.lost(e.evicted)
            if e.retry:
                self._warn.warning(f"crc:{node}", "%s", e)
                return key
            self.ledger.finished(node, e.frame_id, e.crc32)
            self._release(key)
            if chunk.version >= 2:
                # The node's own copy is bad: it must stop sending it (confirmed lost), and a
                # restart of ours must not count it twice (recorded first).
                self.losses(node, [e.frame_id], "CRC32 failed again after the whole frame "
                                                "was sent again")
                return None
            self._warn.error(f"lost-crc:{node}", "%s", e)
            self.nodes.lost(node)
            return None
        except ValueError as e:
            self._warn.warning(f"chunk:{node}", "node %s: dropped chunk: %s", node, e)
            return key if self.reassembler.holds(node, chunk.frame_id) else None
        if frame is None:
            return key if self.reassembler.holds(node, chunk.frame_id) else None
        if not self.nodes.is_announced(node):
            # Every node announces itself when it connects: a whole frame under an id that never
            # did is junk (or a node that breaks the protocol); it is not stored, and costs no
            # index row, no file and no Home Assistant device.
            self.counters["stranger_frames"] += 1
            self._warn.warning("stranger-frames", "dropped frame %d of %s: the node has not "
                               "announced itself (availability, state)", frame.frame_id, node)
            return None
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
            if frame.version >= 2:
                # Its node holds it until confirmed and sends it again (confirm_timeout):
                # not lost, and forgotten here, so that the copy sent again is taken.
                self.counters["frames_refused_storage"] += 1
                self.ledger.unfinish(frame.node, frame.frame_id)
                self._release(key)
                self._warn.warning(f"refused-storage:{frame.node}", "node %s frame %d not "
                                   "taken for now: storage unavailable and %d frames (%d "
                                   "bytes) already waiting (max_pending_frames, "
                                   "max_pending_bytes); the node sends it again",
                                   frame.node, frame.frame_id, self.lanes.jobs,
                                   self.lanes.bytes)
                return
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

    def settle(self, result: Outcome | Losses | BaseException) -> None:
        """A store worker's result, in each node's order."""
        if isinstance(result, Losses):
            self.settle_losses(result)
            return
        if not isinstance(result, Outcome):
            self.counters["errors"] += 1
            log.error("unexpected error in the store stage: %r", result)
            return
        frame = result.frame
        key = (frame.node, frame.frame_id)
        self._in_lanes.discard(key)
        try:
            self._settled(result)
        finally:
            # Acknowledged last: the broker hands the last chunk over again after a crash
            # until it has this ack, and the frame is then announced again. Sent before the
            # event, a crash between the two left a stored frame that nobody was ever told of
            # (paho writes in the order things are queued).
            self._release(key)

    def _settled(self, result: Outcome) -> None:
        frame = result.frame
        v2 = frame.version >= 2
        self.ledger.settled(frame.node, frame.frame_id,
                            "lost" if result.refused is not None else "stored")
        if result.refused is not None:
            if v2:
                self.confirmer.lost(frame.node, frame.frame_id)
                if result.counted:
                    return  # sent again by its node; counted the first time
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
        if v2 and (result.stored is not None or result.duplicate):
            self.confirmer.stored(frame.node, frame.frame_id)
        if result.duplicate or result.stored is None:
            self.counters["duplicate_frames"] += 1
            log.info("node %s frame %d is already stored; duplicate ignored", frame.node,
                     frame.frame_id)
            return
        self.counters["announced_again" if result.again else "frames_stored"] += 1
        if result.was_lost:
            self.counters["frames_lost"] -= 1
            self.nodes.lost(frame.node, -1)
            log.warning("frame %d of node %s, counted lost when the node dropped it, arrived "
                        "after all: stored, and no longer counted lost", frame.frame_id,
                        frame.node)
        self.nodes.stored(frame.node, result.stored, result.count, result.newest)
        if result.claimed_capture is not None:
            self._warn.warning(f"clock:{frame.node}", "node %s frame %d says it was captured "
                               "%.0f s after it arrived: its clock is ahead; the receive time "
                               "is used", frame.node, frame.frame_id,
                               result.claimed_capture - frame.received_at)
        self.announcer.frame(result.stored, frame.data, result.newest, result.claimed_capture)
        if self.on_stored is not None:
            self.on_stored(result.stored)

    def lost(self, lost: list[Lost] | Lost | None) -> None:
        """Frames given up by reassembly (logged and counted there); counted per node here.
        A version 2 frame let go is not lost: its node sends it again (reassembly says so)."""
        for item in lost if isinstance(lost, list) else [lost] if lost else []:
            self._release((item.node, item.frame_id))
            if item.version >= 2:
                continue
            self.ledger.finished(item.node, item.frame_id, item.crc32)
            self.nodes.lost(item.node)

    def losses(self, node: str, frame_ids: list[int], reason: str) -> None:
        """Frames of a version 2 node that will never be stored: recorded (each counted once,
        in the node's lane, after its frames still being stored) and then confirmed lost."""
        self.lanes.submit(node, self.store.losses_job(node, frame_ids, reason, self._deliver),
                          force=True)

    def dropped(self, node: str, frame_ids: list[int], reason: str) -> None:
        """A version 2 node could not keep these frames (`dropped`)."""
        self.losses(node, frame_ids, f"dropped by the node: {reason}")

    def settle_losses(self, result: Losses) -> None:
        node, new = result.node, result.ids("new")
        if new:
            self.counters["frames_lost"] += len(new)
            self.nodes.lost(node, len(new))
            log.warning("LOST frame%s %s of node %s: %s%s", "s" if len(new) > 1 else "",
                        id_ranges(new), node, printable(result.reason),
                        f" ({len(new)} frames)" if len(new) > 1 else "")
        for fid in result.ids("stored"):
            self.confirmer.stored(node, fid)
        for fid in new + result.ids("counted"):
            self.ledger.settled(node, fid, "lost")
            self.confirmer.lost(node, fid)

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
                        "resend it: %s", req.frame_id, node, printable(ack.error))
            self.ledger.finished(node, req.frame_id, 0)
            self.count_lost(node)
            return
        self.lost(self.reassembler.give_up(node, req.frame_id,
                                           f"node cannot resend: {printable(ack.error)}"))

    # -- the end ---------------------------------------------------------------------------

    def open_frames(self) -> int:
        return self.reassembler.frames_held + len(self._in_lanes) + (self.parked is not None)

    def forget(self, node: str) -> None:
        self.lost(self.reassembler.forget_node(node))
        self.ledger.forget(node)
