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
