"""The compose stack without Docker: the real Mosquitto with the very config files the compose
file mounts, the backend with the compose command and environment, users made by
`espcam broker-users`, and a simulated node with its generated credentials."""

from __future__ import annotations

import json
import re
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from compose import ComposeStack  # noqa: E402
from observer import Observer  # noqa: E402

from backend.cli import main as espcam  # noqa: E402


@pytest.fixture
def stack(tmp_path, capsys):
    s = ComposeStack(tmp_path / "stack")
    code = espcam(["broker-users", "--passwd-file", str(s.config_dir / "passwd"),
                   "--env-file", str(s.env_file), "--node-broker", s.url, "cam-1", "cam-2"])
    out = capsys.readouterr().out
    assert code == 0, out
    s.node_config = {}
    for m in re.finditer(r"^node (\S+): [^\n]*\n(\{.*?\n\})", out, re.M | re.S):
        s.node_config[m.group(1)] = json.loads(m.group(2))
    assert set(s.node_config) == {"cam-1", "cam-2"}
    s.start_broker()
    yield s
    s.stop()


def client(stack: ComposeStack, user: str | None, password: str | None,
           client_id: str | None = None) -> tuple[mqtt.Client, bool]:
    """A connected client, and whether the broker accepted it."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                    client_id=client_id or f"t-{uuid.uuid4().hex[:8]}")
    if user:
        c.username_pw_set(user, password)
    result: list[bool] = []
    done = threading.Event()

    def on_connect(c, u, f, rc, p):
        result.append(not rc.is_failure)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *a: done.set()
    c.connect(stack.host, stack.port)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return c, bool(result and result[0])


def node_password(stack: ComposeStack, node: str) -> str:
    return stack.node_config[node]["broker"]["password"]


def test_only_known_users_get_in(stack):
    env = stack.env_values()
    for user, password, ok in (("espcam-backend", env["ESPCAM_BACKEND_PASSWORD"], True),
                               ("homeassistant", env["HA_MQTT_PASSWORD"], True),
                               ("cam-1", node_password(stack, "cam-1"), True),
                               ("cam-1", node_password(stack, "cam-2"), False),
                               (None, None, False)):
        c, accepted = client(stack, user, password)
        c.loop_stop()
        c.disconnect()
        assert accepted is ok, user


def test_a_node_with_generated_credentials_gets_frames_through(stack, make_node):
    backend = stack.start_backend()
    env = stack.env_values()
    watch = Observer(stack.host, stack.port, "#", user="espcam-backend",
                     password=env["ESPCAM_BACKEND_PASSWORD"])
    try:
        watch.topic("espcam/_backend/availability", payload=b"online")
        cfg = stack.node_config["cam-1"]
        node = make_node("cam-1", config={"broker": cfg["broker"]})
        assert node.config["broker"]["user"] == "cam-1"
        watch.topic("espcam/cam-1/availability", payload=b"online")
        # Home Assistant's user presses Capture: the node captures, the backend stores it.
        ha, ok = client(stack, "homeassistant", env["HA_MQTT_PASSWORD"])
        assert ok
        mark = watch.mark()
        ha.publish("espcam/cam-1/cmd", json.dumps({"id": "ha-capture", "cmd": "capture"}), qos=1)
        event = watch.json_on("espcam/cam-1/event", start=mark)
        stored = stack.data_dir / event["path"]
        assert stored.read_bytes() == node.captures()[-1].read_bytes()
        watch.topic("homeassistant/device/espcam_cam-1/config")  # discovery got through too
        ha.loop_stop()
        ha.disconnect()
        # The compose healthcheck passes.
        health = stack.healthcheck()
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        watch.close()
        backend.terminate()
        backend.wait(10)


def test_a_node_is_confined_to_its_own_topics(stack):
    env = stack.env_values()
    watch = Observer(stack.host, stack.port, "#", user="espcam-backend",
                     password=env["ESPCAM_BACKEND_PASSWORD"])
    cam2, ok = client(stack, "cam-2", node_password(stack, "cam-2"), client_id="cam-2")
    assert ok
    got: list[mqtt.MQTTMessage] = []
    cond = threading.Condition()

    def on_message(c, u, m):
        with cond:
            got.append(m)
            cond.notify_all()

    cam2.on_message = on_message
    subscribed = threading.Event()
    cam2.on_subscribe = lambda *a: subscribed.set()
    cam2.subscribe([("espcam/cam-1/cmd", 1), ("espcam/cam-2/cmd", 1), ("espcam/#", 1)])
    assert subscribed.wait(10)
    try:
        # Publishing: into another node's topics and the backend's is dropped; its own arrives.
        # Messages of one connection keep their order, so once the last (allowed) one is seen,
        # any earlier one the broker let through would have been seen before it.
        for t in ("espcam/cam-1/state", "espcam/cam-1/frame", "espcam/cam-1/availability",
                  "espcam/_backend/availability", "homeassistant/device/x/config",
                  "espcam/cam-2/cmd"):
            cam2.publish(t, b"forged", qos=1).wait_for_publish(10)
        cam2.publish("espcam/cam-2/state", b'{"marker": 1}', qos=1).wait_for_publish(10)
        watch.topic("espcam/cam-2/state", payload=b'{"marker": 1}')
        assert [m.topic for m in watch.msgs if m.payload == b"forged"] == []

        # Reading: the backend sends cam-1 a command, then cam-2 one; cam-2 gets only its own.
        backend, ok = client(stack, "espcam-backend", env["ESPCAM_BACKEND_PASSWORD"])
        assert ok
        backend.publish("espcam/cam-1/cmd", b'{"id": "secret", "cmd": "status"}', qos=1)
        backend.publish("espcam/cam-2/cmd", b'{"id": "mine", "cmd": "status"}', qos=1)
        with cond:
            assert cond.wait_for(lambda: any(m.payload == b'{"id": "mine", "cmd": "status"}'
                                             for m in got), 10)
        assert {m.topic for m in got} == {"espcam/cam-2/cmd"}
        backend.loop_stop()
        backend.disconnect()
    finally:
        cam2.loop_stop()
        cam2.disconnect()
        watch.close()


def test_broker_users_keeps_existing_users_and_refuses_silent_rotation(stack, capsys):
    before = stack.env_values()
    args = ["broker-users", "--passwd-file", str(stack.config_dir / "passwd"), "--env-file",
            str(stack.env_file)]
    assert espcam(args + ["cam-3"]) == 0
    assert stack.env_values() == before  # service passwords kept
    assert espcam(args + ["cam-1"]) == 2  # exists: needs --rotate
    assert "--rotate" in capsys.readouterr().out
    c, ok = client(stack, "cam-1", node_password(stack, "cam-1"))
    c.loop_stop()
    c.disconnect()
    assert ok
