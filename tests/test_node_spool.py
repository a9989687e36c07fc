"""The node's spool (protocol version 2, docs/protocol.md "Confirmation and the spool"): a
simulated node (the unmodified node files on MicroPython) against a real Mosquitto and a small
test-side confirmer (tests/confirmer.py) in the backend's place, which confirms only when a
test says so. Nothing here is mocked: what a test asserts is what the backend would receive."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
from confirmer import Confirmer
from espcam.backend.documents import parse_dropped
from mpy import lines_ok, run_mpy
from observer import Observer, parse_chunk
from polling import wait_until
from test_node_sim import command_state, online

SLEEP = "not confirmed before deep sleep"
# A link whose loss the node notices within a few seconds: pings every second, an answer or a
# read awaited at most 1 s.
QUICK_LINK = {"keepalive": 2, "socket_timeout": 1}


@pytest.fixture
def confirmer(broker):
    c = Confirmer(broker.host, broker.port)
    yield c
    assert c.refused == [], "the node sent something the backend's own readers refuse"
    c.close()


@pytest.fixture
def auto_confirmer(broker):
    c = Confirmer(broker.host, broker.port, auto=True)
    yield c
    assert c.refused == []
    c.close()


def capture(observer, cid: str) -> int:
    ack = observer.command("cam-1", {"id": cid, "cmd": "capture"})
    assert ack["ok"], ack
    return ack["result"]["frame"]


def spool_state(observer) -> dict:
    return command_state(observer, {"id": f"st{time.monotonic_ns()}", "cmd": "status"})[1]["spool"]


def reconnect(node, confirmer) -> int:
    """The access point goes away until the node has noticed, then comes back: returns the
    place in the confirmer's stream where the node's new connection begins."""
    start = confirmer.mark()
    seen = len(node.log())
    node.wifi_down(True)
    wait_until(lambda: "link lost" in node.log()[seen:], 30, "the node to notice")
    node.wifi_down(False)
    return confirmer.online(start=start, timeout=60)


def test_the_spool_keeps_its_books_on_micropython():
    # The RAM spool's own methods, no network: the oldest dropped for room, one tombstone run
    # for consecutive ids, said once a round in messages of at most 64 ids, forgotten when
    # confirmed (a run split by a confirm in its middle), sent again after 15 s doubling to
    # 10 min, and what RTC memory keeps across a reset and a deep sleep.
    lines = lines_ok(run_mpy("spool_check.py"))
    assert lines == [
        "held [4, 5] 80 tombs [[1, 3, 0]]",
        "said [('spool full', 1, 3, 3)] again []",
        "larger False [4, 5] [[1, 3, 0], [6, 6, 3]]",
        "after confirm [4] [[1, 1, 0], [3, 3, 0], [6, 6, 3]] {'bytes': 40, 'budget': 100, "
        "'dropped': 3, 'frames': 1, 'kind': 'ram'}",
        "not yet False [('larger than the spool', 6, 6, 1)]",
        "round True [('spool full', 1, 3, 2), ('larger than the spool', 6, 6, 1)]",
        "runs [[1, 199, 0]] dropped 199",
        "pieces [('spool full', 1, 64, 64), ('spool full', 65, 128, 64), "
        "('spool full', 129, 192, 64), ('spool full', 193, 199, 7)]",
        "after 64 [[65, 199, 0]]",
        "retry [15000, 30000, 60000, 120000, 240000, 480000, 600000, 600000]",
        "rtc {'tb': [[3, 3, 0]], 'hd': [[7, 8], [10, 10]]}",
        "after reset [[3, 3, 0], [7, 8, 4], [10, 10, 4]] [('spool full', 3, 3, 1), "
        "('node reset before it was confirmed', 7, 10, 3)]",
        "after sleep [[11, 12, 1]] []",
    ]


def test_unconfirmed_frames_are_sent_again_until_confirmed_and_never_after(
        observer, confirmer, make_node):
    node = make_node("cam-1", config={"confirm_timeout": 1, **QUICK_LINK})
    online(observer)
    ids = [capture(observer, f"c{i}") for i in range(3)]
    captured = [p.read_bytes() for p in node.captures()]
    # Nobody confirms: each frame comes again by itself, marked resent, the bytes captured.
    for fid, data in zip(ids, captured, strict=True):
        assert confirmer.wait_frame(fid, resent=False).data == data
        assert confirmer.wait_frame(fid, resent=True).data == data
        assert confirmer.wait_frame(fid, resent=True).version == 2
    state = spool_state(observer)
    assert (state["kind"], state["frames"], state["dropped"]) == ("ram", 3, 0)
    assert state["bytes"] == sum(map(len, captured))
    confirmer.confirm("cam-1", stored=ids[:2])
    assert spool_state(observer)["frames"] == 1
    # After a new connection the node sends everything it holds, oldest first: the third
    # frame, and not the two confirmed before.
    start = reconnect(node, confirmer)
    assert confirmer.wait_frame(ids[2], start=start, resent=True).data == captured[2]
    assert [a.frame_id for a in confirmer.arrivals(start=start)][:1] == [ids[2]]
    assert not {a.frame_id for a in confirmer.arrivals(start=start)} & set(ids[:2])
    confirmer.confirm("cam-1", stored=[ids[2]])
    state = spool_state(observer)
    assert (state["frames"], state["bytes"], state["dropped"]) == (0, 0, 0)


def test_frames_captured_while_the_broker_is_down_are_all_delivered_after_it_returns(
        broker, observer, auto_confirmer, make_node):
    node = make_node("cam-1", config={"interval": 1})
    auto_confirmer.wait(lambda: len(auto_confirmer.arrivals()) >= 2, what="two frames")
    broker.stop()
    before = len(node.captures())
    wait_until(lambda: "connect failed" in node.log(), 30, "the node to find the broker gone")
    # The node goes on capturing into its spool while it cannot send.
    wait_until(lambda: len(node.captures()) >= before + 3, 30, "captures while offline")
    broker.start()
    again = Observer(broker.host, broker.port)
    try:
        assert again.command("cam-1", {"id": "k", "cmd": "config", "set": {"interval": 0}},
                             timeout=60)["ok"]
        captured = [p.read_bytes() for p in node.captures()]
        assert len(captured) >= before + 3
        # Frame ids of a new node count its captures from 1: every one of them arrives whole.
        for fid, data in enumerate(captured, 1):
            assert auto_confirmer.wait_frame(fid, timeout=60).data == data
        wait_until(lambda: spool_state(again)["frames"] == 0, 60, "everything confirmed")
    finally:
        again.close()
    assert auto_confirmer.drops() == []


def test_a_full_spool_drops_the_oldest_and_says_so_until_confirmed(
        observer, confirmer, make_node):
    # Room for two of the simulator's frames (about 45 KB each).
    node = make_node("cam-1", config={"spool_bytes": 100_000, "confirm_timeout": 1,
                                      **QUICK_LINK})
    online(observer)
    ids = [capture(observer, f"c{i}") for i in range(5)]
    state = spool_state(observer)
    assert (state["frames"], state["dropped"], state["budget"]) == (2, 3, 100_000)
    assert state["bytes"] <= 100_000
    # The tombstones of exactly the three oldest go out, and again, until confirmed.
    def told_twice():
        counts = Counter(i for d in confirmer.drops() for i in d.frames)
        return all(counts[i] >= 2 for i in ids[:3])

    confirmer.wait(told_twice, what="every tombstone said twice")
    for d in confirmer.drops():
        assert d.reason == "spool full" and set(d.frames) <= set(ids[:3]), d
        assert parse_dropped(d.payload) == (d.frames, d.reason)
    confirmer.confirm("cam-1", stored=ids[3:], lost=ids[:3])
    state = spool_state(observer)
    assert (state["frames"], state["dropped"]) == (0, 0)
    # Nothing is said again after a new connection: a new frame is held and sent again after
    # the connect, which is when tombstones would go out first.
    fid = capture(observer, "c5")
    start = reconnect(node, confirmer)
    confirmer.wait_frame(fid, start=start, resent=True)
    assert confirmer.drops(start=start) == []


def test_frames_held_in_ram_at_a_reboot_are_said_after_it(observer, confirmer, make_node):
    node = make_node("cam-1")
    online(observer)
    fid = capture(observer, "c")
    assert observer.command("cam-1", {"id": "r", "cmd": "reboot"})["ok"]
    d = confirmer.wait_dropped(timeout=60)
    assert (d.frames, d.reason) == ([fid], "node reset before it was confirmed")
    assert node.boots == 2


def test_a_duty_cycle_node_says_after_its_wake_what_it_could_not_keep_through_the_sleep(
        confirmer, make_node):
    node = make_node("cam-1", config={"sleep_interval": 2, "awake": 1, "pir_pin": None})
    arrival = confirmer.wait(lambda: confirmer.arrivals(), what="the first frame")[0]
    first = arrival.frame_id
    wake = confirmer.online(start=arrival.at)
    # Its RAM spool could not keep the unconfirmed frame through the sleep: the tombstone came
    # through it in RTC memory and is said after the wake.
    d = confirmer.wait_dropped(start=wake)
    assert (d.frames, d.reason) == ([first], SLEEP)
    assert not [x for x in confirmer.drops(start=0) if x.at < wake]
    # Confirmed lost, it is not said again; the frames of later wakes are.
    confirmer.confirm("cam-1", lost=[first])
    later = confirmer.online(start=confirmer.online(start=wake))
    d = confirmer.wait_dropped(start=later)
    assert first not in d.frames and d.reason == SLEEP and d.frames
    assert node.sleeps and all(s["ms"] == 2000 for s in node.sleeps)


def test_a_duty_cycle_node_sleeps_as_soon_as_its_frame_is_confirmed(
        auto_confirmer, make_node):
    # Ten minutes awake at most, but the node sleeps once the backend has its frame.
    node = make_node("cam-1", config={"sleep_interval": 2, "awake": 600, "pir_pin": None})
    arrival = auto_confirmer.wait(lambda: auto_confirmer.arrivals(), what="a frame")[0]
    node.wait_status("sleeping", timeout=60)
    start = auto_confirmer.online(start=arrival.at)
    again = auto_confirmer.wait_frame(arrival.frame_id + 1, start=start)
    assert again.data == node.captures()[-1].read_bytes()
    node.wait_for(lambda: len(node.sleeps) >= 2, 60, "the second sleep")
    assert auto_confirmer.drops() == []


# ---------------------------------------------------------------- the SD card spool

SD = {"spool": "sd", "confirm_timeout": 600}


def card(node) -> list[str]:
    d = node.dir / "sd" / "espcam-spool"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_a_power_cut_in_the_middle_of_a_frame_loses_nothing_with_the_sd_spool(
        observer, confirmer, make_node):
    node = make_node("cam-1", config={**SD, "chunk_size": 256})
    online(observer)
    frozen = threading.Event()
    relay = observer.c.on_message

    def freeze_at_first_chunk(c, u, m):
        # In the observer's network thread: the node is stopped within a few chunks.
        if m.topic == "espcam/cam-1/frame" and not frozen.is_set():
            os.kill(node.process.pid, signal.SIGSTOP)
            frozen.set()
        relay(c, u, m)

    observer.c.on_message = freeze_at_first_chunk
    for attempt in range(10):
        start = observer.mark()
        frozen.clear()
        observer.c.publish("espcam/cam-1/cmd", json.dumps({"id": f"c{attempt}",
                                                            "cmd": "capture"}), qos=1)
        assert frozen.wait(30), "no chunk of the frame arrived"
        time.sleep(0.3)   # whatever the node had written before the SIGSTOP arrives
        chunks = [parse_chunk(m.payload) for m in observer.msgs[start:]
                  if m.topic == "espcam/cam-1/frame"]
        fid = chunks[0].frame_id
        if len(chunks) < chunks[0].count:
            break   # caught in the middle of the frame
        os.kill(node.process.pid, signal.SIGCONT)   # the whole frame was out already; again
    else:
        pytest.fail("never caught a frame half sent")
    observer.c.on_message = relay
    captured = node.captures()[-1].read_bytes()
    node.kill()   # the power goes, in the middle of the frame
    assert f"{fid:08x}.frm" in card(node)
    start, chunks = confirmer.mark(), len(confirmer.chunks)
    node.start()
    assert confirmer.wait_frame(fid, start=start, timeout=60).data == captured
    assert all(flags & 2 for _, f, _, flags in confirmer.chunks[chunks:] if f == fid)
    confirmer.confirm("cam-1", stored=list(range(1, fid + 1)))
    state = spool_state(observer)
    assert (state["kind"], state["frames"], state["bytes"], state["dropped"]) == ("sd", 0, 0, 0)
    assert not [n for n in card(node) if n.endswith((".frm", ".tmp"))]


def test_a_power_cut_while_a_frame_is_written_to_the_card_is_said_after_the_boot(
        observer, confirmer, make_node):
    node = make_node("cam-1", config=SD)
    online(observer)
    # The stand-in card stops the next frame file half written and freezes the board there.
    (node.ctl / "sd_cut").touch()
    observer.c.publish("espcam/cam-1/cmd", json.dumps({"id": "c", "cmd": "capture"}), qos=1)
    wait_until(lambda: (node.ctl / "sd_frozen").exists(), 30, "the write to the card")
    node.kill()
    assert card(node) == ["00000001.tmp"]
    node.start()
    d = confirmer.wait_dropped(timeout=60)
    assert (d.frames, d.reason) == ([1], "power lost while saving it")
    # The frame itself never went out: the node writes it to the card before sending it.
    assert not [c for c in confirmer.chunks if c[1] == 1]
    assert "00000001.tmp" not in card(node)
    assert json.loads((node.dir / "sd" / "espcam-spool" / "tombs.json").read_text()) == \
        [[1, 1, 2]]
    confirmer.confirm("cam-1", lost=[1])
    assert spool_state(observer)["dropped"] == 0
    assert json.loads((node.dir / "sd" / "espcam-spool" / "tombs.json").read_text()) == []
    # The node carries on with the card: the next frame is held on it.
    fid = capture(observer, "c2")
    assert confirmer.wait_frame(fid).data == node.captures()[-1].read_bytes()
    assert card(node) == [f"{fid:08x}.frm", "tombs.json"]


def test_a_node_without_its_sd_card_holds_frames_in_ram_and_says_so(
        broker, observer, confirmer, tmp_path):
    from espcam.sim.node import SimNode

    node = SimNode("cam-1", tmp_path / "nocard", broker.host, broker.port, config=SD)
    (node.ctl / "sd_missing").touch()
    node.start()
    try:
        online(observer)
        assert "no SD card" in node.log()
        fid = capture(observer, "c")
        assert confirmer.wait_frame(fid).data == node.captures()[-1].read_bytes()
        state = spool_state(observer)
        assert (state["kind"], state["frames"]) == ("ram", 1)
    finally:
        node.stop()


# ---------------------------------------------------------------- memory

def jpegs(folder, sizes):
    from espcam.sim.images import jpeg_of_size, make_jpeg

    folder.mkdir()
    for i, size in enumerate(sizes):
        data = make_jpeg(*size, i, f"frame {i}") if isinstance(size, tuple) else jpeg_of_size(size)
        (folder / f"{i}.jpg").write_bytes(data)
    return folder


# A board without PSRAM and the module driver, which copies each frame onto the heap: frames
# of about 7 KB (docs/node.md, "Memory"); the class driver's 60 KB frames, copied out of its
# buffer only when a frame is still held at the next capture; a heap of 2 MB and VGA frames.
@pytest.mark.parametrize(("heapsize", "camera_api", "sizes", "spool_bytes", "captures"), [
    ("150k", "module", [(240, 176)] * 3, None, 30),
    ("150k", "class", [60_000, 61_000], None, 6),
    ("2m", "module", [45_000, 46_000, 47_000], 8_000_000, 60),
])
def test_a_spool_that_fills_the_heap_drops_its_oldest_frames_never_the_node(
        observer, confirmer, make_node, tmp_path, heapsize, camera_api, sizes, spool_bytes,
        captures):
    # The budget is larger than the heap: what bounds the spool is the room the node keeps for
    # the next frame and its connection. Nobody confirms.
    images = jpegs(tmp_path / "images", sizes)
    config = {"confirm_timeout": 600}
    if spool_bytes:
        config["spool_bytes"] = spool_bytes
    node = make_node("cam-1", heapsize=heapsize, camera_api=camera_api, images_dir=images,
                     config=config)
    online(observer)
    ids = [capture(observer, f"c{i}") for i in range(captures)]
    assert ids == list(range(1, captures + 1))
    state = spool_state(observer)
    held, dropped = state["frames"], state["dropped"]
    assert held >= 1 and dropped >= 1 and held + dropped == captures, state
    # The ones dropped are the oldest, each said once on `dropped` (the timer is 10 min away).
    told = confirmer.wait(lambda: sorted(i for d in confirmer.drops() for i in d.frames)
                          if sum(len(d.frames) for d in confirmer.drops()) >= dropped else None,
                          what="every tombstone")
    assert told == ids[:dropped]
    assert "MemoryError" not in node.log() and "out of memory" not in node.log()
    assert "no room on the heap" not in node.log()
    # The newest frames are all still held, whole.
    for fid, path in zip(ids[dropped:], node.captures()[dropped:], strict=True):
        ack = observer.command("cam-1", {"id": f"r{fid}", "cmd": "resend", "frame": fid})
        assert ack["ok"], ack
        assert confirmer.wait_frame(fid, resent=True).data == path.read_bytes()
    assert node.status == "running" and node.boots == 1
