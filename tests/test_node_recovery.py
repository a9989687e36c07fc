"""A simulated node when things break inside the board: the camera, a soft reset that leaves
the camera driver behind, a full flash, a flood of commands, an impossible sleep. Real
Mosquitto, real MicroPython, the unmodified node files."""

import json

from test_node_sim import command_state, online


def state_after(observer, start, pred, timeout=60):
    return observer.json_on("espcam/cam-1/state", pred, timeout, start)


def test_a_failing_camera_gives_an_error_ack_and_the_node_recovers(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    node.camera_fail(True)
    start = observer.mark()
    ack = observer.command("cam-1", {"id": "c1", "cmd": "capture"})
    assert ack["ok"] is False and ack["error"].startswith("camera: "), ack
    state = state_after(observer, start, lambda d: d["camera"] != "ok")
    assert "camera: " + state["camera"] == ack["error"]
    node.camera_fail(False)
    start = observer.mark()
    ack = observer.command("cam-1", {"id": "c2", "cmd": "capture"})
    assert ack["ok"], ack
    data, _, _ = observer.frame("cam-1", ack["result"]["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    assert command_state(observer, {"id": "s", "cmd": "status"})[1]["camera"] == "ok"
    assert node.boots == 1


def test_after_a_soft_reset_the_module_driver_is_released_before_it_starts_again(
        observer, make_node):
    node = make_node("cam-1", camera_api="module")
    online(observer)
    assert observer.command("cam-1", {"id": "c1", "cmd": "capture"})["ok"]
    boot = command_state(observer, {"id": "s", "cmd": "status"})[1]["boot"]
    start = observer.mark()
    node.soft_reset()   # Ctrl-D: the interpreter restarts, the camera driver's C state stays
    state = state_after(observer, start, lambda d: d["reset_cause"] == "soft")
    assert state["boot"] == boot   # not a power-on: RTC memory kept it
    assert state["camera"] == "ok"
    ack = observer.command("cam-1", {"id": "c2", "cmd": "capture"})
    assert ack["ok"], ack
    assert node.boots == 2


def test_a_camera_that_only_probes_after_a_chip_reset_gets_one(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    node.camera_stuck(True)
    start = observer.mark()
    node.soft_reset()
    state = state_after(observer, start, lambda d: d["reset_cause"] != "power_on")
    assert (state["reset_cause"], state["camera"]) == ("hard", "ok")
    assert "resetting the chip once" in node.log()
    assert node.boots == 3   # power-on, the soft reset, the one hard reset
    ack = observer.command("cam-1", {"id": "c", "cmd": "capture"})
    assert ack["ok"], ack


def test_a_dead_camera_costs_one_reset_and_never_a_reset_loop(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    node.camera_fail(True)
    start = observer.mark()
    node.soft_reset()
    state = state_after(observer, start, lambda d: d["reset_cause"] != "power_on")
    assert state["reset_cause"] == "hard" and state["camera"] != "ok"
    assert node.boots == 3
    # Another soft reset with the camera still dead: the reset was already spent (RTC memory).
    start = observer.mark()
    node.soft_reset()
    state = state_after(observer, start, lambda d: d["reset_cause"] != "hard")
    assert state["reset_cause"] == "soft" and state["camera"] != "ok"
    assert observer.command("cam-1", {"id": "st", "cmd": "status"})["ok"]
    assert node.boots == 4
    node.camera_fail(False)
    ack = observer.command("cam-1", {"id": "c", "cmd": "capture"})
    assert ack["ok"], ack


def test_a_capture_that_cannot_write_to_flash_is_answered_and_the_node_carries_on(
        observer, make_node):
    node = make_node("cam-1")
    online(observer)
    # The next capture has to reserve a new block of frame ids on flash, which cannot be
    # written: a directory sits where the new file would go.
    (node.dir / "rtc.bin").write_text(json.dumps({"fid": 256, "res": 256, "cap": True}))
    start = observer.mark()
    node.soft_reset()
    state_after(observer, start, lambda d: d["reset_cause"] == "soft")
    blocker = node.board_file("espcam_ids.json.tmp")
    blocker.mkdir()
    ack = observer.command("cam-1", {"id": "c1", "cmd": "capture"})
    assert ack["ok"] is False and "capture failed" in ack["error"], ack
    blocker.rmdir()
    start = observer.mark()
    ack = observer.command("cam-1", {"id": "c2", "cmd": "capture"})
    assert ack["ok"] and ack["result"]["frame"] > 256, ack
    data, _, _ = observer.frame("cam-1", ack["result"]["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    assert node.boots == 2


def test_a_config_change_that_cannot_be_saved_changes_nothing(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    node.board_file("config.json.tmp").mkdir()
    ack = observer.command("cam-1", {"id": "k", "cmd": "config",
                                     "set": {"quality": 40, "interval": 30}})
    assert ack["ok"] is False and "could not save settings" in ack["error"], ack
    settings = command_state(observer, {"id": "st", "cmd": "status"})[1]["settings"]
    assert (settings["quality"], settings["interval"]) == (80, 0)
    assert json.loads(node.board_file("config.json").read_text())["quality"] == 80


def test_every_command_of_a_flood_gets_its_own_ack(broker, observer, make_node):
    make_node("cam-1")
    online(observer)
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 2})["ok"]
    observer.topic("espcam/cam-1/availability", 30, payload=b"sleeping")
    # Queued by the broker while the node sleeps, delivered in one burst when it returns:
    # more than the node will hold at once.
    start = observer.mark()
    ids = [f"q{i}" for i in range(40)]
    for cid in ids:
        observer.c.publish("espcam/cam-1/cmd", json.dumps({"id": cid, "cmd": "status"}), qos=1)
    acks = {}
    for cid in ids:
        acks[cid] = observer.json_on("espcam/cam-1/ack", lambda d, c=cid: d["id"] == c, 60, start)
    busy = [a for a in acks.values() if not a["ok"]]
    assert busy, "the burst did not overflow the node's queue"
    assert all(a["cmd"] == "status" and "busy" in a["error"] for a in busy), busy
    nulls = [m for m in observer.msgs[start:]
             if m.topic == "espcam/cam-1/ack" and json.loads(m.payload)["id"] is None]
    assert nulls == []


def test_sleep_is_capped_at_fourteen_days(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    ack = observer.command("cam-1", {"id": "s1", "cmd": "sleep", "seconds": 1209601})
    assert ack["ok"] is False and "1209600" in ack["error"], ack
    ack = observer.command("cam-1", {"id": "s2", "cmd": "sleep", "seconds": 1209600})
    assert ack["ok"], ack
    node.wait_status("sleeping")
    assert node.sleeps[-1]["ms"] == 1209600 * 1000
