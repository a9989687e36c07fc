"""A simulated node's doorbell button (the unmodified node files on MicroPython, a real
Mosquitto, an observer of espcam/#): a press rings at once on `doorbell`, before the frame it
names (trigger `button`) reaches the broker, awake or waking the node from deep sleep; a
bouncing or impatient button rings once."""

import json

from confirmer import Confirmer
from observer import parse_chunk
from test_node_sim import PIN_FLASH, command_state, index_of, online

BUTTON = 12   # with the PIR on GPIO13 (the simulator's default), as docs/hardware.md wires it


def rings(observer, start=0, node="cam-1"):
    return [m for m in observer.msgs[start:] if m.topic == f"espcam/{node}/doorbell"]


def first_chunk(observer, fid, start=0, node="cam-1"):
    """The first chunk of frame fid on the broker, from `start` on."""
    return observer.wait(lambda m: m.topic == f"espcam/{node}/frame"
                         and parse_chunk(m.payload).frame_id == fid, 30, start)


def ring_then_frame(observer, node, start):
    """The next ring from `start` and the frame it names: (ring, frame bytes, metadata), the
    ring having reached the broker before the frame's first chunk."""
    ring_msg = observer.topic("espcam/cam-1/doorbell", 30, start)
    ring = json.loads(ring_msg.payload)
    assert not ring_msg.retain and ring_msg.qos == 1
    assert set(ring) == {"event_type", "at", "frame"} and ring["event_type"] == "ring"
    chunk = first_chunk(observer, ring["frame"], start)
    assert index_of(observer, ring_msg) < index_of(observer, chunk)
    data, meta, _ = observer.frame("cam-1", ring["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    return ring, meta


def test_a_press_while_awake_rings_at_once_and_its_frame_follows(observer, make_node):
    node = make_node("cam-1", config={"button_pin": BUTTON})
    online(observer)
    start = observer.mark()
    node.press_button()
    ring, meta = ring_then_frame(observer, node, start)
    assert isinstance(ring["at"], (int, float))   # the simulated clock is set
    assert meta["trigger"] == "button" and meta["wake"] == "none"
    # The state says the node has a button; the frame id of the ring is the node's last frame.
    _, state = command_state(observer, {"id": "s", "cmd": "status"})
    assert state["settings"]["button"] is True and state["frame"] == ring["frame"]


def test_a_bouncing_button_rings_once(observer, make_node):
    node = make_node("cam-1", config={"button_pin": BUTTON})
    online(observer)
    start = observer.mark()
    node.press_button(bounces=6)   # six edges of one press, as a bouncing contact gives
    ring_then_frame(observer, node, start)
    # The node has looked at the button again since (a command answered after the frame).
    assert observer.command("cam-1", {"id": "s", "cmd": "status"})["ok"]
    assert len(rings(observer, start)) == 1
    assert len(node.captures()) == 1
    assert "ring ignored" not in node.log()


def test_a_second_press_within_the_ring_cooldown_does_not_ring(observer, make_node):
    node = make_node("cam-1", config={"button_pin": BUTTON, "ring_cooldown": 3600})
    online(observer)
    start = observer.mark()
    node.press_button()
    ring_then_frame(observer, node, start)
    node.press_button()
    node.wait_log("ring ignored: within ring_cooldown")
    assert observer.command("cam-1", {"id": "s", "cmd": "status"})["ok"]
    assert len(rings(observer, start)) == 1 and len(node.captures()) == 1


def test_the_flash_lights_the_frame_of_a_ring_with_flash_on_capture(observer, make_node):
    node = make_node("cam-1", config={"button_pin": BUTTON, "flash_on_capture": True})
    online(observer)
    start = observer.mark()
    node.press_button()
    ring_then_frame(observer, node, start)
    assert node.flash_at_captures() == [1]
    assert node.pins().get(PIN_FLASH) == 0   # and off again after it


def test_a_press_wakes_a_sleeping_node_which_rings_before_its_frame(observer, make_node):
    node = make_node("cam-1", config={"button_pin": BUTTON})   # and the PIR on GPIO13
    online(observer)
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 3600})["ok"]
    observer.topic("espcam/cam-1/availability", 30, payload=b"sleeping")
    node.wait_status("sleeping")
    # The button on ext0 (its pull-up stays on), the PIR beside it on ext1.
    assert node.sleeps[-1]["ext0"] == BUTTON and node.sleeps[-1]["ext1"] == [13]
    start = observer.mark()
    node.press_button()
    online(observer, start=start)
    ring, meta = ring_then_frame(observer, node, start)
    assert (meta["trigger"], meta["wake"]) == ("button", "button")
    state = observer.json_on("espcam/cam-1/state", lambda d: d["reset_cause"] == "deepsleep",
                             start=start)
    assert state["wake"] == "button"
    assert node.boots == 2 and len(rings(observer)) == 1


def test_motion_still_wakes_a_sleeping_node_that_has_a_button(observer, make_node):
    node = make_node("cam-1", config={"button_pin": BUTTON})
    online(observer)
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 3600})["ok"]
    node.wait_status("sleeping")
    start = observer.mark()
    node.inject_motion()
    online(observer, start=start)
    m = observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    _, meta, _ = observer.frame("cam-1", parse_chunk(m.payload).frame_id, start=start)
    assert (meta["trigger"], meta["wake"]) == ("motion", "pin")
    assert rings(observer) == []


def test_a_button_held_at_sleep_is_armed_once_released(observer, make_node):
    # Pressed drives the pin high here (button_level 1), no PIR: the button alone on ext0.
    node = make_node("cam-1", config={"button_pin": 14, "button_level": 1, "pir_pin": None,
                                      "ring_cooldown": 0})
    online(observer)
    node.button_held(True)   # a level wake armed now would fire at once, again and again
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 3600})["ok"]
    node.wait_status("sleeping")
    assert node.sleeps[0]["ext0"] is None and node.sleeps[0]["ms"] <= 5000
    node.button_held(False)
    # The timer nap ends, the node finds the button released and sleeps out the hour with it
    # armed, without connecting.
    node.wait_for(lambda: len(node.sleeps) >= 2 and node.status == "sleeping", 60,
                  "the second sleep")
    assert node.sleeps[1]["ext0"] == 14 and "ext1" not in node.sleeps[1]
    start = observer.mark()
    node.press_button()
    ring, meta = ring_then_frame(observer, node, start)
    assert meta["wake"] == "button"
    onlines = [m for m in observer.msgs
               if m.topic == "espcam/cam-1/availability" and m.payload == b"online"]
    assert len(onlines) == 2   # power-on and the button wake: the nap never connected


def test_a_ring_while_the_broker_is_away_goes_out_first_after_the_reconnect(
        broker, observer, make_node):
    # A short keepalive: the idle node finds the link dead within seconds.
    node = make_node("cam-1", config={"button_pin": BUTTON, "keepalive": 2})
    online(observer)
    node.wifi_down(True)
    node.wait_log("connect failed")
    node.press_button()
    node.wait_log("held until the broker is back")
    start = observer.mark()
    node.wifi_down(False)
    ring, meta = ring_then_frame(observer, node, start)
    assert meta["trigger"] == "button"
    # Published on the new connection right after `online` and the state, before anything else.
    after = [m.topic.rsplit("/", 1)[1] for m in observer.msgs[start:]
             if m.topic.startswith("espcam/cam-1/") and not m.retain]
    assert after[:3] == ["availability", "state", "doorbell"], after


def test_rings_leave_the_heap_of_a_board_without_psram_as_they_found_it(broker, observer,
                                                                      make_node, tmp_path):
    from test_node_spool import jpegs

    confirmer = Confirmer(broker.host, broker.port, auto=True)   # the backend's confirmations
    try:
        node = make_node("cam-1", heapsize="150k", images_dir=jpegs(tmp_path / "img",
                                                                    [(240, 176)] * 3),
                         config={"button_pin": BUTTON, "ring_cooldown": 0})
        online(observer)
        heap = []
        for i in range(8):
            start = observer.mark()
            node.press_button()
            ring_then_frame(observer, node, start)
            heap.append(settled_heap(observer, f"s{i}"))
        assert "MemoryError" not in node.log() and "out of memory" not in node.log()
        assert node.status == "running" and node.boots == 1
        # Each ring and its frame give back what they took once the frame is confirmed.
        assert min(heap[1:]) >= heap[0] - 1024, heap
    finally:
        confirmer.close()


def settled_heap(observer, cid):
    """heap_free of a state document published with nothing left in the spool."""
    for n in range(200):
        _, state = command_state(observer, {"id": f"{cid}-{n}", "cmd": "status"})
        if state["spool"]["frames"] == 0:
            return state["heap_free"]
    raise AssertionError(f"the spool never emptied: {state['spool']}")


def test_a_button_the_board_cannot_wake_on_stops_the_node_with_a_config_error(make_node):
    node = make_node("cam-1", config={"button_pin": 5})   # a camera pin, and no RTC GPIO
    node.wait_for(lambda: node.status != "running", 30, "the app to stop")
    assert "CONFIG ERROR: button_pin must be a GPIO that wakes the board from deep sleep" \
        in node.log()
    node = make_node("cam-2", config={"button_pin": 13})  # the PIR's pin
    node.wait_for(lambda: node.status != "running", 30, "the app to stop")
    assert "CONFIG ERROR: button_pin and pir_pin must be different GPIOs" in node.log()
