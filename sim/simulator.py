"""A simulator of N nodes, sim-1 … sim-N, each a SimNode of the real node app with its own
generated JPEG pool (or one shared `images_dir`), started and stopped together."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from espcam.sim.images import make_pool
from espcam.sim.node import EventFn, SimNode


class Simulator:
    """N nodes named sim-1 … sim-N in `workdir`/sim-i; `with Simulator(...) as sim:`,
    `sim["sim-2"]`."""

    def __init__(
        self,
        nodes: int,
        broker_host: str,
        broker_port: int,
        workdir: Path,
        *,
        camera_api: str = "module",
        config: dict[str, Any] | None = None,
        heapsize: str | None = None,
        images_dir: Path | None = None,
        on_event: EventFn | None = None,
        pool: int = 8,
    ) -> None:
        self.dir = Path(workdir).resolve()
        self.nodes: list[SimNode] = []
        fs = (config or {}).get("frame_size", "VGA")
        for i in range(1, nodes + 1):
            name = f"sim-{i}"
            ndir = self.dir / name
            imgs = images_dir
            if imgs is None:
                imgs = ndir / "images"
                if not any(imgs.glob("*.jpg")):
                    make_pool(imgs, name, count=pool, frame_size=fs)
            self.nodes.append(
                SimNode(
                    name,
                    ndir,
                    broker_host,
                    broker_port,
                    config=config,
                    camera_api=camera_api,
                    heapsize=heapsize,
                    images_dir=imgs,
                    on_event=on_event,
                )
            )
        self._stopped = False

    def start(self) -> Simulator:
        atexit.register(self.stop)
        for n in self.nodes:
            n.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # All are asked first, so that they finish the frames they are sending together.
        for n in self.nodes:
            n.request_poweroff()
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, name: str) -> SimNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)
