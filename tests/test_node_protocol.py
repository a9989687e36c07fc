"""The node's protocol code, run on the real MicroPython interpreter, against the contract:
backend/protocol.json and the vectors in tests/vectors/."""

import ast
import json
import re

from mpy import ROOT, lines_ok, run_mpy

VECTORS = ROOT / "tests" / "vectors"
SPEC = ROOT / "backend" / "protocol.json"
NODE_LIB = ROOT / "node" / "lib" / "espcam"


def test_node_agrees_with_every_vector_for_the_same_reason():
    # Chunks as the node sends them, byte for byte (version 2; an older node's chunks it reads);
    # invalid chunks and commands refused for the vector's rule; error acks carrying that rule
    # as code, with the id and cmd it could read; every valid confirm read to its stored and
    # lost ids, every invalid one refused for its rule; dropped documents built as the valid
    # vectors and read back by the rules the invalid ones break, for every reason it gives.
    lines = lines_ok(run_mpy("vectors_check.py", str(VECTORS)))
    chunks, cmds, acks, v2 = (json.loads((VECTORS / f"{n}.json").read_text())
                              for n in ("chunks", "commands", "acks", "confirm"))
    # The node builds acks and never reads them: of the ack vectors, the valid ones it could
    # have written (ids that are strings or null) are its to match.
    writable = [a for a in acks["valid"] if not isinstance(json.loads(a["payload"])["id"], int)]
    reasons = json.loads(SPEC.read_text())["dropped"]["reasons"]
    want = {"chunks": len(chunks["valid"]) + len(chunks["invalid"]),
            "commands": len(cmds["valid"]) + len(cmds["invalid"]), "acks": len(writable),
            "confirm": len(v2["confirm"]["valid"]) + len(v2["confirm"]["invalid"])}
    got = {k: sum(ln.split()[1] == k for ln in lines) for k in want}
    assert got == want
    dropped = sum(ln.split()[1] == "dropped" for ln in lines)
    assert dropped >= len(v2["dropped"]["valid"]) + len(v2["dropped"]["invalid"]) + len(reasons)
    assert [ln for ln in lines if not ln.startswith("ok")] == []


# A reason the node gives that protocol.json does not list yet (docs/node.md, "The spool"):
# what a RAM spool held when the node was reset.
EXTRA_REASONS = {"node reset before it was confirmed"}


def test_node_tables_agree_with_protocol_json():
    lines = lines_ok(run_mpy("tables_check.py", str(SPEC)))
    spec = json.loads(SPEC.read_text())
    checked = {ln.split(" ", 1)[1] for ln in lines}
    assert {f"command {c}" for c in spec["commands"]["names"]} <= checked
    assert {f"setting {s}" for s in spec["settings"]} <= checked
    assert {"versions read", "topic dropped", "topic confirm", "confirm", "dropped",
            "dropped reasons", "spool kinds", "topic doorbell", "ring", "ring size",
            "button trigger and wake"} <= checked
    extra = {ln.split(": ", 1)[1] for ln in lines if ln.startswith("extra dropped reason: ")}
    assert extra <= EXTRA_REASONS
    assert [ln for ln in lines if not ln.startswith(("ok", "extra dropped reason: "))] == []


def test_the_state_document_has_the_keys_protocol_json_lists():
    tree = ast.parse((NODE_LIB / "app.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Node")
    state = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "state")
    doc = next(n.value for n in ast.walk(state) if isinstance(n, ast.Return))
    assert [k.value for k in doc.keys] == json.loads(SPEC.read_text())["state"]["keys"]


def test_node_tables_check_fails_on_a_protocol_json_that_differs(tmp_path):
    spec = json.loads(SPEC.read_text())
    spec["chunk"]["header"][-1][1] = "I"
    spec["settings"]["quality"]["range"] = [1, 99]
    spec["commands"]["names"]["flash"]["ms"]["default"] = 100
    spec["commands"]["names"]["selfdestruct"] = {}
    spec["accepts"] = [2]
    spec["confirm"]["max_ids"] = 100
    spec["dropped"]["reasons"][0] = "spool overflow"
    spec["topics"]["dropped"]["retain"] = True
    other = tmp_path / "protocol.json"
    other.write_text(json.dumps(spec))
    failed = {ln.split(":")[0] for ln in lines_ok(run_mpy("tables_check.py", str(other)))
              if ln.startswith("FAIL")}
    assert failed == {"FAIL chunk header format", "FAIL setting quality", "FAIL command flash",
                      "FAIL command names", "FAIL versions read", "FAIL confirm",
                      "FAIL dropped reasons", "FAIL topic dropped"}


def rules_in(source: str, function: str, pattern: str) -> list[str]:
    """The refusal rules one function names, in the order it first names them."""
    body = source[source.index(f"def {function}("):]
    body = body[:body.index("\ndef ", 1)] if "\ndef " in body[1:] else body
    return list(dict.fromkeys(re.findall(pattern, body)))


def test_node_refusal_rules_are_the_protocols_in_its_order():
    spec = json.loads(SPEC.read_text())["refusals"]
    source = (NODE_LIB / "receiver.py").read_text()
    assert rules_in(source, "unpack_header", r'_refuse\("(\w+)"') == spec["chunk"]
    assert rules_in(source, "parse_dropped", r'_refuse\("(\w+)"') == spec["dropped"]
    spool = (NODE_LIB / "spool.py").read_text()
    assert rules_in(spool, "parse_confirm", r'ValueError\("(\w+):') == spec["confirm"]
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


def test_publishing_a_frame_allocates_the_same_whatever_its_size(broker, tmp_path):
    # Through the real Sender and Link to a real broker, with the garbage collector off and the
    # spool on: the bytes allocated for a 200 KB frame (50 chunks) equal those for a 10 KB one
    # (3 chunks), sent new from a RAM spool, again from it, and again from an SD spool's file,
    # so no chunk allocates anything, a frame in RAM is never copied and one on the card is
    # never read whole.
    lines = lines_ok(run_mpy("alloc_check.py", broker.host, str(broker.port), heapsize="1m",
                             cwd=tmp_path))
    rows = [(path, int(n), int(chunks), int(used))
            for path, n, chunks, used in (ln.split() for ln in lines)]
    for path in ("new", "ram", "sd"):
        mine = [r[1:] for r in rows if r[0] == path]
        assert [(n, chunks) for n, chunks, _ in mine] == [
            (10240, 3), (10240, 3), (204800, 50), (10240, 3), (204800, 50)], path
        assert len({used for _, _, used in mine[1:]}) == 1, (path, mine)


def test_a_frame_needing_more_than_65535_chunks_is_refused_not_garbled():
    lines = lines_ok(run_mpy("limits_check.py", heapsize="20m", timeout=300))
    assert lines[0] == "sent 65535"
    assert lines[1].startswith("refused ") and "65535 chunks" in lines[1]
