"""`espcam serve` as a subprocess, killed with SIGKILL mid-stream and restarted: every frame
published while it was down is stored, and files and index agree."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from lightnode import LightNode, Watcher, make_jpeg  # noqa: E402
from lostlog import lost_ids  # noqa: E402

ESPCAM = str(Path(sys.executable).parent / "espcam")


def serve(broker, data_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ESPCAM_RESEND_AFTER="0.3", ESPCAM_CLIENT_ID="backend-restart")
    return subprocess.Popen([ESPCAM, "serve", "--broker", broker.url, "--data-dir",
                             str(data_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))


def test_sigkill_mid_stream_loses_no_frame_published_while_down(broker, tmp_path):
    data = tmp_path / "data"
    log = tmp_path / "backend.log"
    w = Watcher(broker.host, broker.port, "espcam/+/event", "espcam/_backend/availability")

    def availability() -> list[bytes]:
        return w.payloads("espcam/_backend/availability")

    proc = serve(broker, data, log)
    w.wait_for(lambda _: availability()[-1:] == [b"online"])
    cam = LightNode(broker.host, broker.port, "cam-k", chunk_size=512).start()
    frames: dict[int, bytes] = {}
    stop = threading.Event()

    def stream() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            jpeg = make_jpeg(seed=seed)
            frames[cam.publish_frame(jpeg)] = jpeg

    def stored() -> set[int]:
        return {e["frame"] for e in w.json("espcam/cam-k/event")}

    t = threading.Thread(target=stream)
    t.start()
    try:
        w.wait_for(lambda _: len(stored()) >= 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The broker fires the backend's will once it has noticed: from here on it queues.
        w.wait_for(lambda _: availability()[-1:] == [b"offline"])
        down_from = cam.next_frame_id
        w.wait_for(lambda _: cam.next_frame_id >= down_from + 10)
        proc = serve(broker, data, log)
        w.wait_for(lambda _: availability()[-1:] == [b"online"])
        w.wait_for(lambda _: cam.next_frame_id >= down_from + 15)
    finally:
        stop.set()
        t.join()
    def lost_logged(fid: int) -> bool:
        return fid in lost_ids(log.read_text(), "cam-k")

    try:
        last = max(frames)
        w.wait_for(lambda _: set(range(down_from, last + 1)) <= stored(), timeout=60)
        # Frames the dead backend had half read are asked for again; the node holds only its
        # newest frame, says so, and the backend logs each as lost.
        try:
            w.wait_for(lambda _: all(fid in stored() or lost_logged(fid) for fid in frames))
        except TimeoutError:
            missing = sorted(f for f in frames if f not in stored() and not lost_logged(f))
            raise AssertionError(f"frames neither stored nor said lost: {missing}; stored "
                                 f"{sorted(stored())[:40]}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        cam.stop()
        w.close()
    with sqlite3.connect(data / "index.sqlite3") as db:
        rows = db.execute("SELECT frame_id, path FROM frames").fetchall()
    assert len(rows) == len({fid for fid, _ in rows})
    for fid, path in rows:
        assert (data / path).read_bytes() == frames[fid]
    on_disk = {str(p.relative_to(data)) for p in data.glob("cam-k/*/*.jpg")}
    assert on_disk == {path for _, path in rows}
    assert not list(data.rglob(".tmp-*"))
    # Only frames that were in flight to the backend when it died may be missing, each logged.
    missing = set(frames) - {fid for fid, _ in rows}
    assert all(fid < down_from and lost_logged(fid) for fid in missing), missing
