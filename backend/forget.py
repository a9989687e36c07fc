"""`espcam forget NODE`: remove a node from Home Assistant and from the backend's live state.

The request goes to the backend on `<prefix>/_backend/forget` (QoS 1; the broker queues it in
the backend's persistent session if the backend is down), and the backend answers on
`<prefix>/_backend/ack`. The retained topics that make the node visible (Home Assistant
discovery, availability, state, image, the backend's report) are also cleared here directly, so
Home Assistant drops the device even while the backend is not running.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from espcam.backend import discovery
from espcam.backend.config import Settings
from espcam.backend.documents import new_command_id
from espcam.backend.protocol import RETAINED_NODE_TOPICS, backend_topic, topic
from espcam.backend.session import Session


@dataclass
class ForgetResult:
    done: bool  # the backend confirmed; False: queued for it (not running) or no answer
    message: str


def forget(settings: Settings, node: str, delete_frames: bool = False) -> ForgetResult:
    prefix = settings.prefix
    req_id = new_command_id("forget")
    ack_topic = backend_topic(prefix, "ack")
    avail_topic = backend_topic(prefix, "availability")
    with Session(settings, "forget") as s:
        s.subscribe(ack_topic, avail_topic)
        s.publish(discovery.discovery_topic(settings.ha_prefix, node), b"", retain=True)
        for kind in RETAINED_NODE_TOPICS:
            s.publish(topic(prefix, node, kind), b"", retain=True)
        s.publish(discovery.report_topic(prefix, node), b"", retain=True)
        s.publish(discovery.analysis_topic(prefix, node), b"", retain=True)
        s.publish(backend_topic(prefix, "forget"), json.dumps(
            {"id": req_id, "node": node, "delete_frames": delete_frames}))
        backend_state = None
        deadline = time.monotonic() + settings.command_timeout
        while (msg := s.next(deadline)) is not None:
            if msg.topic == avail_topic:
                backend_state = msg.payload.decode("utf-8", "replace")
                if backend_state != "online":
                    return ForgetResult(False, f"node {node} removed from Home Assistant; the "
                                        "backend is not running: it forgets the node when it "
                                        "starts")
            elif msg.topic == ack_topic:
                try:
                    ack = json.loads(msg.payload)
                except ValueError:
                    continue
                if not isinstance(ack, dict) or ack.get("id") != req_id:
                    continue
                if not ack.get("ok"):
                    return ForgetResult(False, f"backend could not forget {node}: "
                                        f"{ack.get('error')}")
                deleted = (ack.get("result") or {}).get("frames_deleted", 0)
                kept = (f"{deleted} stored frame(s) deleted" if delete_frames
                        else "stored frames kept")
                return ForgetResult(True, f"forgot node {node}: removed from Home Assistant "
                                    f"and the backend's live state; {kept}")
    return ForgetResult(False, f"node {node} removed from Home Assistant; no answer from the "
                        f"backend within {settings.command_timeout:g}s")
