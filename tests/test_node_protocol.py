"""The node's protocol code, run on the real MicroPython interpreter, against the contract:
backend/protocol.json and the vectors in tests/vectors/."""

import json
import re

from mpy import ROOT, lines_ok, run_mpy

VECTORS = ROOT / "tests" / "vectors"
SPEC = ROOT / "backend" / "protocol.json"
NODE_LIB = ROOT / "node" / "lib" / "espcam"


def test_node_agrees_with_every_vector_for_the_same_reason():
    # Chunks as the node sends them, byte for byte; invalid chunks and commands refused for the
    # vector's rule; error acks carrying that rule as code, with the id and cmd it could read.
    lines = lines_ok(run_mpy("vectors_check.py", str(VECTORS)))
    chunks, cmds, acks = (json.loads((VECTORS / f"{n}.json").read_text())
                          for n in ("chunks", "commands", "acks"))
    # The node builds acks and never reads them: of the ack vectors, the valid ones it could
    # have written (ids that are strings or null) are its to match.
    writable = [a for a in acks["valid"] if not isinstance(json.loads(a["payload"])["id"], int)]
    want = {"chunks": len(chunks["valid"]) + len(chunks["invalid"]),
            "commands": len(cmds["valid"]) + len(cmds["invalid"]), "acks": len(writable)}
    assert {k: sum(ln.split()[1] == k for ln in lines) for k in want} == want
    assert [ln for ln in lines if not ln.startswith("ok")] == []


def test_node_tables_agree_with_protocol_json():
    lines = lines_ok(run_mpy("tables_check.py", str(SPEC)))
    spec = json.loads(SPEC.read_text())
    checked = {ln.split(" ", 1)[1] for ln in lines}
    assert {f"command {c}" for c in spec["commands"]["names"]} <= checked
    assert {f"setting {s}" for s in spec["settings"]} <= checked
    assert [ln for ln in lines if not ln.startswith("ok")] == []


def test_node_tables_check_fails_on_a_protocol_json_that_differs(tmp_path):
    spec = json.loads(SPEC.read_text())
    spec["chunk"]["header"][-1][1] = "I"
    spec["settings"]["quality"]["range"] = [1, 99]
    spec["commands"]["names"]["flash"]["ms"]["default"] = 100
    spec["commands"]["names"]["selfdestruct"] = {}
    other = tmp_path / "protocol.json"
    other.write_text(json.dumps(spec))
    failed = {ln.split(":")[0] for ln in lines_ok(run_mpy("tables_check.py", str(other)))
              if not ln.startswith("ok")}
    assert failed == {"FAIL chunk header format", "FAIL setting quality", "FAIL command flash",
                      "FAIL command names"}


def test_node_refusal_rules_are_the_protocols_in_its_order():
    spec = json.loads(SPEC.read_text())["refusals"]
    source = (NODE_LIB / "receiver.py").read_text()
    unpack = source[source.index("def unpack_header"):]
    assert re.findall(r'_refuse\("(\w+)"', unpack) == spec["chunk"]
    used = set()
    for f in ("commands.py", "config.py", "app.py"):
        text = (NODE_LIB / f).read_text()
        used |= set(re.findall(r'(?:Refused|Invalid)\(\s*"(\w+)"', text))
    assert used == set(spec["command"])


def test_metadata_too_long_loses_the_command_id_first_and_is_refused_past_that():
    lines = lines_ok(run_mpy("meta_check.py"))
    assert lines[0].startswith("fits ") and lines[0].endswith(" False True")
    assert lines[1] == "trimmed 492 True fs,q,t,trigger,up,wake"
    assert lines[2] == "refused metadata of 692 bytes, more than the 512 a chunk head holds"


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
