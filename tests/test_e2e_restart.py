"""End to end: `espcam serve` killed with SIGKILL while three simulated ESP32-CAMs (the real
node/ files on MicroPython) stream, restarted once every node has captured two more frames. The
broker keeps the backend's persistent session (queue_qos0_messages) meanwhile, so what the
nodes publish while it is down is delivered when it returns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from e2e_helpers import (  # noqa: E402
    Serve,
    assert_stored_identical,
    backend_online,
    captured,
    stop_interval,
    stored_ids,
    wait_captures,
    wait_until,
)
from espcam.sim.runner import Simulator  # noqa: E402
from lostlog import lost_ids  # noqa: E402


def logged_lost(serve, node: str) -> set[int]:
    """Frame ids of the node that the backend's log says it gave up."""
    return lost_ids(serve.log_text(), node)


def test_sigkill_and_restart_loses_no_frame_captured_while_the_backend_was_down(
        broker, observer, tmp_path):
    data = tmp_path / "data"
    serve = Serve(broker, data, tmp_path / "backend.log", client_id="e2e-restart").start()
    sim = Simulator(3, broker.host, broker.port, tmp_path / "sim", config={"interval": 1},
                    pool=40)
    try:
        backend_online(observer)
        sim.start()

        def events(node: str) -> set[int]:
            return {json.loads(m.payload)["frame"] for m in list(observer.msgs)
                    if m.topic == f"espcam/{node}/event"}

        for n in sim.nodes:
            wait_until(lambda n=n: len(events(n.name)) >= 3, 60, f"{n.name} streaming")
        mark = observer.mark()
        serve.kill()
        stored_before = {n.name: events(n.name) for n in sim.nodes}
        # Once the broker has published the backend's will, it has dropped the connection and
        # queues everything for the backend's session. Frames captured from here on (capture
        # number > down_from) are published entirely while the backend is away.
        observer.topic("espcam/_backend/availability", 30, mark, payload=b"offline")
        down_from = {n.name: len(n.captures()) for n in sim.nodes}
        for n in sim.nodes:  # the nodes keep streaming meanwhile
            wait_captures(n, down_from[n.name] + 2)
        serve.start()
        back = observer.mark()
        backend_online(observer, back)
        # And after it returns: frames captured from here on reach the running backend.
        back_from = {n.name: len(n.captures()) for n in sim.nodes}
        for n in sim.nodes:
            wait_captures(n, back_from[n.name] + 2)
        produced = {n.name: stop_interval(observer, n) for n in sim.nodes}
        for n in sim.nodes:
            # Settled: every frame is stored, or logged lost by the backend that came back.
            settled = set(range(1, produced[n.name] + 1))
            wait_until(lambda n=n, settled=settled: settled == stored_ids(data, n.name)
                       | logged_lost(serve, n.name), 60,
                       f"{n.name}: frames {sorted(settled)} stored or logged lost")
    finally:
        sim.stop()
        serve.stop()
    for n in sim.nodes:
        frames = captured(n)
        assert len(frames) == produced[n.name]
        # Every stored frame is the captured one, byte for byte, once; files and index agree.
        ids = assert_stored_identical(data, n, frames)
        # Every frame captured after the backend's will was published, including those
        # captured while it was down, is stored.
        assert set(range(down_from[n.name] + 1, produced[n.name] + 1)) <= ids
        # What was stored before the kill is still there (announced, so on disk and indexed).
        assert stored_before[n.name] <= ids
        # Only frames in flight to the backend when it died may be missing: captured after
        # the last frame it announced and before the broker noticed it was gone (the dead
        # process may have read some or all of their chunks, and held them only in memory).
        # Each of them is logged LOST by the backend that came back (docs/backend.md, "What
        # survives a crash"), none is missing silently.
        in_flight = set(range(max(stored_before[n.name]) + 1, down_from[n.name] + 1))
        missing = set(frames) - ids
        assert missing == logged_lost(serve, n.name) - ids, (missing, serve.log_text()[-3000:])
        assert missing <= in_flight, (missing, in_flight)
        # Those captured after the backend came back are stored, every one.
        assert set(range(back_from[n.name] + 1, produced[n.name] + 1)) <= ids
        assert n.boots == 1
    assert "Traceback" not in serve.log_text()
