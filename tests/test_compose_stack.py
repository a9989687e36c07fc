"""The compose stack without Docker: the real Mosquitto with the very config files the compose
file mounts (run as uid 1883, as in the image), the backend with the compose command and
environment, users made by `espcam broker-users`, and simulated nodes with their generated
credentials."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from espcam.backend.session import make_client  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from compose import AS_ROOT, BROKER_GID, ComposeStack  # noqa: E402
from observer import Observer  # noqa: E402

from espcam.cli import main as espcam  # noqa: E402

NOBODY = 65534  # an ordinary user running `espcam broker-users` in their checkout


def node_configs(out: str) -> dict[str, dict]:
    return {m.group(1): json.loads(m.group(2))
            for m in re.finditer(r"^node (\S+): [^\n]*\n(\{.*?\n\})", out, re.M | re.S)}


@pytest.fixture
def stack(tmp_path, capsys):
    s = ComposeStack(tmp_path / "stack")
    try:
        code = espcam(["broker-users", "--passwd-file", str(s.config_dir / "passwd"),
                       "--env-file", str(s.env_file), "--node-broker", s.url, "cam-1", "cam-2"])
        out = capsys.readouterr().out
        assert code == 0, out
        s.node_config = node_configs(out)
        assert set(s.node_config) == {"cam-1", "cam-2"}
        s.start_broker()
        yield s
    finally:
        s.stop()


class Client:
    """A connected MQTT client that notes whether the broker ever disconnected it."""

    def __init__(self, stack: ComposeStack, user: str | None, password: str | None,
                 client_id: str | None = None, clean_session: bool = True,
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None) -> None:
        self.c = make_client(client_id or f"t-{uuid.uuid4().hex[:8]}", username=user or "",
                             password=password or "", clean_session=clean_session)
        self.accepted: bool | None = None
        self.session_present = False
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        done = threading.Event()

        def on_connect(c, u, flags, rc, p):
            self.accepted = not rc.is_failure
            self.session_present = bool(flags.session_present)
            done.set()

        def on_disconnect(*a):
            self.disconnected.set()
            done.set()

        self.c.on_connect = on_connect
        self.c.on_disconnect = on_disconnect
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        if on_message:
            self.c.on_message = lambda c, u, m: on_message(m)
        self.c.connect(stack.host, stack.port)
        self.c.loop_start()
        assert done.wait(10), "no CONNACK"

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def alive(self) -> bool:
        """Still on its first connection: a round trip works and nothing closed it before."""
        try:
            self.publish("espcam/_backend/ping", b"")  # refused by the ACL, answered all the same
        except RuntimeError:  # paho: not connected
            return False
        return not self.disconnected.is_set()

    def subscribe(self, *topics: str) -> None:
        self.subscribed.clear()
        self.c.subscribe([(t, 1) for t in topics])
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def node_password(stack: ComposeStack, node: str) -> str:
    return stack.node_config[node]["broker"]["password"]


def login(stack: ComposeStack, user: str) -> tuple[str, str]:
    env = stack.env_values()
    var = {"espcam-backend": "ESPCAM_BACKEND_PASSWORD", "espcam-cli": "ESPCAM_CLI_PASSWORD",
           "espcam-health": "ESPCAM_HEALTH_PASSWORD", "homeassistant": "HA_MQTT_PASSWORD"}
    return user, env[var[user]] if user in var else node_password(stack, user)


def test_only_known_users_get_in(stack):
    for user, password, ok in (
            *(login(stack, u) + (True,) for u in ("espcam-backend", "espcam-cli",
                                                   "espcam-health", "homeassistant", "cam-1")),
            ("cam-1", node_password(stack, "cam-2"), False),
            (None, None, False)):
        c = Client(stack, user, password)
        c.close()
        assert c.accepted is ok, user


def test_password_and_acl_files_are_for_the_broker_only(stack):
    """Hashes are not world-readable (Mosquitto 2.0.17+ warns it will refuse such files); the
    broker, uid 1883 here as in the image, reads them through its group: it started with them
    and checks passwords (test_only_known_users_get_in)."""
    for name in ("passwd", "espcam.acl"):
        st = (stack.config_dir / name).stat()
        assert stat.S_IMODE(st.st_mode) & 0o007 == 0, name
        if AS_ROOT:
            assert st.st_gid == BROKER_GID and st.st_mode & 0o040, name
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600


def test_a_node_with_generated_credentials_gets_frames_through(stack, make_node):
    backend = stack.start_backend()
    watch = Observer(stack.host, stack.port, "#", user="homeassistant",
                     password=stack.env_values()["HA_MQTT_PASSWORD"])
    try:
        watch.topic("espcam/_backend/availability", payload=b"online")
        cfg = stack.node_config["cam-1"]
        node = make_node("cam-1", config={"broker": cfg["broker"]})
        assert node.config["broker"]["user"] == "cam-1"
        watch.topic("espcam/cam-1/availability", payload=b"online")
        # Home Assistant's user presses Capture: the node captures, the backend stores it.
        mark = watch.mark()
        watch.c.publish("espcam/cam-1/cmd", json.dumps({"id": "ha-capture", "cmd": "capture"}),
                        qos=1)
        event = watch.json_on("espcam/cam-1/event", start=mark)
        stored = stack.data_dir / event["path"]
        assert stored.read_bytes() == node.captures()[-1].read_bytes()
        watch.topic("homeassistant/device/espcam_cam-1/config")  # discovery got through too
        # The espcam commands in the backend's container (`docker compose exec backend
        # espcam ...`) and the compose healthcheck work, with their own users.
        r = stack.exec("capture", "cam-1", "--wait-frame")
        assert r.returncode == 0, r.stdout + r.stderr
        health = stack.healthcheck()
        assert health.returncode == 0, health.stdout + health.stderr
        r = stack.exec("forget", "cam-2")
        assert r.returncode == 0 and "forgot node cam-2" in r.stdout, r.stdout + r.stderr
        # ... and none of them took over the backend's session: it stayed connected.
        r = stack.exec("status", "cam-1")
        assert r.returncode == 0, r.stdout + r.stderr
        log = stack.log("backend")
        assert log.count("connected to") == 1 and "disconnected from" not in log, log
    finally:
        watch.close()
        backend.terminate()
        backend.wait(10)


def dropped(stack: ComposeStack, user: str, forged: list[str],
            allowed: str | None = None) -> list[str]:
    """Publish `forged` topics as `user`, then `allowed` (if the user may publish anything);
    the forged ones that arrived at a subscriber to everything. The broker answers a refused
    publish too, after it would have passed it on; and it keeps the order of what it sends one
    client: once a later marker is in, any forged message let through would be in too."""
    watch = Observer(stack.host, stack.port, "#", user="espcam-backend",
                     password=stack.env_values()["ESPCAM_BACKEND_PASSWORD"])
    c = Client(stack, *login(stack, user))
    try:
        assert c.accepted
        marker = f"marker-{uuid.uuid4().hex}".encode()
        for t in forged:
            c.publish(t, b"forged")
        if allowed:
            c.publish(allowed, marker)
            watch.topic(allowed, payload=marker)
        watch.c.publish("espcam/_backend/test-marker", marker, qos=1)
        watch.topic("espcam/_backend/test-marker", payload=marker)
        return [m.topic for m in watch.msgs if m.payload == b"forged"]
    finally:
        c.close()
        watch.close()


def test_a_node_is_confined_to_its_own_topics(stack):
    # Publishing: into another node's topics, the backend's, and the topics only the backend
    # publishes for the node itself (its image and events) is dropped.
    assert dropped(stack, "cam-2", [
        "espcam/cam-1/state", "espcam/cam-1/frame", "espcam/cam-1/availability",
        "espcam/cam-2/image", "espcam/cam-2/event", "espcam/_backend/availability",
        "espcam/_backend/forget", "homeassistant/device/x/config", "espcam/cam-2/cmd"],
        allowed="espcam/cam-2/state") == []

    # Reading: the backend sends cam-1 a command, then cam-2 one; cam-2 gets only its own.
    got: list[mqtt.MQTTMessage] = []
    cond = threading.Condition()

    def on_message(m: mqtt.MQTTMessage) -> None:
        with cond:
            got.append(m)
            cond.notify_all()

    cam2 = Client(stack, *login(stack, "cam-2"), client_id="cam-2", on_message=on_message)
    cam2.subscribe("espcam/cam-1/cmd", "espcam/cam-2/cmd", "espcam/#")
    backend = Client(stack, *login(stack, "espcam-cli"))
    try:
        backend.publish("espcam/cam-1/cmd", b'{"id": "secret", "cmd": "status"}')
        backend.publish("espcam/cam-2/cmd", b'{"id": "mine", "cmd": "status"}')
        with cond:
            assert cond.wait_for(lambda: any(m.payload == b'{"id": "mine", "cmd": "status"}'
                                             for m in got), 10)
        assert {m.topic for m in got} == {"espcam/cam-2/cmd"}
    finally:
        backend.close()
        cam2.close()


def test_home_assistant_commands_nodes_and_nothing_else(stack):
    assert dropped(stack, "homeassistant", [
        "espcam/_backend/forget", "espcam/_backend/availability", "espcam/_backend/status",
        "espcam/_backend/nodes/cam-1", "espcam/cam-1/state", "espcam/cam-1/availability",
        "espcam/cam-1/frame", "espcam/cam-1/image", "espcam/cam-1/ack"],
        allowed="espcam/cam-1/cmd") == []
    # The healthcheck's user writes nothing.
    assert dropped(stack, "espcam-health", ["espcam/cam-1/cmd", "espcam/_backend/forget",
                                             "espcam/_backend/availability",
                                             "homeassistant/status"]) == []


def test_no_one_takes_over_another_clients_session(stack):
    """The ACL confines topics, not client ids: the broker makes every user name the client id,
    so a node's password cannot disconnect another node or the backend, nor wipe the
    backend's persistent session (and the frames queued in it) with a clean session."""
    backend_login = login(stack, "espcam-backend")
    cam1 = Client(stack, *login(stack, "cam-1"), client_id="cam-1")
    backend = Client(stack, *backend_login, client_id="espcam-backend", clean_session=False)
    backend.subscribe("espcam/+/frame")
    try:
        for victim in ("cam-1", "espcam-backend"):
            thief = Client(stack, *login(stack, "cam-2"), client_id=victim)
            assert thief.accepted
            thief.close()
        # A round trip on each victim's connection: a taken-over one was closed before it.
        assert cam1.alive(), "cam-1 was disconnected"
        assert backend.alive(), "the backend was disconnected"

        # The backend is away; a frame chunk waits for it in its session. Someone connects
        # with its client id and a clean session, and leaves.
        backend.close()
        cam1.publish("espcam/cam-1/frame", b"chunk")
        thief = Client(stack, *login(stack, "cam-2"), client_id="espcam-backend")
        assert thief.accepted
        thief.close()
        got = threading.Event()
        back = Client(stack, *backend_login, client_id="espcam-backend", clean_session=False,
                      on_message=lambda m: m.payload == b"chunk" and got.set())
        assert back.session_present, "the backend's session was wiped"
        assert got.wait(10), "the queued chunk is gone"
        back.close()
    finally:
        cam1.close()
        backend.close()


def test_broker_users_keeps_existing_users_and_refuses_silent_rotation(stack, capsys):
    before = stack.env_values()
    args = ["broker-users", "--passwd-file", str(stack.config_dir / "passwd"), "--env-file",
            str(stack.env_file)]
    assert espcam(args + ["cam-3"]) == 0
    assert stack.env_values() == before  # service passwords kept
    assert espcam(args + ["cam-1"]) == 2  # exists: needs --rotate
    assert espcam(args + ["espcam-cli"]) == 2  # a service user's name is not a node id
    assert "--rotate" in capsys.readouterr().out
    c = Client(stack, *login(stack, "cam-1"))
    c.close()
    assert c.accepted


def run_as(uid: int, gid: int, argv: list[str]) -> tuple[int, str]:
    """`espcam ARGV` as another user (in a forked child: this Python lives where only root
    may go), with its output."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 70
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            sys.stdout = io.StringIO()
            code = espcam(argv)
            os.write(write, sys.stdout.getvalue().encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out


@pytest.mark.skipif(not AS_ROOT, reason="needs root to act as another user")
def test_broker_users_as_an_ordinary_user_says_how_the_broker_gets_its_files(tmp_path):
    """Without root, broker-users cannot give the files to the broker's group: it writes the
    password file 0640 all the same and says what to run; after that one `chgrp 1883` later
    runs keep the group, and the broker (uid 1883) reads the files."""
    s = ComposeStack(tmp_path / "stack")
    try:
        for f in (s.dir, s.config_dir, *s.config_dir.iterdir()):  # the user's checkout
            os.chown(f, NOBODY, NOBODY)
        passwd, acl = s.config_dir / "passwd", s.config_dir / "espcam.acl"
        args = ["broker-users", "--passwd-file", str(passwd), "--env-file", str(s.env_file),
                "--node-broker", s.url]
        code, out = run_as(NOBODY, NOBODY, args + ["cam-1"])
        assert code == 0, out
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o640
        assert f"sudo chgrp 1883 {acl} {passwd} && chmod 0640 {acl} {passwd}" in out, out
        configs = node_configs(out)
        # What the note says (as the admin: root; the user could do the chmod).
        for f in (passwd, acl):
            os.chown(f, -1, BROKER_GID)
            f.chmod(0o640)
        code, out = run_as(NOBODY, NOBODY, args + ["cam-2"])
        assert code == 0 and "chgrp" not in out, out
        configs |= node_configs(out)
        assert passwd.stat().st_gid == BROKER_GID
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o640
        s.start_broker()
        logins = [(node, configs[node]["broker"]["password"]) for node in ("cam-1", "cam-2")]
        for user, password in [*logins, ("cam-1", "wrong")]:
            c = Client(s, user, password)
            c.close()
            assert c.accepted is (password != "wrong"), user
    finally:
        s.stop()


@pytest.mark.skipif(not AS_ROOT, reason="needs root to give files to other groups")
def test_broker_users_keeps_a_group_given_for_another_broker(tmp_path, capsys):
    """A password file someone gave to another group (a Mosquitto outside Docker runs as
    `mosquitto`) keeps it; one in its owner's own group goes to the broker's (1883)."""
    passwd, env = tmp_path / "passwd", tmp_path / ".env"
    args = ["broker-users", "--passwd-file", str(passwd), "--env-file", str(env)]
    assert espcam(args) == 0
    os.chown(passwd, -1, 4242)
    assert espcam(args + ["cam-1"]) == 0
    assert passwd.stat().st_gid == 4242 and stat.S_IMODE(passwd.stat().st_mode) == 0o640
    os.chown(passwd, -1, 0)  # root's own group: not a choice
    assert espcam(args + ["cam-2"]) == 0
    assert passwd.stat().st_gid == BROKER_GID
    capsys.readouterr()
