"""The limit of bench item 3: a bare paho subscriber that only counts what the broker delivers.

    python -m bench.counter HOST PORT MESSAGES     subscribes to espcam/+/frame at QoS 1,
    prints "ready", then one JSON line when MESSAGES have arrived (or stdin closes): count,
    bytes, times of the first and last message, CPU seconds at "ready" and at the end
"""

from __future__ import annotations

import json
import sys
import threading
import time

from espcam.backend.session import make_client  # noqa: E402


def main() -> None:
    host, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    state = {"n": 0, "bytes": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    ready = threading.Event()

    def on_message(client, userdata, msg) -> None:
        now = time.time()
        if not state["n"]:
            state["first"] = now
        state["n"] += 1
        state["bytes"] += len(msg.payload)
        state["last"] = now
        if state["n"] >= want:
            done.set()

    c = make_client(f"bench-counter-{time.time_ns()}")
    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.connect(host, port, 60)
    c.subscribe("espcam/+/frame", qos=1)
    c.loop_start()
    ready.wait(10)
    state["cpu_ready"] = time.process_time()
    print("ready", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    state["cpu_s"] = time.process_time()  # CPU seconds; minus cpu_ready: the burst's
    c.loop_stop()
    print(json.dumps(state), flush=True)


if __name__ == "__main__":
    main()
