"""A simulated node's flash LED, PIR and deep sleep, and what its state document says about
them. Real Mosquitto, real MicroPython, the unmodified node files."""

import json

from espcam.sim.chip import BOARD_LIB
from mpy import lines_ok, run_mpy
from observer import parse_chunk
from test_node_sim import PIN_FLASH, birth_state, command_state, online, wait_until


def frames_on(observer, start, node="cam-1"):
    """Metadata of every frame whose first chunk arrived since `start`."""
    out = []
    for m in observer.msgs[start:]:
        if m.topic == f"espcam/{node}/frame":
            c = parse_chunk(m.payload)
            if c.index == 0 and not c.flags & 2:
                out.append((c.frame_id, c.meta))
    return out


def state_after(observer, start, pred, timeout=60):
    return observer.json_on("espcam/cam-1/state", pred, timeout, start)


def test_flash_state_is_in_the_state_document(observer, make_node):
    node = make_node("cam-1")
    assert birth_state(observer)["flash"] == "off"
    ack, state = command_state(observer, {"id": "f1", "cmd": "flash", "state": "on"})
    assert ack["ok"] and state["flash"] == "on"
    ack, state = command_state(observer, {"id": "f2", "cmd": "flash", "state": "off"})
    assert ack["ok"] and state["flash"] == "off"
    start = observer.mark()
    ack, state = command_state(observer, {"id": "f3", "cmd": "flash", "state": "pulse",
                                          "ms": 300})
    assert ack["ok"] and state["flash"] == "on"
    # When the pulse ends the node says so, and that is what a late subscriber reads.
    assert state_after(observer, start, lambda d: d["flash"] == "off")
    wait_until(lambda: node.pins().get(PIN_FLASH) == 0, what="pulse off")


def test_flash_on_capture_lights_the_led_for_the_picture_only(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    assert observer.command("cam-1", {"id": "c1", "cmd": "capture"})["ok"]
    assert node.flash_at_captures() == [0]
    assert observer.command("cam-1", {"id": "k", "cmd": "config",
                                      "set": {"flash_on_capture": True}})["ok"]
    start = observer.mark()
    ack = observer.command("cam-1", {"id": "c2", "cmd": "capture"})
    assert ack["ok"]
    data, _, _ = observer.frame("cam-1", ack["result"]["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    assert node.flash_at_captures() == [0, 1]
    assert node.pins().get(PIN_FLASH) == 0
    # A LED the user switched on stays on after the capture.
    assert observer.command("cam-1", {"id": "f", "cmd": "flash", "state": "on"})["ok"]
    assert observer.command("cam-1", {"id": "c3", "cmd": "capture"})["ok"]
    assert node.flash_at_captures() == [0, 1, 1]
    assert node.pins().get(PIN_FLASH) == 1


def test_the_flash_pin_is_held_low_during_deep_sleep(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    assert observer.command("cam-1", {"id": "f", "cmd": "flash", "state": "on"})["ok"]
    wait_until(lambda: node.pins().get(PIN_FLASH) == 1, what="flash on")
    start = observer.mark()
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 3600})["ok"]
    node.wait_status("sleeping")
    # While the chip sleeps only held pins keep a level: the LED's is held low.
    assert node.pins() == {PIN_FLASH: 0}
    state = state_after(observer, start, lambda d: d["sleep_until"] is not None)
    assert state["flash"] == "off"


def test_motion_within_the_cooldown_is_ignored(observer, make_node):
    node = make_node("cam-1", config={"pir_pin": 13, "motion_cooldown": 3600})
    online(observer)
    start = observer.mark()
    node.inject_motion()
    observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    node.inject_motion()
    node.wait_log("motion ignored: cooldown")
    assert [meta["trigger"] for _, meta in frames_on(observer, start)] == ["motion"]


def test_the_motion_cooldown_survives_deep_sleep(observer, make_node):
    node = make_node("cam-1", config={"pir_pin": 13, "motion_cooldown": 3600})
    online(observer)
    start = observer.mark()
    node.inject_motion()
    observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 2})["ok"]
    node.wait_status("sleeping")
    assert node.sleeps[-1]["ext0"] is None   # a PIR wake would only be ignored
    start = observer.mark()
    online(observer, start=start)
    node.inject_motion()
    node.wait_log("motion ignored: cooldown")
    assert frames_on(observer, start) == []
    assert node.boots == 2


def test_a_pir_output_still_high_does_not_keep_waking_a_duty_cycle_node(observer, make_node):
    node = make_node("cam-1", config={"pir_pin": 13, "motion_cooldown": 0,
                                      "sleep_interval": 2, "awake": 0})
    node.pir_high(True)   # e.g. someone standing in front of the camera
    start = 0
    wakes = []
    for _ in range(2):
        m = observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 60, start)
        meta = parse_chunk(m.payload).meta
        wakes.append((meta["trigger"], meta["wake"]))
        observer.topic("espcam/cam-1/availability", 30, start, payload=b"sleeping")
        start = observer.mark()
    assert wakes == [("boot", "none"), ("wake", "timer")]
    assert node.sleeps[0]["ext0"] is None


def test_after_the_cooldown_the_sleeping_node_arms_the_pir_again(observer, make_node):
    node = make_node("cam-1", config={"pir_pin": 13, "motion_cooldown": 8})
    online(observer)
    start = observer.mark()
    node.inject_motion()
    observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 3600})["ok"]
    observer.topic("espcam/cam-1/availability", 30, start, payload=b"sleeping")
    # First a timer nap to the end of the cooldown, then, without connecting, the rest of the
    # hour with the PIR armed.
    node.wait_for(lambda: len(node.sleeps) >= 2 and node.status == "sleeping", 60,
                  "the second sleep")
    assert node.sleeps[0]["ext0"] is None and node.sleeps[1]["ext0"] == 13
    assert node.sleeps[0]["ms"] <= 8000 and node.sleeps[1]["ms"] > 3500 * 1000
    start = observer.mark()
    node.inject_motion()
    m = observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    meta = parse_chunk(m.payload).meta
    assert (meta["trigger"], meta["wake"]) == ("motion", "pin")
    onlines = [m for m in observer.msgs
               if m.topic == "espcam/cam-1/availability" and m.payload == b"online"]
    assert len(onlines) == 2   # power-on and the motion wake: the nap never connected


def test_the_state_names_no_frame_after_a_power_cycle(observer, make_node):
    node = make_node("cam-1")
    first = birth_state(observer)
    assert first["frame"] is None
    fid = observer.command("cam-1", {"id": "c1", "cmd": "capture"})["result"]["frame"]
    assert command_state(observer, {"id": "s", "cmd": "status"})[1]["frame"] == fid
    node.kill()   # power cut: RTC memory is gone, the flash (and its id reservation) is kept
    start = observer.mark()
    node.start()
    state = birth_state(observer, start=start)
    assert node.boots == 2
    assert state["reset_cause"] == "power_on" and state["frame"] is None
    # A new power-on, whatever the uptimes say: the backend's `lost power` line rests on it.
    assert isinstance(first["boot"], int) and state["boot"] > first["boot"]
    ack = observer.command("cam-1", {"id": "c2", "cmd": "capture"})
    assert ack["result"]["frame"] > fid   # a gap, never a repeat
    state = command_state(observer, {"id": "s2", "cmd": "status"})[1]
    assert state["frame"] == ack["result"]["frame"]


def test_a_deep_sleep_the_chip_refuses_leaves_the_board_usable(tmp_path):
    (tmp_path / "sim.json").write_text(json.dumps({"camera_api": "module"}))
    lines = lines_ok(run_mpy("deepsleep_check.py", extra_path=[BOARD_LIB], cwd=tmp_path,
                             env={"ESPCAM_SIM_DIR": str(tmp_path)}))
    assert lines[0].startswith("refused ")
    assert lines[1:] == ["flash True", "ext0 None",
                         "armed ((12, 0), [13], True)",   # the button on ext0, the PIR on ext1
                         "ext0 None ext1 None"]
    assert not (tmp_path / "exit.json").exists()   # the chip never stopped
