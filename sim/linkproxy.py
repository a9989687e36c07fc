"""A TCP relay between one simulated node and its broker, run by the simulator (CPython).

Over loopback a connection never notices that the simulated access point went away, so the
node reaches the broker through this relay instead, and `ctl/wifi_down` makes it behave as a
lost radio link: from the first byte either side sends while the access point is gone, the
connection is dead, and everything sent on it in either direction is lost. Neither end is told:
the node finds out by its own timeouts and pings, the broker by its keepalive (then it
publishes the node's will), and a dead connection stays dead after the access point returns,
as one would whose packets went unanswered. A connection opened while the access point is gone
never reaches the broker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class _Pair:
    def __init__(self, node: socket.socket) -> None:
        self.node: socket.socket | None = node
        self.broker: socket.socket | None = None
        self.dead = False
        self._lock = threading.Lock()

    def close(self, node: bool = True, broker: bool = True) -> bool:
        """Closes the chosen sides; True once both are closed."""
        with self._lock:
            if node and self.node is not None:
                _close(self.node)
                self.node = None
            if broker and self.broker is not None:
                _close(self.broker)
                self.broker = None
            return self.node is None and self.broker is None


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def _no_delay(s: socket.socket) -> None:
    # The relay must not add Nagle / delayed-ACK stalls the node's own socket avoids: with
    # them a simulated wake took 436 ms instead of 332 (docs/benchmarks.md).
    with contextlib.suppress(OSError):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LinkProxy:
    """Listens on 127.0.0.1:<port> (chosen at construction, kept for the object's life) and
    relays each connection to broker_host:broker_port while `blocked()` is false."""

    def __init__(self, broker_host: str, broker_port: int, blocked: Callable[[], bool]) -> None:
        self.broker = (broker_host, broker_port)
        self.blocked = blocked
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="linkproxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends every relayed connection; the listening port stays reserved for a restart."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for p in pairs:
            p.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            _no_delay(conn)
            self._open(conn)

    def _open(self, conn: socket.socket) -> None:
        pair = _Pair(conn)
        if self.blocked():
            pair.dead = True
        else:
            try:
                pair.broker = socket.create_connection(self.broker, timeout=5)
                pair.broker.settimeout(None)
                _no_delay(pair.broker)
            except OSError:
                conn.close()  # as a refused connection: the broker is not running
                return
        with self._lock:
            self._pairs.add(pair)
        threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()
        if pair.broker is not None:
            threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()

    def _pump(self, pair: _Pair, from_node: bool) -> None:
        src = pair.node if from_node else pair.broker
        while src is not None:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not pair.dead and self.blocked():
                pair.dead = True
            if not data:
                break
            if pair.dead:
                continue  # lost in the air
            dst = pair.broker if from_node else pair.node
            try:
                if dst is None:
                    break
                dst.sendall(data)
            except OSError:
                break
        # On a dead connection the end that closed is not heard by the other: the broker finds
        # out by its keepalive, the node by its pings.
        done = pair.close(node=from_node, broker=not from_node) if pair.dead else pair.close()
        if done:
            with self._lock:
                self._pairs.discard(pair)
