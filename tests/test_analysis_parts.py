"""The parts of analysis that need no broker: motion between two frames, the per-node motion
thresholds and the other analysis settings, matching faces against enrolled people, and which
face a doorbell event is about."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).parent))

import facephotos  # noqa: E402
from espcam.backend import motion  # noqa: E402
from espcam.backend.config import ConfigError, load  # noqa: E402
from espcam.backend.doorbell import person_event  # noqa: E402
from espcam.backend.findings import Findings  # noqa: E402
from espcam.backend.people import Gallery, check_name  # noqa: E402


def jpeg(img: Image.Image, quality: int = 75) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return Image.open(io.BytesIO(facephotos.frame("hopper", left=300))).convert("RGB")


def test_motion_is_what_moved_not_noise_nor_light(scene):
    before = motion.reduce(jpeg(scene))
    # The same scene again (another JPEG encoding), and brighter: no motion.
    assert motion.compare(before, motion.reduce(jpeg(scene, 60))).score == 0
    brighter = motion.compare(before, motion.reduce(jpeg(ImageEnhance.Brightness(scene)
                                                         .enhance(1.2))))
    assert brighter.score < motion.DEFAULT_THRESHOLD
    # Someone walks in on the left: a score over the threshold, and the region around them.
    walked_in = scene.copy()
    ImageDraw.Draw(walked_in).rectangle((40, 120, 160, 470), fill=(200, 180, 160))
    moved = motion.compare(before, motion.reduce(jpeg(walked_in)))
    assert moved.score > 5 * motion.DEFAULT_THRESHOLD
    left, top, right, bottom = moved.box
    assert 20 <= left <= 48 and 100 <= top <= 128 and 152 <= right <= 180 and bottom >= 460
    # Another frame size (the node's setting changed) is no comparison at all.
    smaller = motion.reduce(jpeg(scene.resize((320, 240))))
    assert motion.compare(before, smaller) is None


def test_motion_thresholds_per_node_from_toml_environment_and_flags(tmp_path):
    f = tmp_path / "espcam.toml"
    f.write_text('[analysis]\nmotion_threshold = 2.5\n'
                 'motion_thresholds = { cam-door = 5.0, cam-yard = 0.5 }\n'
                 'person_events = "all"\n')
    s = load(f, env={})
    assert s.motion_threshold == 2.5 and s.person_events == "all"
    assert motion.parse_thresholds(s.motion_thresholds) == {"cam-door": 5.0, "cam-yard": 0.5}
    s = load(None, env={"ESPCAM_MOTION_THRESHOLDS": "cam-door=7, cam-x=1"})
    assert motion.parse_thresholds(s.motion_thresholds) == {"cam-door": 7.0, "cam-x": 1.0}
    for env in ({"ESPCAM_MOTION_THRESHOLDS": "cam-door"},
                {"ESPCAM_MOTION_THRESHOLDS": "cam-door=lots"},
                {"ESPCAM_MOTION_THRESHOLDS": "cam-door=101"},
                {"ESPCAM_PERSON_EVENTS": "sometimes"},
                {"ESPCAM_FACE_TOLERANCE": "0"},
                {"ESPCAM_ANALYSIS_NICE": "20"},
                {"ESPCAM_ANALYSIS_QUEUE": "0"}):
        with pytest.raises(ConfigError):
            load(None, env=env)


def test_a_face_is_the_closest_enrolled_person_within_the_tolerance():
    g = Gallery("m")
    g.add("alice", [0.0] * 127 + [0.1], "a.jpg")
    g.add("alice", [0.0] * 127 + [0.3], "b.jpg")
    g.add("bob", [0.5] * 128, "c.jpg")
    assert g.match([0.0] * 128) == ("alice", 0.1)  # the closer of alice's two photos
    assert g.match([0.5] * 127 + [0.4]) == ("bob", 0.1)
    name, d = g.match([1.0] * 128)
    assert name is None and d > 0.6  # closest is bob, too far: a stranger, with the distance
    assert Gallery("m").match([0.0] * 128) == (None, None)  # no one enrolled
    assert check_name("Alice Smith") == "Alice Smith"


def test_the_doorbell_event_is_about_the_closest_known_face():
    f = Findings("cam-door", 3, 1, file="/d/f.jpg", faces=[
        {"box": [0, 0, 1, 1], "name": None, "distance": 0.7},
        {"box": [0, 0, 2, 2], "name": "bob", "distance": 0.5},
        {"box": [0, 0, 3, 3], "name": "alice", "distance": 0.3}])
    assert person_event(f) == {"event_type": "known_person", "name": "alice", "distance": 0.3,
                               "node": "cam-door", "frame": 3, "file": "/d/f.jpg"}
    assert f.names == ["alice", "bob", "unknown"]
    strangers = Findings("cam-door", 4, 1, faces=[{"box": [0, 0, 1, 1], "name": None,
                                                   "distance": None}])
    assert person_event(strangers)["event_type"] == "unknown_person"
    assert person_event(Findings("cam-door", 5, 1)) is None  # no face, no person event


def test_the_worker_at_nice_19_also_takes_the_idle_scheduling_policy():
    # In a process of its own: a process cannot raise its priority again.
    import subprocess

    code = ("import os; from espcam.backend.analysis_worker import lower_priority; "
            "said = lower_priority({nice}); print(said, '|', os.getpriority(os.PRIO_PROCESS, 0),"
            " os.sched_getscheduler(0) == os.SCHED_IDLE)")
    said = [subprocess.run([sys.executable, "-c", code.format(nice=n)], capture_output=True,
                           text=True, check=True).stdout.strip() for n in (19, 5)]
    assert said == ["nice 19, SCHED_IDLE | 19 True", "nice 5 | 5 False"]
