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


def test_publishing_a_frame_allocates_the_same_whatever_its_size(broker):
    # Through the real Sender and Link to a real broker, with the garbage collector off: the
    # bytes allocated for a 200 KB frame (50 chunks) equal those for a 10 KB one (3 chunks),
    # so no chunk allocates anything and the frame is never copied.
    lines = lines_ok(run_mpy("alloc_check.py", broker.host, str(broker.port), heapsize="1m"))
    rows = [tuple(int(x) for x in ln.split()) for ln in lines]
    assert [(n, chunks) for n, chunks, _ in rows] == [
        (10240, 3), (10240, 3), (204800, 50), (10240, 3), (204800, 50)]
    assert len({used for _, _, used in rows[1:]}) == 1, rows


def test_a_frame_needing_more_than_65535_chunks_is_refused_not_garbled():
    lines = lines_ok(run_mpy("limits_check.py", heapsize="20m", timeout=300))
    assert lines[0] == "sent 65535"
    assert lines[1].startswith("refused ") and "65535 chunks" in lines[1]
