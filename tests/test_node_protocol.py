"""The node's protocol code, run on the real MicroPython interpreter, against the contract."""

import json

from mpy import ROOT, lines_ok, run_mpy

VECTORS = ROOT / "tests" / "vectors" / "chunks.json"


def test_node_chunks_match_every_vector_and_reject_every_invalid_one():
    lines = lines_ok(run_mpy("vectors_check.py", str(VECTORS)))
    doc = json.loads(VECTORS.read_text())
    assert len(lines) == len(doc["valid"]) + len(doc["invalid"])
    assert [ln for ln in lines if not ln.startswith("ok")] == []


def test_frames_from_1_byte_to_1_mb_reassemble_identically_in_any_order():
    for seed in ("1", "2"):
        lines = lines_ok(run_mpy("reassemble_check.py", seed, heapsize="16m", timeout=300))
        assert len(lines) == 11
        assert [ln for ln in lines if not ln.startswith("ok")] == []


def test_chunking_allocates_per_chunk_never_per_byte():
    lines = lines_ok(run_mpy("alloc_check.py", heapsize="1m"))
    rows = [tuple(int(x) for x in ln.split()) for ln in lines]
    assert [r[0] for r in rows] == [10240, 61440, 204800]
    per_chunk = [used / chunks for _, chunks, used in rows]
    # A few small objects (memoryview slices, a header) per chunk, the same for every size;
    # a copy of the frame or of a chunk would show up as >= 4096 bytes per chunk.
    assert max(per_chunk) < 512, rows
    assert max(per_chunk) - min(per_chunk) < 64, rows
