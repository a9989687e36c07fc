"""Bench item 5: bytes on the wire per frame against the JPEG's size, at three chunk sizes.

The node's real Sender and Link (on MicroPython) send a median VGA JPEG to the loopback sink
of bench/sink.py with the segment size clamped to a Wi-Fi one (TCP_MAXSEG), and the sink
counts the data segments the kernel received (TCP_INFO). The node writes each chunk in two
writes (head, then payload) with TCP_NODELAY, so a head leaves as its own segment whenever the
send window is open; that is counted as measured, next to "one stream" (every segment full:
what Nagle's algorithm made of umqtt's writes before the fixes) and two candidates measured
the same way. The bytes of the MQTT and protocol headers are counted exactly (they are the
bytes the sink received), plus IPv4 + TCP headers per segment and the PUBACK.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, VENV_BIN, encode_chunks, jpeg_pool, publish_packet, table
from bench.ingest import CACHE

MSS = 1436        # TCP payload per segment: lwIP's TCP_MSS in common ESP32 builds
#                   (CONFIG_LWIP_TCP_MSS=1436 in Arduino-ESP32's defconfig, for one)
TCPIP = 40 + 12   # IPv4 + TCP headers + timestamps option, per segment (40 without it)
PUBACK = 4 + TCPIP
LWIP_SND_BUF = 5744  # lwIP TCP send buffer of the same builds (4 x MSS)
META = json.dumps({"t": 1763980000.25, "up": 123456, "trigger": "interval", "fs": "VGA",
                   "q": 80, "wake": "timer"}).encode()
TOPIC = b"espcam/cam-a1b2c3/frame"
SIZES = (2048, 4096, 8192)
HOWS = {"node": "now: 2 writes per chunk, TCP_NODELAY (measured)",
        "nagle": "candidate: Nagle on for QoS 0 chunks (measured)",
        "fill": "candidate: head + first segment of payload in one write (measured)"}


def measure(jpeg: Path, sizes: tuple[int, ...] = SIZES
            ) -> dict[tuple[str, int], tuple[float, float]]:
    """(how, chunk size) -> (data segments, bytes) per frame, from 11 frames minus 1 frame on
    separate connections (so connect, subscribe and disconnect cancel out)."""
    # TCP_MAXSEG is the MSS the sink announces; the sender takes the timestamp option off it.
    sink = subprocess.Popen([sys.executable, "-m", "bench.sink", "0", str(MSS + 12)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out = {}
    try:
        mport, _ = sink.stdout.readline().split()
        env = dict(os.environ,
                   MICROPYPATH=f"{ROOT / 'node' / 'lib'}:{ROOT / '.deps' / 'node-lib'}")
        for how in HOWS:
            for cs in sizes:
                got = []
                for n in (1, 11):
                    p = subprocess.run([str(VENV_BIN / "micropython"),
                                        str(ROOT / "bench/mpy/segments.py"), mport, str(jpeg),
                                        str(cs), str(n), how, str(MSS)],
                                       capture_output=True, text=True, env=env, timeout=120)
                    if p.returncode or p.stdout.strip() != "done":
                        raise RuntimeError("bench/mpy/segments.py failed:\n" + p.stdout
                                           + p.stderr)
                    _, segs, nbytes, mss = sink.stdout.readline().split()
                    if int(mss) > MSS:
                        raise RuntimeError(f"segments of {mss} bytes: the MSS clamp failed")
                    got.append((int(segs), int(nbytes)))
                out[(how, cs)] = ((got[1][0] - got[0][0]) / 10, (got[1][1] - got[0][1]) / 10)
    finally:
        sink.stdin.close()
        sink.terminate()
        sink.wait()
    return out


def frame_model(jpeg: bytes, chunk: int) -> dict[str, Any]:
    chunks = encode_chunks(jpeg, 42, chunk, META)
    pk = [publish_packet(TOPIC, c, 1 if i == len(chunks) - 1 else 0, 7)
          for i, c in enumerate(chunks)]
    stream = sum(len(p) for p in pk)
    # one lost chunk: resend command + its PUBACK, the chunk again + PUBACK, the node's ack
    cmd = len(b'{"id": "resend-0123456789ab", "cmd": "resend", "frame": 42, "chunks": [3]}')
    cmd_pkt = len(publish_packet(b"espcam/cam-a1b2c3/cmd", b"x" * cmd, 1, 1)) + 4
    ack = len(b'{"id": "resend-0123456789ab", "cmd": "resend", "ok": true, '
              b'"result": {"frame": 42, "chunks": 1}}')
    ack_pkt = len(publish_packet(b"espcam/cam-a1b2c3/ack", b"x" * ack, 1, 2)) + 4
    lost = chunks[min(3, len(chunks) - 1)]
    one = len(publish_packet(TOPIC, lost, 1, 9)) + 4
    # as the node sends it now: the head as a segment, then the payload (MSS segments); the
    # command, the node's ack and three PUBACKs one segment each
    one_segs = 1 + math.ceil((len(lost) - 28) / MSS) + 5
    return {"chunk": chunk, "count": len(chunks), "jpeg": len(jpeg), "stream": stream,
            "mqtt_hdr": stream - sum(len(c) for c in chunks),
            "proto_hdr": 28 * len(chunks) + len(META),
            "stream_segs": math.ceil(stream / MSS),
            "resend_one": cmd_pkt + ack_pkt + one + one_segs * TCPIP,
            "fits_sndbuf": 4 + 2 + len(TOPIC) + 2 + 28 + chunk <= LWIP_SND_BUF,
            "writes_now": 2 * len(chunks), "writes_before": 4 * len(chunks) + 1}


def wire(m: dict[str, Any], segs: float) -> tuple[float, float]:
    b = m["stream"] + segs * TCPIP + PUBACK
    return b, 100 * (b - m["jpeg"]) / m["jpeg"]


def run(quick: bool) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    frame = sorted(pool, key=len)[len(pool) // 2]  # a median VGA frame
    with tempfile.NamedTemporaryFile(suffix=".jpg", prefix="espcam-bench-") as f:
        f.write(frame)
        f.flush()
        got = measure(Path(f.name))
    rows, trade, res = [], [], []
    for cs in SIZES:
        m = frame_model(frame, cs)
        name = "**4096 (default)**" if cs == 4096 else str(cs)
        b, o = wire(m, m["stream_segs"])
        rows.append([name, m["count"], "before: one stream, every segment full (Nagle)",
                     m["stream_segs"], f"{b:,.0f}", f"{o:.2f} %"])
        for how, label in HOWS.items():
            segs, nbytes = got[(how, cs)]
            if round(nbytes) != m["stream"]:
                raise RuntimeError(f"{how} at {cs}: {nbytes} bytes received, "
                                   f"{m['stream']} expected")
            b, o = wire(m, segs)
            if how == "node":
                label, o_txt = f"**{label}**", f"**{o:.2f} %**"
            else:
                o_txt = f"{o:.2f} %"
            rows.append([name, m["count"], label, f"{segs:g}", f"{b:,.0f}", o_txt])
            m[f"{how}_segs"], m[f"{how}_overhead_pct"] = segs, o
        m["before_overhead_pct"] = wire(m, m["stream_segs"])[1]
        trade.append([name, m["mqtt_hdr"], m["proto_hdr"], m["resend_one"],
                      f"{m['writes_now']} ({m['writes_before']})",
                      "yes" if m["fits_sndbuf"] else "no"])
        res.append(m)
    text = (f"One VGA JPEG of {len(frame)} bytes; topic `{TOPIC.decode()}`; metadata "
            f"{len(META)} bytes; segments of at most {MSS} bytes, {TCPIP} bytes of IPv4 + TCP "
            f"headers each; the PUBACK ({PUBACK} B) counted once.\n\n"
            + table(["chunk size", "chunks", "how the node writes", "segments/frame",
                     "bytes on the wire", "overhead vs JPEG"],
                    [[r[0], r[1], r[2], r[3], r[4].replace(",", " "), r[5]] for r in rows])
            + "\n\n"
            + table(["chunk size", "MQTT headers B", "protocol headers + meta B",
                     "resend of 1 lost chunk B", "node writes/frame (before)",
                     f"chunk fits lwIP send buffer ({LWIP_SND_BUF})"], trade)
            + "\n\nA whole-frame resend (lost PUBACK, the node reconnects) costs the frame "
            "again: 100 % of the row's bytes, whatever the chunk size. The node's RAM for "
            "sending no longer depends on the chunk size (two head buffers of "
            f"{2 * (4 + 2 + len(TOPIC) + 28 + 512) + 2} bytes; the payload is written from "
            "the frame buffer).")
    return {"text": text, "rows": res, "measured": {f"{k[0]}@{k[1]}": v for k, v in got.items()}}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
