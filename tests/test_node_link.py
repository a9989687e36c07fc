"""A simulated node when the network or the broker misbehaves: a broker address that accepts
and never answers, a broker that freezes with connections open, a lost access point, a wrong
Wi-Fi password. Real Mosquitto, real MicroPython, the unmodified node files."""

import os
import re
import signal
import socket
import threading

from polling import wait_until
from test_node_sim import online


class SilentListener:
    """Accepts TCP connections and never sends a byte: a broker address that swallows CONNECT."""

    def __init__(self) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.srv.close()
        for c in self.conns:
            c.close()


def test_a_broker_that_never_answers_connect_fails_the_attempt_without_a_watchdog_reset(
        make_node):
    silent = SilentListener()
    try:
        node = make_node("cam-1", proxy=False, config={
            "broker": {"host": "127.0.0.1", "port": silent.port},
            "socket_timeout": 1, "watchdog": 5})
        # The wait for CONNACK ends with the socket timeout: the node says so, backs off and
        # tries again, in the same boot; a hang would have been ended by the watchdog instead.
        node.wait_for(lambda: node.log().count("connect failed") >= 2 and len(silent.conns) >= 2,
                      60, "two failed connect attempts")
        assert node.boots == 1
        assert node.status == "running"
    finally:
        silent.close()


def test_a_frozen_broker_is_noticed_and_the_node_returns_when_it_resumes(broker, observer,
                                                                          make_node):
    node = make_node("cam-1", config={"keepalive": 2, "socket_timeout": 1})
    online(observer)
    assert observer.command("cam-1", {"id": "idle", "cmd": "status"})["ok"]
    # The observer's copy of the ack and the node's PUBACK leave Mosquitto one after the other;
    # on a busy machine the broker can be stopped in between (seen once with a CPU hog), and
    # the node would notice the silence through its unanswered ack instead of its pings. The
    # broker's log says when the PUBACK has gone out: then the node is waiting on nothing.
    def ack_acked() -> bool:
        log = broker.log.read_text()
        mids = re.findall(r"Received PUBLISH from cam-1 \(d\d, q1, r\d, m(\d+), "
                          r"'espcam/cam-1/ack'", log)
        return bool(mids) and f"Sending PUBACK to cam-1 (m{mids[-1]}," in log

    wait_until(ack_acked, what="the broker's PUBACK of the node's ack")
    seen = len(node.log())
    os.kill(broker.proc.pid, signal.SIGSTOP)   # connections stay open, nothing is answered
    try:
        # The node notices the silence (unanswered pings) and reconnects; the new connection
        # reaches the frozen broker's listen queue and gets no CONNACK: the attempt fails.
        node.wait_for(lambda: "connect failed" in node.log()[seen:], 60, "a failed reconnect")
        assert "no traffic from the broker" in node.log()[seen:]
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    start = observer.mark()
    online(observer, start=start, timeout=90)
    ack = observer.command("cam-1", {"id": "after", "cmd": "capture"}, timeout=60)
    assert ack["ok"], ack
    data, _, _ = observer.frame("cam-1", ack["result"]["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    assert node.boots == 1


def test_wifi_loss_breaks_the_connection_and_the_node_comes_back_with_the_access_point(
        observer, make_node):
    node = make_node("cam-1", config={"keepalive": 2, "socket_timeout": 1})
    online(observer)
    start = observer.mark()
    node.wifi_down(True)
    # The broker hears nothing more and, after its keepalive, announces the node gone.
    observer.topic("espcam/cam-1/availability", 60, start, payload=b"offline")
    node.wait_log("wifi: no access point", 60)
    start = observer.mark()
    node.wifi_down(False)
    online(observer, start=start, timeout=90)
    ack = observer.command("cam-1", {"id": "back", "cmd": "capture"})
    assert ack["ok"], ack
    data, _, _ = observer.frame("cam-1", ack["result"]["frame"], start=start)
    assert data == node.captures()[-1].read_bytes()
    assert node.boots == 1


def test_every_attempt_with_a_wrong_wifi_password_says_so(make_node):
    node = make_node("cam-1", wifi_ap={"ssid": "espcam-sim", "password": "not-this-one"})
    node.wait_for(lambda: node.log().count("connect failed") >= 3, 60, "three attempts")
    failures = [ln for ln in node.log().splitlines() if "connect failed" in ln]
    assert all("wrong password" in ln for ln in failures), failures
