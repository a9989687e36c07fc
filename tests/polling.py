"""Waiting in tests for something to happen. A timeout here means "it never happened" (the
test fails with what it waited for); how long things take is measured in bench/, not here."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_until(pred: Callable[[], Any], timeout: float = 30, what: str = "condition",
               every: float = 0.05) -> Any:
    """Polls pred() until it returns something truthy and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(every)


def wait_listening(host: str, port: int, proc: subprocess.Popen, log: Callable[[], str],
                   timeout: float = 10) -> None:
    """Until the server (a broker) started as `proc` accepts connections; its log if it
    exits first."""
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited: " + log())
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_until(up, timeout, f"a server listening on {host}:{port}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout`; reaped either way."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
