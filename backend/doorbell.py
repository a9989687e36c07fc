"""What analysis tells everyone, in the loop's thread (docs/protocol.md "Doorbell events",
docs/home-assistant.md):

- `<prefix>/_backend/analysis/<node>`, retained: the findings in the node's newest analysed
  frame (motion, faces, who) and the last person it saw; Home Assistant's Motion, Person and
  Last person entities read it.
- `<prefix>/<node>/doorbell`, not retained: `known_person` or `unknown_person`, the topic the
  node's `ring` goes to, so Home Assistant's doorbell event entity reads one topic.

When a person event goes out (`person_events`):
- `doorbell` (the default): for a frame with trigger `button` (the one the node captures when
  its doorbell button is pressed) that shows a face: one event, about the closest known face,
  else the closest face. Who rang is what a doorbell's user wants to be told, once per ring;
  a camera capturing every few seconds with someone in view would otherwise notify all day.
  The Person and Last person entities still follow every analysed frame.
- `all`: for every analysed frame with a face, at most once per node and person (a name, or
  `unknown`) every `person_event_cooldown` seconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from espcam.backend import discovery
from espcam.backend.config import Settings
from espcam.backend.findings import UNKNOWN, Findings
from espcam.backend.nodes import iso_utc
from espcam.backend.protocol import topic

log = logging.getLogger("espcam.doorbell")

Publish = Callable[[str, bytes | str, bool, int], None]  # topic, payload, retain, qos
BUTTON = "button"


class Doorbell:
    def __init__(self, prefix: str, settings: Settings, publish: Publish,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix, self.settings, self._publish, self._clock = prefix, settings, publish, clock
        self._last_event: dict[tuple[str, str], float] = {}  # (node, person) -> when

    def findings(self, f: Findings) -> None:
        event = person_event(f)
        if event is not None and self._wanted(f, event):  # the doorbell first: someone waits
            self._publish(topic(self.prefix, f.node, "doorbell"), json.dumps(event), False, 1)
            log.info("node %s frame %d: %s%s", f.node, f.frame_id, event["event_type"],
                     f" {event['name']}" if "name" in event else "")
        self._publish(discovery.analysis_topic(self.prefix, f.node), json.dumps(document(f)),
                      True, 1)

    def _wanted(self, f: Findings, event: dict[str, Any]) -> bool:
        if self.settings.person_events == "doorbell":
            return f.trigger == BUTTON
        key = (f.node, event.get("name", UNKNOWN))
        now = self._clock()
        last = self._last_event.get(key)
        if last is not None and now - last < self.settings.person_event_cooldown:
            return False
        self._last_event[key] = now
        if len(self._last_event) > 10_000:  # bounded: the oldest go first
            for k in sorted(self._last_event, key=self._last_event.__getitem__)[:5000]:
                del self._last_event[k]
        return True

    def forget(self, node: str) -> None:
        self._publish(discovery.analysis_topic(self.prefix, node), b"", True, 1)
        for key in [k for k in self._last_event if k[0] == node]:
            del self._last_event[key]


def document(f: Findings) -> dict[str, Any]:
    """The retained findings document of a node's newest analysed frame."""
    return {
        "node": f.node,
        "frame": f.frame_id,
        "crc32": f.crc,
        "file": f.file,
        "trigger": f.trigger,
        "analysed_at": iso_utc(f.analysed_at),
        "motion": f.moved,
        "motion_score": f.motion,
        "motion_threshold": f.threshold,
        "motion_box": f.motion_box,
        "faces": f.faces,
        "people": f.names,
        "last_person": f.last_person,
        "last_person_at": iso_utc(f.last_person_at),
        "skipped": f.skipped,
        "ms": f.ms,
    }


def person_event(f: Findings) -> dict[str, Any] | None:
    """The doorbell event for a frame's faces (docs/protocol.md), None without a face."""
    face = f.best()
    if face is None:
        return None
    where = {"node": f.node, "frame": f.frame_id, "file": f.file}
    if face.get("name"):
        return {"event_type": "known_person", "name": face["name"],
                "distance": face.get("distance"), **where}
    return {"event_type": "unknown_person", "distance": face.get("distance"), **where}
