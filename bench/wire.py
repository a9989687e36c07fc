"""Bench item 5: bytes on the wire per frame against the JPEG's size, at several chunk sizes.

Counts the bytes of the actual packets the protocol produces (bench.common.encode_chunks and
publish_packet, the same encoding as the node's Sender and umqtt.simple), the PUBACK, the TCP/IP
headers of the segments they need, and the resend traffic of one lost chunk and of a whole frame
sent again after a lost PUBACK. Also the node's RAM for the chunk buffer and the writes per
chunk."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from bench.common import encode_chunks, jpeg_pool, publish_packet, table
from bench.ingest import CACHE

MSS = 1436        # TCP payload per segment over Wi-Fi (1500 MTU - IP/TCP headers, typical)
TCPIP = 40 + 12   # IPv4 + TCP headers + timestamps option, per segment
LWIP_SND_BUF = 5744  # ESP32 lwIP default TCP send buffer (4 x MSS), see docs/protocol.md
META = json.dumps({"t": 1763980000.25, "up": 123456, "trigger": "interval", "fs": "VGA",
                   "q": 80, "wake": "timer"}).encode()
TOPIC = b"espcam/cam-a1b2c3/frame"


def frame_wire(jpeg: bytes, chunk: int) -> dict[str, Any]:
    chunks = encode_chunks(jpeg, 42, chunk, META)
    pk = [publish_packet(TOPIC, c, 1 if i == len(chunks) - 1 else 0, 7)
          for i, c in enumerate(chunks)]
    mqtt = sum(len(p) for p in pk)
    puback = 4
    # the node writes the packets back to back; TCP cuts the stream into MSS segments
    segs = math.ceil(mqtt / MSS)
    wire = mqtt + segs * TCPIP + puback + TCPIP
    # with TCP_NODELAY and umqtt.simple's 4-5 writes per packet, each small write would leave
    # as its own segment: 3 (fixed header, topic length, topic) + 1 for the packet id
    nd_segs = sum(3 + (1 if i == len(chunks) - 1 else 0) + math.ceil(len(c) / MSS)
                  for i, c in enumerate(chunks))
    proto_hdr = 28 * len(chunks) + len(META)
    mqtt_hdr = mqtt - sum(len(c) for c in chunks)
    # one lost chunk: resend command (~90 B JSON) + its PUBACK, the chunk again, the ack
    cmd = len(b'{"id": "resend-0123456789ab", "cmd": "resend", "frame": 42, "chunks": [3]}')
    cmd_pkt = len(publish_packet(b"espcam/cam-a1b2c3/cmd", b"x" * cmd, 1, 1)) + 4
    ack = len(b'{"id": "resend-0123456789ab", "cmd": "resend", "ok": true, '
              b'"result": {"frame": 42, "chunks": 1}}')
    ack_pkt = len(publish_packet(b"espcam/cam-a1b2c3/ack", b"x" * ack, 1, 2)) + 4
    one = len(publish_packet(TOPIC, chunks[min(3, len(chunks) - 1)], 1, 9)) + 4
    resend_one = cmd_pkt + one + ack_pkt + 3 * TCPIP * 2
    return {"chunk": chunk, "count": len(chunks), "jpeg": len(jpeg), "mqtt": mqtt,
            "wire": wire, "proto_hdr": proto_hdr, "mqtt_hdr": mqtt_hdr, "segments": segs,
            "overhead_pct": 100 * (wire - len(jpeg)) / len(jpeg),
            "resend_one": resend_one,
            "nodelay_umqtt_pct": 100 * (mqtt + (nd_segs + 1) * TCPIP + 4 - len(jpeg))
            / len(jpeg),
            "resend_all": wire,
            "node_ram": 28 + 512 + chunk, "fits_sndbuf": 28 + len(TOPIC) + 9 + chunk
            <= LWIP_SND_BUF, "writes": 4 * len(chunks) + 1}


def run(quick: bool) -> dict[str, Any]:
    pool = jpeg_pool(CACHE, 16)
    sizes = sorted(pool, key=len)
    frame = sizes[len(sizes) // 2]  # a median VGA frame
    rows, res = [], []
    for cs in (1024, 2048, 4096, 8192, 16384):
        r = frame_wire(frame, cs)
        res.append(r)
        rows.append([("**4096 (default)**" if cs == 4096 else cs), r["count"],
                     r["mqtt_hdr"], r["proto_hdr"], r["segments"] * TCPIP + TCPIP + 4,
                     r["wire"], f"{r['overhead_pct']:.2f} %", f"{r['nodelay_umqtt_pct']:.2f} %",
                     r["resend_one"],
                     r["node_ram"], "yes" if r["fits_sndbuf"] else "no", r["writes"]])
    text = (f"One VGA JPEG of {len(frame)} bytes; topic `{TOPIC.decode()}`; "
            f"metadata {len(META)} bytes; TCP segments of {MSS} bytes with {TCPIP} bytes of "
            f"IPv4+TCP headers.\n\n"
            + table(["chunk size", "chunks", "MQTT headers B", "protocol headers+meta B",
                     "TCP/IP + PUBACK B", "bytes on the wire", "overhead",
                     "overhead if TCP_NODELAY without coalescing", "resend 1 chunk B",
                     "node RAM B", "chunk fits lwIP send buffer", "umqtt writes/frame"], rows)
            + "\n\nA whole-frame resend (lost PUBACK, the node reconnects) costs the frame "
            "again: 100 % of the row's bytes on the wire, whatever the chunk size.")
    return {"text": text, "rows": res}


if __name__ == "__main__":
    print(run("--quick" in sys.argv)["text"])
