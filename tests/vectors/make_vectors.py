"""Regenerate chunks.json, the protocol's chunk test vectors (docs/protocol.md, "Frame chunks").

Valid chunks come from the protocol's one encoder outside the node
(espcam.backend.protocol.encode_chunks); the node's own Sender must produce them byte for byte
(tests/test_node_protocol.py). Invalid ones are valid chunks with one rule broken each, named
in `rule` (backend/protocol.json, refusals.chunk). commands.json and acks.json are written by
hand. Run: .venv/bin/python tests/vectors/make_vectors.py
"""

import json
import struct
import zlib
from pathlib import Path

from espcam.backend.protocol import VERSION as PROTOCOL
from espcam.backend.protocol import encode_chunks


def frame_bytes(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def chunks(frame: bytes, frame_id: int, chunk_size: int, meta: dict | None, flags: int = 0,
           version: int = PROTOCOL):
    return encode_chunks(frame, frame_id, chunk_size, meta, flags, version=version)


def valid_cases():
    meta = {"t": 1763980000.25, "up": 5123, "trigger": "command", "fs": "VGA", "q": 80,
            "wake": "none", "cmd": "a1"}
    specs = [
        ("one byte", 1, 256, 1, meta, 0),
        ("three and a bit chunks", 1000, 256, 7, meta, 0),
        ("exact multiple of chunk size", 512, 256, 4294967295, None, 0),
        ("default chunk size", 10000, 4096, 42, {"trigger": "interval", "t": None}, 0),
        ("resent chunks", 700, 256, 9, None, 2),
    ]
    # A version 1 node's frame: receivers of version 2 read it too; a version 2 node never
    # sends one (its own test skips it).
    specs_v1 = [("version 1 node", 600, 256, 3, {"trigger": "boot"}, 0)]
    cases = []
    for seed, (name, n, cs, fid, m, flags) in enumerate(specs + specs_v1):
        version = 1 if (name, n, cs, fid, m, flags) in specs_v1 else PROTOCOL
        frame = frame_bytes(n, seed)
        cs_list = chunks(frame, fid, cs, m, flags, version)
        cases.append({
            "name": name,
            "version": version,
            "frame_id": fid,
            "chunk_size": cs,
            "flags": flags,
            "frame_hex": frame.hex(),
            "crc32": zlib.crc32(frame) & 0xFFFFFFFF,
            "meta": m,
            # The exact metadata bytes in chunk 0 (key order is not part of the contract).
            "meta_json": json.dumps(m, separators=(",", ":")) if m is not None else None,
            "chunks_hex": [c.hex() for c in cs_list],
        })
    return cases


def invalid_cases():
    good = chunks(frame_bytes(1000, 1), 5, 256, {"trigger": "boot"})
    c0, c1 = good[0], good[1]

    def patch(c: bytes, off: int, fmt: str, value) -> bytes:
        b = bytearray(c)
        struct.pack_into(fmt, b, off, value)
        return bytes(b)

    meta_on_1 = bytearray(c1)
    meta_on_1[3] = 1
    meta_len = struct.unpack_from(">H", c0, 24)[0]
    not_json = c0[:28] + b"{" * meta_len + c0[28 + meta_len:]
    not_object = c0[:28] + (b"[" + b" " * (meta_len - 2) + b"]") + c0[28 + meta_len:]
    return [
        ("shorter than header", c0[:20]),
        ("bad magic", b"XX" + c0[2:]),
        ("unknown version", patch(c0, 2, ">B", 3)),
        ("total_len zero", patch(c0, 8, ">I", 0)),
        ("total_len too large", patch(c0, 8, ">I", 16777217)),
        ("chunk_size too small", patch(c0, 16, ">I", 100)),
        ("chunk_size too large", patch(c0, 16, ">I", 65537)),
        ("count disagrees", patch(c1, 22, ">H", 5)),
        ("index beyond count", patch(c1, 20, ">H", 4)),
        ("payload too short", c1[:-1]),
        ("payload too long", c1 + b"\x00"),
        ("meta_len beyond message", patch(c0, 24, ">H", 60000)),
        ("meta_len without meta flag", patch(c1, 24, ">H", 3)),
        ("metadata on chunk other than 0", bytes(meta_on_1)),
        ("unknown flag bit", patch(c1, 3, ">B", 4)),
        ("reserved not zero", patch(c1, 26, ">H", 1)),
        ("metadata not JSON", not_json),
        ("metadata not an object", not_object),
    ]


# The protocol rule each invalid vector breaks (docs/protocol.md, "Frame chunks"), so that a
# receiver's test can check it rejects the chunk for that reason and not another.
RULES = {
    "shorter than header": "header_length",
    "bad magic": "magic",
    "unknown version": "version",
    "total_len zero": "total_len_range",
    "total_len too large": "total_len_range",
    "chunk_size too small": "chunk_size_range",
    "chunk_size too large": "chunk_size_range",
    "count disagrees": "count_matches",
    "index beyond count": "index_below_count",
    "payload too short": "payload_length",
    "payload too long": "payload_length",
    "meta_len beyond message": "meta_len_within_message",
    "meta_len without meta flag": "meta_len_needs_flag",
    "metadata on chunk other than 0": "meta_on_chunk_0_only",
    "unknown flag bit": "flags",
    "reserved not zero": "reserved",
    "metadata not JSON": "meta_not_json",
    "metadata not an object": "meta_not_object",
}


def main() -> None:
    doc = {
        "protocol": PROTOCOL,
        "about": "Frame chunk vectors, see docs/protocol.md (Frame chunks) and "
                 "backend/protocol.json (chunk, refusals.chunk)",
        "valid": valid_cases(),
        "invalid": [{"name": n, "chunk_hex": c.hex(), "rule": RULES[n]}
                    for n, c in invalid_cases()],
    }
    out = Path(__file__).with_name("chunks.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
