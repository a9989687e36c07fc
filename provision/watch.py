"""Watching a freshly reset node: its birth message on the broker and its console output.

The birth message (`<prefix>/<node>/availability` = `online`, docs/protocol.md) is the proof
that the whole chain works: Wi-Fi, broker address, credentials, app. The console is read at
the same time because, when the birth does not come, the node's own log says why.

The birth is watched as a user that may read it (espcam.provision.watchlogin says which),
never as the node itself.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from espcam.backend.session import make_client
from espcam.provision.errors import ProvisionError
from espcam.provision.watchlogin import Login, refused_advice


class ConsoleTail:
    """Reads a serial port in the background, reopening it when it goes away (a board with
    native USB, or the virtual board, drops the port while it resets)."""

    def __init__(self, port: str) -> None:
        self.port = port
        self.lines: list[str] = []
        self._partial = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)

    def start(self) -> ConsoleTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines + [self._partial.decode(errors="replace")])

    def tail(self, n: int = 15) -> list[str]:
        with self._lock:
            return [line for line in self.lines if line.strip()][-n:]

    def _run(self) -> None:
        import serial

        while not self._stop.is_set():
            if self.port.startswith("/") and not Path(self.port).exists():
                self._stop.wait(0.1)
                continue
            try:
                with serial.Serial(self.port, 115200, timeout=0.2) as s:
                    while not self._stop.is_set():
                        self._feed(s.read(256))
            except (OSError, serial.SerialException):
                self._stop.wait(0.2)

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            buf = self._partial + data
            *done, self._partial = buf.split(b"\n")
            self.lines += [d.decode(errors="replace").rstrip("\r") for d in done]


class BirthWatch:
    """Subscribed to the node's availability and state from construction on; only a birth
    published after arm() counts, so neither the retained `online` of the previous run
    (retain flag set) nor anything from before the reset is taken for it."""

    def __init__(self, host: str, port: int, prefix: str, node: str, login: Login) -> None:
        self.topic = f"{prefix}/{node}/availability"
        self.state_topic = f"{prefix}/{node}/state"
        self.births: list[bytes] = []
        self.state: bytes | None = None
        self.cond = threading.Condition()
        self.c = make_client(f"espcam-deploy-{uuid.uuid4().hex[:8]}",
                             username=login.user or "", password=login.password or "")
        subscribed = threading.Event()
        refused: list[str] = []

        def on_connect(c, u, flags, rc, props):
            if rc.is_failure:
                refused.append(str(rc))
                subscribed.set()
                return
            c.subscribe([(self.topic, 1), (self.state_topic, 1)])

        def on_subscribe(c, u, mid, codes, props):
            if codes and codes[0].is_failure:
                refused.append(f"it may not read {self.topic}")
            subscribed.set()

        self.c.on_connect = on_connect
        self.c.on_subscribe = on_subscribe
        self.c.on_message = self._on_message
        try:
            self.c.connect(host, port, keepalive=30)
        except OSError as e:
            raise ProvisionError(
                f"this computer cannot reach the broker at {host}:{port} ({e}), so it cannot "
                "see the node come online; check --broker, or deploy with --no-wait"
            ) from None
        self.c.loop_start()
        if not subscribed.wait(10) or refused:
            self.close()
            why = refused[0] if refused else "no answer"
            raise ProvisionError(
                f"the broker at {host}:{port} refused the watcher logged in {login.words()} "
                f"({why}); deploy watches for the node's birth message as a user that may read "
                f"it, never as the node: {refused_advice(login)}"
            )

    def _on_message(self, c, u, m) -> None:
        if m.retain:
            return
        with self.cond:
            if m.topic == self.topic:
                self.births.append(m.payload)
            elif m.topic == self.state_topic:
                self.state = m.payload
            self.cond.notify_all()

    def arm(self) -> None:
        """From now on: what came before (a previous app's messages) does not count."""
        with self.cond:
            self.births.clear()
            self.state = None

    def wait_online(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: b"online" in self.births, timeout)

    def wait_state(self, timeout: float) -> bytes | None:
        with self.cond:
            self.cond.wait_for(lambda: self.state is not None, timeout)
            return self.state

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
