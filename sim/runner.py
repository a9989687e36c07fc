"""Runs simulated espcam nodes against a broker until Ctrl-C or SIGTERM.

`espcam sim` (and `python -m espcam.sim.runner`): one line per node event (started, slept,
woke, reset, wdt, crashed, exited). See docs/simulator.md. The node (espcam.sim.node), its chip
(espcam.sim.chip) and the simulator of many nodes (espcam.sim.simulator) live in modules of
their own; their names used by tests and benchmarks are importable from here as well.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from espcam.sim.chip import BOARD_LIB, micropython_binary
from espcam.sim.node import SimNode, default_config, node_mac
from espcam.sim.simulator import Simulator

__all__ = [
    "BOARD_LIB",
    "SimNode",
    "Simulator",
    "add_arguments",
    "default_config",
    "main",
    "micropython_binary",
    "node_mac",
    "run",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (sim-1 …)")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of Mosquitto")
    parser.add_argument(
        "--dir", type=Path, default=None, help="working folder (default: a new temporary folder)"
    )
    parser.add_argument(
        "--camera",
        choices=("module", "class"),
        default="module",
        help="camera driver API to simulate",
    )
    parser.add_argument(
        "--interval", type=int, default=10, help="capture interval in seconds (0: off)"
    )
    parser.add_argument("--frame-size", default="VGA", help="frame size setting, e.g. QVGA")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of JPEG files to serve instead of generated ones",
    )
    parser.add_argument(
        "--heapsize",
        default=None,
        help="MicroPython heap per node, e.g. 110k (board without PSRAM)",
    )
    parser.add_argument("--prefix", default="espcam", help="topic prefix")


def _split_broker(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host:
        return s, 1883
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    try:
        micropython_binary()
    except RuntimeError as e:  # a backend-only install: say so once, start nothing
        print(f"espcam sim: {e}", file=sys.stderr)
        return 1
    host, port = _split_broker(args.broker)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="espcam-sim-"))
    lock = threading.Lock()

    def printer(node: SimNode, event: str, detail: str) -> None:
        with lock:
            print(f"{time.strftime('%H:%M:%S')} {node.name:<10} {event:<8} {detail}", flush=True)

    config = {"interval": args.interval, "frame_size": args.frame_size, "prefix": args.prefix}
    sim = Simulator(
        args.nodes,
        host,
        port,
        workdir,
        camera_api=args.camera,
        config=config,
        heapsize=args.heapsize,
        images_dir=args.images,
        on_event=printer,
    )
    print(f"espcam sim: {args.nodes} node(s), broker {host}:{port}, folder {workdir}", flush=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        sim.start()
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        signal.signal(signal.SIGTERM, old)
        print("espcam sim: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="espcam sim", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
