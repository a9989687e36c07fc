"""What the backend tells everyone about stored frames and itself: the retained `image` and the
`event` of each stored frame, each node's report, and the backend's status document.

Runs in the loop's thread, after the store stage has said a frame is durable; each node's
frames are announced in the order they were stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from espcam.backend import discovery
from espcam.backend.nodes import NodeBook
from espcam.backend.protocol import RETAINED_NODE_TOPICS, backend_topic, topic
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.announce")

# topic, payload, retain, qos
Publish = Callable[[str, bytes | str, bool, int], None]


class Announcer:
    def __init__(self, prefix: str, locate: Callable[[StoredFrame], str],
                 publish: Publish) -> None:
        self.prefix, self._locate, self._publish = prefix, locate, publish

    def frame(self, stored: StoredFrame, jpeg: bytes, newest: bool,
              claimed_capture: float | None = None) -> None:
        if newest:  # a frame completing late must not replace a newer picture
            # QoS 0: the picture is a copy of a stored file, and the next frame replaces it.
            # At QoS 1 paho holds every JPEG until the broker acks it: 144 -> 97 MB peak RSS
            # in a backlog (docs/benchmarks.md).
            self._publish(topic(self.prefix, stored.node, "image"), jpeg, True, 0)
        event = {
            "node": stored.node,
            "frame": stored.frame_id,
            "path": stored.path,
            "file": self._locate(stored),
            "bytes": stored.bytes,
            "width": stored.width,
            "height": stored.height,
            "trigger": stored.trigger,
            "captured_at": stored.captured_at,
            "received_at": stored.received_at,
            "crc32": stored.crc,
        }
        if claimed_capture is not None:
            # The node's clock was ahead: its time is said, the receive time is used.
            event["claimed_captured_at"] = claimed_capture
        self._publish(topic(self.prefix, stored.node, "event"), json.dumps(event), False, 1)
        log.info("stored node %s frame %d: %s (%d bytes, %dx%d)", stored.node,
                 stored.frame_id, stored.path, stored.bytes, stored.width or 0,
                 stored.height or 0)

    def reports(self, nodes: NodeBook) -> None:
        for node, report in nodes.take_due():
            self._publish(discovery.report_topic(self.prefix, node), report.encode(node), True,
                          1)

    def status(self, doc: dict[str, Any]) -> None:
        self._publish(backend_topic(self.prefix, "status"), json.dumps(doc), True, 1)

    def forget(self, node: str) -> None:
        """Clear what is retained about the node (every retained topic of its own, and its
        report)."""
        for kind in RETAINED_NODE_TOPICS:
            self._publish(topic(self.prefix, node, kind), b"", True, 1)
        self._publish(discovery.report_topic(self.prefix, node), b"", True, 1)
