"""The node's own MQTT client (node/lib/espcam/mqtt.py), run on the real MicroPython
interpreter against a real Mosquitto: what the broker accepts from it, what it hands back, and
that no wait on a broker that does not answer outlasts the socket timeout."""

import os
import signal
import subprocess

from broker import Broker
from mpy import MICROPYTHON, NODE_LIB, SCRIPTS, lines_ok, run_mpy
from test_node_link import SilentListener


def test_the_client_speaks_mqtt_with_mosquitto_in_a_small_heap(broker):
    # 64 KB of heap, the client compiled from source in it: every exchange of a node's life.
    lines = lines_ok(run_mpy("mqtt_check.py", broker.host, str(broker.port), "basics",
                             heapsize="64k"))
    lines = [ln for ln in lines if not ln.startswith("heap ")]
    assert lines == [
        "session False",                # a new persistent session
        "granted 1",
        "got t/in hello",               # QoS 1 out and back in, PUBACK both ways
        "got t/in zero",                # QoS 0
        "got t/in café ☕",              # lengths in bytes, not characters
        "got t/in TOO_BIG",             # 2000 bytes: drained, not allocated
        "got t/in after",               # ... and the stream is still in step
        "pids [65534, 65535, 1, 2]",    # 16-bit packet ids wrap past 65535, never 0
        "got t/in id 0", "got t/in id 1", "got t/in id 2", "got t/in id 3",
        "pong True",                    # PINGRESP read
        "session True",                 # the broker kept the session over the disconnect
        "got t/in queued",              # and what was queued for it meanwhile
        "closed connection closed by the broker",   # end of stream is an error
    ]
    log = broker.log.read_text()
    assert "mq-check" in log and "Sending PUBACK to mq-check" in log


def test_a_broker_refusing_the_login_is_reported_as_such(tmp_path):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "cam-1", "right"], check=True)
    b = Broker(tmp_path / "auth", extra=f"password_file {passwd}\nallow_anonymous false\n").start()
    try:
        ok = lines_ok(run_mpy("mqtt_check.py", b.host, str(b.port), "login", "cam-1", "right"))
        bad = lines_ok(run_mpy("mqtt_check.py", b.host, str(b.port), "login", "cam-1", "wrong"))
    finally:
        b.stop()
    assert ok == ["session False"]
    assert bad == ["refused broker refused the connection: not authorized"]


def test_no_connack_ends_the_connect_with_the_socket_timeout():
    silent = SilentListener()
    try:
        lines = lines_ok(run_mpy("mqtt_check.py", "127.0.0.1", str(silent.port), "silent"))
    finally:
        silent.close()
    assert lines == ["failed no CONNACK from the broker within 1 s"]


def test_no_puback_from_a_frozen_broker_ends_the_publish_with_the_socket_timeout(broker):
    env = dict(os.environ, MICROPYPATH=str(NODE_LIB))
    p = subprocess.Popen([str(MICROPYTHON), str(SCRIPTS / "mqtt_check.py"), broker.host,
                          str(broker.port), "frozen"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline() == "ready\n"
        os.kill(broker.proc.pid, signal.SIGSTOP)   # the connection stays open, nothing answers
        try:
            out, err = p.communicate("go\n", timeout=60)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert out.splitlines() == ["failed no PUBACK from the broker within 1 s", "done"]
