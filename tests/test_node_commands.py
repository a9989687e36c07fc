"""Hostile and malformed commands: each gets an error ack, and the node keeps working."""

import json

from mpy import ROOT
from test_node_sim import command_state, online


def hostile_commands() -> list[bytes]:
    cmds: list = [
        b"", b"{", b"}", b"\xff\xfe\x00", b"null", b"[]", b"42", b'"capture"', b"true",
        b"{}", b'{"cmd": "capture"}', b'{"id": 7, "cmd": "capture"}',
        b'{"id": "", "cmd": "capture"}', ('{"id": "%s", "cmd": "capture"}' % ("x" * 65)).encode(),
        b'{"id": ["a"], "cmd": "capture"}', b'{"id": "a"}', b'{"id": "a", "cmd": 5}',
        b'{"id": "a", "cmd": null}', b'{"id": "a", "cmd": ["capture"]}',
        b'{"id": "a", "cmd": "capture"', b"capture", b"\x00" * 10,
    ]
    for name in ("CAPTURE", "shoot", "", " capture", "rm -rf /", "x" * 500, "__init__",
                 "cmd_capture", "run", "exec", "import", "flash_on", "deinit", "eval"):
        cmds.append({"id": "u", "cmd": name})
    for state in (None, "ON", "blink", 1, True, [], {}):
        cmds.append({"id": "f", "cmd": "flash", "state": state})
    for ms in (0, -1, 5001, 1.5, "100", None, [], 10**12):
        cmds.append({"id": "p", "cmd": "flash", "state": "pulse", "ms": ms})
    for secs in (None, 0, -5, 1.5, "60", [], {}, 2592001, 10**20, True):
        cmds.append({"id": "s", "cmd": "sleep", "seconds": secs})
    for s in (None, {}, [], "interval=5", 5, {"nope": 1}, {"interval": -1},
              {"interval": 86401}, {"interval": "5"}, {"interval": 2.5}, {"interval": True},
              {"frame_size": "vga"}, {"frame_size": 6}, {"frame_size": "8K"},
              {"quality": 0}, {"quality": 101}, {"quality": "high"}, {"flash_on_capture": 1},
              {"flash_on_capture": "yes"}, {"sleep_interval": -1}, {"awake": 601},
              {"motion_cooldown": None}, {"node_id": "evil"}, {"prefix": "#"},
              {"broker": {"host": "evil"}}, {"interval": 10, "quality": 500}):
        cmds.append({"id": "k", "cmd": "config", "set": s})
    for frame, chunks in ((None, None), ("1", None), (-1, None), (2**32, None),
                          (99999, None), (1, []), (1, "0"), (1, [-1]), (1, [1.5]),
                          (1, [70000]), (1, {"0": 1})):
        d = {"id": "r", "cmd": "resend", "frame": frame}
        if chunks is not None:
            d["chunks"] = chunks
        cmds.append(d)
    cmds.append(b'{"id": "big", "cmd": "capture", "pad": "' + b"x" * 2000 + b'"}')
    cmds.append(b'{"id": "huge", "cmd": "capture", "pad": "' + b"y" * 100_000 + b'"}')
    cmds.append(b"[" * 5000)
    return [c if isinstance(c, bytes) else json.dumps(c).encode() for c in cmds]


def test_every_hostile_command_gets_an_error_ack_and_the_node_survives(observer, make_node):
    node = make_node("cam-1")
    online(observer)
    cmds = hostile_commands()
    assert len(cmds) >= 100
    for payload in cmds:
        start = observer.mark()
        observer.c.publish("espcam/cam-1/cmd", payload, qos=1)
        ack = observer.json_on("espcam/cam-1/ack", start=start, timeout=30)
        assert ack["ok"] is False, (payload[:80], ack)
        assert isinstance(ack["error"], str) and ack["error"], ack
    # Still alive, still the same process, and settings untouched.
    assert node.status == "running" and node.boots == 1
    ok = observer.command("cam-1", {"id": "still", "cmd": "capture"})
    assert ok["ok"]
    data, _, _ = observer.frame("cam-1", ok["result"]["frame"])
    assert data == node.captures()[-1].read_bytes()
    st, state = command_state(observer, {"id": "st", "cmd": "status"})
    assert st["ok"]
    assert state["settings"]["interval"] == 0 and state["settings"]["quality"] == 80


def test_every_invalid_command_vector_is_refused_over_mqtt_for_its_rule(observer, make_node):
    # The vectors' commands sent to a running node: each error ack names the vector's rule as
    # its code and echoes the id and cmd the vector says could be read.
    make_node("cam-1")
    online(observer)
    vectors = json.loads((ROOT / "tests" / "vectors" / "commands.json").read_text())["invalid"]
    for case in vectors:
        start = observer.mark()
        observer.c.publish("espcam/cam-1/cmd", case["payload"].encode(), qos=1)
        ack = observer.json_on("espcam/cam-1/ack", start=start, timeout=30)
        assert {k: ack.get(k) for k in case["ack"]} == case["ack"], (case["name"], ack)
        assert isinstance(ack["error"], str) and ack["error"], ack


def test_ids_and_errors_in_any_script_arrive_whole(observer, make_node):
    # MicroPython's json writes non-ASCII as UTF-8: the MQTT lengths are counted in bytes.
    make_node("cam-1")
    online(observer)
    cid = "caf\u00e9 \u2615 \u0001"
    ack = observer.command("cam-1", {"id": cid, "cmd": "status"})
    assert ack["id"] == cid and ack["ok"]
    ack = observer.command("cam-1", {"id": cid, "cmd": "cr\u00e8me"})
    assert (ack["id"], ack["cmd"], ack["code"]) == (cid, "cr\u00e8me", "unknown_cmd")
    assert "cr\u00e8me" in ack["error"]


def test_sixty_kb_frame_under_a_constrained_heap(observer, make_node, tmp_path):
    from espcam.sim.images import jpeg_of_size

    images = tmp_path / "images"
    images.mkdir()
    (images / "000.jpg").write_bytes(jpeg_of_size(60_000))
    node = make_node("cam-1", heapsize="150k", images_dir=images, camera_api="class")
    online(observer)
    ack = observer.command("cam-1", {"id": "h", "cmd": "capture"})
    assert ack["ok"], ack
    data, _, _ = observer.frame("cam-1", ack["result"]["frame"])
    assert len(data) >= 60_000
    assert data == (images / "000.jpg").read_bytes()
    assert "MemoryError" not in node.log()
