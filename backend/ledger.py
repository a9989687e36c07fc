"""Per node, which frames the backend has: finished (reassembled, then stored or given up),
the ids it has seen, and the frames it asked a node for. The one place the intake asks "do we
have this frame already?": from memory, filled from the index the first time a node is seen
in this run, never a query per chunk.

Frames of which no chunk arrived are noticed here too: a node's state document names its last
frame, and a frame above everything seen of the node, of which nothing arrived, is asked for.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from espcam.backend.protocol import FRAME_ID_BLOCK, MAX_FRAME_ID

log = logging.getLogger("espcam.ledger")

RECENT_FRAME_IDS = 256  # per node, frame ids of which a chunk arrived (gap detection)
REMEMBER_FINISHED = 256  # per node, finished frame ids, so late duplicates are recognised
MAX_REQUESTS = 1000  # resend and gap commands awaiting an answer; oldest forgotten


@dataclass
class _Node:
    loaded: bool = False
    highest: int | None = None
    chunk_ids: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_FRAME_IDS))
    # Frame id -> CRC32 of frames finished: handed to the store, stored, or given up. Same id
    # and CRC again is a duplicate; same id with another CRC is a re-used id (a node that lost
    # its flash numbers from 1 again), which starts a new frame.
    finished: OrderedDict[int, int] = field(default_factory=OrderedDict)
    # Of those, the ones stored before this run and not seen again since: the run that stored
    # one may have died before announcing it.
    before: set[int] = field(default_factory=set)
    # What became of finished frames in the end: "stored" or "lost" (for a version 2 node, whose
    # frame sent again must be confirmed again); absent while still on its way.
    verdicts: dict[int, str] = field(default_factory=dict)
    gap_asked: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Request:
    """A command the backend sent a node about one of its frames."""

    node: str
    frame_id: int
    kind: str  # "resend" (missing chunks of a frame in reassembly) or "gap" (nothing arrived)


class Ledger:
    def __init__(self, recent_from_index: Callable[[str, int], list[tuple[int, int]]]) -> None:
        """`recent_from_index(node, n)`: (frame id, crc) of the node's n newest stored frames."""
        self._recent_from_index = recent_from_index
        self._nodes: dict[str, _Node] = {}
        self._requests: OrderedDict[str, Request] = OrderedDict()
        self.counters: Counter[str] = Counter()

    def _node(self, node: str) -> _Node:
        n = self._nodes.get(node)
        if n is None:
            n = self._nodes[node] = _Node()
        if not n.loaded:
            # Frames stored before this run: a broker that hands over a last chunk again after
            # a restart must find it finished, not start a frame that would be asked for and
            # then counted lost.
            n.loaded = True
            try:
                for fid, crc in reversed(self._recent_from_index(node, REMEMBER_FINISHED)):
                    n.finished[fid] = crc
                    n.before.add(fid)
                    n.verdicts[fid] = "stored"
            except Exception as e:
                n.loaded = False  # asked again next time
                log.warning("cannot read node %s's recent frames from the index: %s", node, e)
        return n

    # -- chunks and frames -----------------------------------------------------------------

    def check_chunk(self, node: str, frame_id: int, crc: int) -> str:
        """What a chunk of this frame is: "new" (reassemble it), "duplicate" (of a finished
        frame), "stored_before" (the first sight in this run of a frame stored before it), or
        "reused" (a finished id with another CRC: forgotten, reassemble it)."""
        n = self._node(node)
        self._saw(n, frame_id, chunk=True)
        done = n.finished.get(frame_id)
        if done is None:
            return "new"
        if done == crc:
            if frame_id in n.before:
                n.before.discard(frame_id)
                return "stored_before"
            return "duplicate"
        del n.finished[frame_id]
        n.before.discard(frame_id)
        n.verdicts.pop(frame_id, None)
        self.counters["reused_frame_ids"] += 1
        return "reused"

    def finished(self, node: str, frame_id: int, crc: int) -> None:
        """The frame left reassembly for good: complete (on its way to the store), stored,
        or given up. Later chunks of it are duplicates."""
        n = self._node(node)
        n.finished[frame_id] = crc
        n.finished.move_to_end(frame_id)
        n.before.discard(frame_id)
        while len(n.finished) > REMEMBER_FINISHED:
            old = n.finished.popitem(last=False)[0]
            n.before.discard(old)
            n.verdicts.pop(old, None)

    def settled(self, node: str, frame_id: int, verdict: str) -> None:
        """A finished frame's end: "stored" or "lost"."""
        n = self._nodes.get(node)
        if n is not None and frame_id in n.finished:
            n.verdicts[frame_id] = verdict

    def verdict(self, node: str, frame_id: int) -> str | None:
        n = self._nodes.get(node)
        return n.verdicts.get(frame_id) if n is not None else None

    def unfinish(self, node: str, frame_id: int) -> None:
        """The frame is to be taken again (its store was refused for now; the node resends)."""
        n = self._nodes.get(node)
        if n is not None:
            n.finished.pop(frame_id, None)
            n.verdicts.pop(frame_id, None)

    def is_finished(self, node: str, frame_id: int) -> bool:
        return frame_id in self._node(node).finished

    # -- frames of which nothing arrived ---------------------------------------------------

    def state(self, node: str, doc: dict[str, Any]) -> int | None:
        """The node's state document names its last frame; returns that frame's id if none of
        it arrived and it should be asked for (once), else None."""
        frame_id = doc.get("frame")
        # null: the node has captured nothing since it was powered on; no frame to look for.
        if not isinstance(frame_id, int) or isinstance(frame_id, bool) or not (
                0 <= frame_id <= MAX_FRAME_ID):
            return None
        proto = doc.get("proto")
        if isinstance(proto, int) and proto >= 2:
            return None  # a version 2 node sends unconfirmed frames again by itself
        n = self._node(node)
        if self._fresh_id_block(n, doc, frame_id):
            if n.highest is not None:
                log.info("node %s was powered off; its frame ids continue above %d (a new "
                         "block), which is not a frame", node, frame_id)
            self._saw(n, frame_id)
            return None
        newer = n.highest is not None and frame_id > n.highest
        self._saw(n, frame_id)
        if (not newer or frame_id in n.chunk_ids or frame_id in n.finished
                or frame_id in n.gap_asked):
            return None
        n.gap_asked.add(frame_id)
        if len(n.gap_asked) > RECENT_FRAME_IDS:
            n.gap_asked.discard(min(n.gap_asked))
        self.counters["gap_requests"] += 1
        log.info("node %s reports frame %d, of which no chunk arrived; asking for all of it",
                 node, frame_id)
        return frame_id

    @staticmethod
    def _fresh_id_block(n: _Node, doc: dict[str, Any], frame_id: int) -> bool:
        """Nodes that report `"frame": <id>` before their first capture after a power-on name
        the start of their next block of reserved ids (docs/protocol.md, "Frame ids"): never a
        frame they sent, so not a gap. Recognised as a jump to a block boundary in a state
        published after a reset that was not a deep-sleep wake (which keeps the counter)."""
        return (frame_id % FRAME_ID_BLOCK == 0
                and frame_id > (n.highest if n.highest is not None else -1)
                and doc.get("reset_cause") != "deepsleep"
                and frame_id not in n.chunk_ids)

    @staticmethod
    def _saw(n: _Node, frame_id: int, chunk: bool = False) -> None:
        n.highest = frame_id if n.highest is None else max(n.highest, frame_id)
        # A frame's chunks come one after another: its id is usually the last one seen, and
        # `in` walks the whole deque.
        if chunk and (not n.chunk_ids or n.chunk_ids[-1] != frame_id) and (
                frame_id not in n.chunk_ids):
            n.chunk_ids.append(frame_id)

    # -- commands about frames -------------------------------------------------------------

    def asked(self, cmd_id: str, node: str, frame_id: int, kind: str) -> None:
        self._requests[cmd_id] = Request(node, frame_id, kind)
        while len(self._requests) > MAX_REQUESTS:
            self._requests.popitem(last=False)

    def answered(self, cmd_id: str | None) -> Request | None:
        """The request a node's ack answers, if it is one of ours."""
        return self._requests.pop(cmd_id, None) if cmd_id is not None else None

    # -- forgetting ------------------------------------------------------------------------

    def forget(self, node: str) -> None:
        self._nodes.pop(node, None)
        for cmd_id in [k for k, r in self._requests.items() if r.node == node]:
            del self._requests[cmd_id]

    def known(self) -> int:
        return len(self._nodes)
