"""A simulated node (the unmodified node/ files on MicroPython) against a real Mosquitto."""

import json
import os
import signal
import threading
import time

import pytest
from observer import parse_chunk, retained
from polling import wait_until

PIN_FLASH = 4


def online(observer, node="cam-1", start=0, timeout=30):
    return observer.topic(f"espcam/{node}/availability", timeout, start, payload=b"online")


def index_of(observer, msg) -> int:
    return next(i for i, m in enumerate(observer.msgs) if m is msg)


def birth_state(observer, node="cam-1", start=0, timeout=30) -> dict:
    """The state document of the next connection from `start` on: a node publishes `online`,
    then its state, each time it connects; an earlier boot's state cannot be mistaken for it."""
    first = index_of(observer, online(observer, node, start, timeout)) + 1
    return json.loads(observer.topic(f"espcam/{node}/state", timeout, first).payload)


def command_state(observer, cmd: dict, node="cam-1", timeout=30) -> tuple[dict, dict]:
    """Runs a command; returns its ack and the state document it published: the node publishes
    a command's state before its ack, on one connection, and MQTT keeps the order."""
    start = observer.mark()
    observer.c.publish(f"espcam/{node}/cmd", json.dumps(cmd), qos=1)
    ack = observer.wait(lambda m: m.topic == f"espcam/{node}/ack"
                        and json.loads(m.payload)["id"] == cmd["id"], timeout, start)
    states = [m for m in observer.msgs[start:index_of(observer, ack)]
              if m.topic == f"espcam/{node}/state"]
    assert states, f"{cmd['cmd']} published no state before its ack"
    return json.loads(ack.payload), json.loads(states[-1].payload)




def test_birth_and_retained_state(broker, observer, make_node):
    node = make_node("cam-1")
    state = birth_state(observer)
    assert state["proto"] == 2 and state["node"] == "cam-1"
    assert state["spool"] == {"kind": "ram", "frames": 0, "bytes": 0, "budget": 1_500_000,
                              "dropped": 0}
    assert state["reset_cause"] == "power_on"
    assert state["settings"]["frame_size"] == "VGA"
    for key in ("app", "fw", "ip", "rssi", "heap_free", "uptime", "mac", "camera"):
        assert key in state
    # A subscriber arriving later still sees both, because they are retained.
    assert retained(broker.host, broker.port, "espcam/cam-1/availability") == b"online"
    assert json.loads(retained(broker.host, broker.port, "espcam/cam-1/state"))["node"] == "cam-1"
    assert node.status == "running"


@pytest.mark.parametrize("camera_api", ["module", "class"])
def test_capture_command_delivers_the_exact_bytes_captured(observer, make_node, camera_api):
    node = make_node("cam-1", camera_api=camera_api)
    online(observer)
    start = observer.mark()
    ack = observer.command("cam-1", {"id": "c1", "cmd": "capture"})
    assert ack["ok"] is True and ack["cmd"] == "capture"
    fid = ack["result"]["frame"]
    data, meta, chunks = observer.frame("cam-1", fid, start=start)
    assert data == node.captures()[-1].read_bytes()
    assert data[:2] == b"\xff\xd8"
    assert meta["trigger"] == "command" and meta["cmd"] == "c1" and meta["fs"] == "VGA"
    # Two captures in a row are two different frames with different ids.
    ack2 = observer.command("cam-1", {"id": "c2", "cmd": "capture"})
    data2, _, _ = observer.frame("cam-1", ack2["result"]["frame"], start=start)
    assert ack2["result"]["frame"] == fid + 1
    assert data2 == node.captures()[-1].read_bytes() and data2 != data


def test_flash_on_off_pulse_drive_the_led_pin(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    assert observer.command("cam-1", {"id": "f1", "cmd": "flash", "state": "on"})["ok"]
    wait_until(lambda: node.pins().get(PIN_FLASH) == 1, what="flash on")
    assert observer.command("cam-1", {"id": "f2", "cmd": "flash", "state": "off"})["ok"]
    wait_until(lambda: node.pins().get(PIN_FLASH) == 0, what="flash off")
    # A pulse long enough to be seen on the pin however slowly the ack comes back.
    ack = observer.command("cam-1", {"id": "f3", "cmd": "flash", "state": "pulse", "ms": 3000})
    assert ack["ok"] and ack["result"] == {"flash": "on"}
    wait_until(lambda: node.pins().get(PIN_FLASH) == 1, what="pulse on")
    wait_until(lambda: node.pins().get(PIN_FLASH) == 0, what="pulse off")


def test_sleep_is_not_offline_and_queued_commands_run_after_wake(broker, observer, make_node):
    node = make_node("cam-1")
    online(observer)
    ack = observer.command("cam-1", {"id": "s1", "cmd": "sleep", "seconds": 3})
    assert ack["ok"] and ack["result"] == {"sleep": 3}
    m = observer.wait(lambda m: m.topic == "espcam/cam-1/availability" and m.payload != b"online")
    assert m.payload == b"sleeping"
    # Sent while the node sleeps: the broker holds it in the node's persistent session.
    start = observer.mark()
    observer.c.publish("espcam/cam-1/cmd", json.dumps({"id": "q1", "cmd": "capture"}), qos=1)
    online(observer, start=start, timeout=40)
    ack = observer.json_on("espcam/cam-1/ack", lambda d: d["id"] == "q1", 30, start)
    assert ack["ok"]
    data, meta, _ = observer.frame("cam-1", ack["result"]["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    state = observer.json_on("espcam/cam-1/state", lambda d: d["reset_cause"] == "deepsleep",
                             start=start)
    assert state["wake"] == "timer"
    assert node.pins().get(PIN_FLASH, 0) == 0
    # No "offline" was ever published: sleeping is not going away.
    assert not [x for x in observer.msgs
                if x.topic == "espcam/cam-1/availability" and x.payload == b"offline"]


def test_config_change_survives_reboot(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    ack = observer.command("cam-1", {"id": "k1", "cmd": "config",
                                     "set": {"quality": 55, "frame_size": "QVGA"}})
    assert ack["ok"] and ack["result"]["settings"]["quality"] == 55
    boots = node.boots
    start = observer.mark()
    assert observer.command("cam-1", {"id": "r1", "cmd": "reboot"})["ok"]
    state = birth_state(observer, start=start)
    assert node.boots == boots + 1 and state["reset_cause"] == "hard"   # machine.reset()
    assert state["settings"]["quality"] == 55 and state["settings"]["frame_size"] == "QVGA"


def test_killed_node_goes_offline_via_last_will(observer, make_node):
    node = make_node("cam-1", config={"keepalive": 2})
    online(observer)
    start = observer.mark()
    node.kill()
    observer.topic("espcam/cam-1/availability", 30, start, payload=b"offline")


def test_stop_lets_a_half_sent_frame_finish_before_the_power_goes_off(observer, make_node):
    """Stopping the simulator (Ctrl-C on ./run) powers the nodes off between frames: a frame
    caught half sent is sent whole, and its command acked, before the node ends. (kill() is
    the power cut in the middle of a frame.)"""
    node = make_node("cam-1", config={"chunk_size": 256})
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
        chunks = [m for m in observer.msgs[start:] if m.topic == "espcam/cam-1/frame"]
        first = parse_chunk(chunks[0].payload)
        fid = first.frame_id
        if len(chunks) < first.count:
            break   # caught in the middle of the frame
        os.kill(node.process.pid, signal.SIGCONT)   # the whole frame was out already; again
    else:
        pytest.fail("never caught a frame half sent")
    observer.c.on_message = relay
    proc = node.process
    stopping = threading.Thread(target=node.stop, kwargs={"grace": 30})
    stopping.start()
    wait_until(lambda: (node.ctl / "poweroff").exists(), what="the power-off request")
    os.kill(proc.pid, signal.SIGCONT)
    stopping.join(30)
    assert not stopping.is_alive() and proc.poll() is not None and node.status == "stopped"
    # It powered off by itself, at its next idle(), not by the SIGTERM that ends a stuck node.
    assert json.loads((node.dir / "exit.json").read_text())["why"] == "poweroff"
    data, _, _ = observer.frame("cam-1", fid, timeout=10, start=start)
    assert data == node.captures()[-1].read_bytes()
    ack = observer.json_on("espcam/cam-1/ack", lambda d: d["id"] == f"c{attempt}", 10, start)
    assert ack["ok"] and ack["result"] == {"frame": fid}


def test_stop_ends_a_node_that_never_gets_to_idle(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    proc = node.process
    os.kill(proc.pid, signal.SIGSTOP)   # as a node stuck in a call that never returns
    node.stop(grace=0.5)
    assert proc.poll() is not None and node.status == "stopped"
    assert not (node.dir / "exit.json").exists()


def test_duty_cycle_wakes_captures_and_sleeps_with_consecutive_frame_ids(observer, make_node):
    node = make_node("cam-1", config={"sleep_interval": 2, "awake": 1, "pir_pin": None})
    metas = []
    start = 0
    for _ in range(3):
        m = observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 60, start)
        from observer import parse_chunk

        fid = parse_chunk(m.payload).frame_id
        data, meta, _ = observer.frame("cam-1", fid, start=start)
        metas.append((fid, meta["trigger"], meta["wake"]))
        observer.topic("espcam/cam-1/availability", 30, start, payload=b"sleeping")
        start = observer.mark()
    first = metas[0][0]
    # Frame ids continue across deep sleep (RTC memory): no gaps, no repeats.
    assert [f for f, _, _ in metas] == [first, first + 1, first + 2]
    assert metas[0][1:] == ("boot", "none")
    assert metas[1][1:] == ("wake", "timer") and metas[2][1:] == ("wake", "timer")
    assert node.boots >= 3


def test_motion_during_deep_sleep_wakes_the_node(observer, make_node):
    node = make_node("cam-1", config={"pir_pin": 13})
    online(observer)
    assert observer.command("cam-1", {"id": "z", "cmd": "sleep", "seconds": 3600})["ok"]
    observer.topic("espcam/cam-1/availability", 30, payload=b"sleeping")
    node.wait_status("sleeping")
    start = observer.mark()
    node.inject_motion()
    online(observer, start=start)
    state = observer.json_on("espcam/cam-1/state", lambda d: d["reset_cause"] == "deepsleep",
                             start=start)
    assert state["wake"] == "pin"
    m = observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    from observer import parse_chunk

    data, meta, _ = observer.frame("cam-1", parse_chunk(m.payload).frame_id, start=start)
    assert meta["trigger"] == "motion" and meta["wake"] == "pin"
    assert data == node.captures()[-1].read_bytes()


def test_motion_triggers_a_frame(observer, make_node):
    node = make_node("cam-1", config={"pir_pin": 13, "motion_cooldown": 0})
    online(observer)
    start = observer.mark()
    node.inject_motion()
    chunk = observer.wait(lambda m: m.topic == "espcam/cam-1/frame", 30, start)
    from observer import parse_chunk

    fid = parse_chunk(chunk.payload).frame_id
    data, meta, _ = observer.frame("cam-1", fid, start=start)
    assert meta["trigger"] == "motion"
    assert data == node.captures()[-1].read_bytes()


def test_resend_returns_requested_chunks_and_refuses_unknown_frames(observer, make_node):
    make_node("cam-1", config={"chunk_size": 1024})
    online(observer)
    start = observer.mark()
    fid = observer.command("cam-1", {"id": "c", "cmd": "capture"})["result"]["frame"]
    data, _, chunks = observer.frame("cam-1", fid, start=start)
    start = observer.mark()
    ack = observer.command("cam-1", {"id": "r", "cmd": "resend", "frame": fid, "chunks": [0, 2]})
    assert ack["ok"] and ack["result"] == {"frame": fid, "chunks": 2}
    from observer import parse_chunk

    again = [parse_chunk(m.payload) for m in observer.msgs[start:]
             if m.topic == "espcam/cam-1/frame"]
    assert sorted(c.index for c in again) == [0, 2]
    assert all(c.flags & 2 for c in again)
    old = observer.command("cam-1", {"id": "r2", "cmd": "resend", "frame": fid + 50})
    assert old["ok"] is False and "no longer held" in old["error"]


def test_node_reconnects_after_broker_restart(broker, observer, make_node):
    node = make_node("cam-1")
    online(observer)
    broker.restart()
    from observer import Observer

    o2 = Observer(broker.host, broker.port)
    try:
        o2.topic("espcam/cam-1/availability", 60, payload=b"online")
        ack = o2.command("cam-1", {"id": "after", "cmd": "capture"})
        assert ack["ok"]
        data, _, _ = o2.frame("cam-1", ack["result"]["frame"])
        assert data == node.captures()[-1].read_bytes()
    finally:
        o2.close()


def test_bad_config_stops_with_a_clear_message_not_a_crash_loop(make_node):
    node = make_node("cam-1", config={"wifi": {"password": "x"}})
    wait_until(lambda: node.status != "running", 30, "the app to stop")
    log = node.log()
    assert "CONFIG ERROR" in log and "wifi" in log
    assert node.boots == 1
