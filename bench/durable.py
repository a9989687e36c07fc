"""The durable-writer limit of bench item 3 (issue 14): the best ingest a durable store can do
on this machine, written as simply as possible.

    python -m bench.durable HOST PORT FRAMES DIR [--threads N]
        subscribes to espcam/+/frame at QoS 1 (acknowledging by hand), prints "ready", then
        one JSON line when FRAMES frames are durable in DIR (or stdin closes)

The same chunk stream the backend takes, reassembled per (node, frame id) with the protocol's
own `decode_chunk` (header rules, metadata JSON), and each complete frame written durably:

    1. os.open DIR/<node>/.tmp-<frame>.part, os.write the JPEG, os.fsync(file)   sync 1
    2. os.rename to DIR/<node>/<frame>.jpg
    3. os.fsync(the node's directory)                                            sync 2
    4. the frame's QoS 1 message (its last chunk) acknowledged to the broker

Two fsyncs per frame, as `espcam serve` does (file, then directory), and the same promise: a
frame is acknowledged only once a crash can no longer lose it. Nothing else: no CRC check, no
JPEG check, no index, no announcement, no duplicate detection, no retention, no limits.
Reassembly runs in paho's network thread; the writes run on `--threads` threads (4, as the
backend's `store_workers`) so that fsyncs overlap, each node's directory kept open. The
node's directory is created (and its parent fsynced) the first time the node is seen.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from espcam.backend.protocol import ChunkError, decode_chunk
from espcam.backend.session import make_client


class DurableWriter:
    def __init__(self, root: Path, want: int, threads: int) -> None:
        self.root, self.want = root, want
        self.parts: dict[tuple[str, int], list[Any]] = {}
        self.dirs: dict[str, int] = {}
        self.jobs: queue.SimpleQueue[tuple[str, int, bytes, list[int]] | None] = \
            queue.SimpleQueue()
        self.lock = threading.Lock()
        self.done: dict[str, float] = {}
        self.state = {"n": 0, "bytes": 0, "chunks": 0, "bad": 0, "first": 0.0, "last": 0.0}
        self.finished = threading.Event()
        self.client: Any = None
        self.rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.threads = [threading.Thread(target=self._write, daemon=True)
                        for _ in range(threads)]
        for t in self.threads:
            t.start()

    # -- paho's thread: reassembly ---------------------------------------------------------

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        node = msg.topic.split("/")[1]
        try:
            c = decode_chunk(msg.payload)
        except ChunkError:
            self.state["bad"] += 1
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        self.state["chunks"] += 1
        key = (node, c.frame_id)
        p = self.parts.get(key)
        if p is None:
            p = self.parts[key] = [[None] * c.count, 0, []]
        if p[0][c.index] is None:
            p[0][c.index] = c.payload
            p[1] += 1
        if msg.qos:
            p[2].append(msg.mid)
        if p[1] == c.count:
            del self.parts[key]
            self.jobs.put((node, c.frame_id, b"".join(p[0]), p[2]))

    # -- the writers -----------------------------------------------------------------------

    def _dir(self, node: str) -> int:
        with self.lock:
            fd = self.dirs.get(node)
            if fd is None:
                d = self.root / node
                d.mkdir(exist_ok=True)
                os.fsync(self.rootfd)  # the node's directory entry itself, once
                fd = self.dirs[node] = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            return fd

    def _write(self) -> None:
        while (job := self.jobs.get()) is not None:
            node, frame_id, data, mids = job
            dfd = self._dir(node)
            tmp = f".tmp-{frame_id}.part"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644,
                         dir_fd=dfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, f"{frame_id}.jpg", src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
            for mid in mids:
                self.client.ack(mid, 1)
            now = time.time()
            with self.lock:
                s = self.state
                if not s["n"]:
                    s["first"] = now
                s["n"] += 1
                s["bytes"] += len(data)
                s["last"] = now
                self.done[f"{node}/{frame_id}"] = now
                if s["n"] >= self.want:
                    self.finished.set()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__.split("\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("frames", type=int)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    w = DurableWriter(a.dir, a.frames, a.threads)
    ready = threading.Event()
    c = make_client(f"bench-durable-{time.time_ns()}", manual_ack=True)
    w.client = c
    c.on_message = w.on_message
    c.on_subscribe = lambda *x: ready.set()
    c.connect(a.host, a.port, 60)
    c.subscribe("espcam/+/frame", qos=1)
    c.loop_start()
    ready.wait(10)
    w.state["cpu_ready"] = time.process_time()
    print("ready", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), w.finished.set()), daemon=True).start()
    w.finished.wait()
    w.state["cpu_s"] = time.process_time()  # minus cpu_ready: the burst's CPU seconds
    time.sleep(0.2)  # the last acks on their way
    c.loop_stop()
    with w.lock:
        print(json.dumps(w.state | {"incomplete": len(w.parts), "done": w.done}), flush=True)


if __name__ == "__main__":
    main()
