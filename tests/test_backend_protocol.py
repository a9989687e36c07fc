"""Backend protocol decoding against the shared vectors (tests/vectors/chunks.json), topics,
node ids and commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from espcam.backend.documents import (
    AckError,
    CommandError,
    DocumentError,
    build_command,
    encode_command,
    encode_confirm,
    parse_ack,
    parse_command,
    parse_confirm,
    parse_dropped,
)
from espcam.backend.protocol import SPEC, ChunkError, TopicError, decode_chunk, parse_topic, topic
from espcam.backend.reassembly import Reassembler

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS = json.loads((VECTORS_DIR / "chunks.json").read_text())
COMMANDS = json.loads((VECTORS_DIR / "commands.json").read_text())
ACKS = json.loads((VECTORS_DIR / "acks.json").read_text())


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_vector_decodes_and_reassembles(case):
    chunks = [decode_chunk(bytes.fromhex(h)) for h in case["chunks_hex"]]
    assert {c.frame_id for c in chunks} == {case["frame_id"]}
    assert chunks[0].meta == case["meta"]
    assert all(c.resent == bool(case["flags"] & 2) for c in chunks)
    r = Reassembler()
    # Backwards, to show order does not matter.
    results = [r.add("cam-1", c, 0.0)[0] for c in reversed(chunks)]
    frame = results[-1]
    assert frame is not None and all(x is None for x in results[:-1])
    assert frame.data.hex() == case["frame_hex"]
    assert frame.crc32 == case["crc32"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vector_is_rejected_for_the_rule_it_breaks(case):
    # The reason must be the broken rule, not some other check that happened to fire first.
    with pytest.raises(ChunkError) as e:
        decode_chunk(bytes.fromhex(case["chunk_hex"]))
    assert e.value.rule == case["rule"], str(e.value)


def test_every_refusal_of_the_spec_has_a_vector():
    refusals = SPEC["refusals"]
    assert {c["rule"] for c in VECTORS["invalid"]} == set(refusals["chunk"])
    assert {c["rule"] for c in COMMANDS["invalid"]} == set(refusals["command"])
    assert {c["rule"] for c in ACKS["invalid"]} == set(refusals["ack"])


@pytest.mark.parametrize("case", COMMANDS["valid"], ids=lambda c: c["name"])
def test_valid_command_vector_parses_to_its_arguments(case):
    parsed = parse_command(case["payload"].encode())
    assert parsed == {"id": case["id"], "cmd": case["cmd"], "args": case["args"]}


@pytest.mark.parametrize("case", COMMANDS["invalid"], ids=lambda c: c["name"])
def test_invalid_command_vector_is_refused_for_its_rule(case):
    with pytest.raises(CommandError) as e:
        parse_command(case["payload"].encode())
    assert e.value.rule == case["rule"], str(e.value)
    # What the node answers is an ack the backend reads back with that rule.
    ack = dict(case["ack"], error=str(e.value))
    parsed = parse_ack(json.dumps(ack).encode())
    assert (parsed.id, parsed.cmd, parsed.ok, parsed.code) == (
        case["ack"]["id"], case["ack"]["cmd"], False, case["rule"])


@pytest.mark.parametrize("case", ACKS["valid"], ids=lambda c: c["name"])
def test_valid_ack_vector_parses(case):
    a = parse_ack(case["payload"].encode())
    assert (a.id, a.cmd, a.ok, a.result, a.error, a.code) == (
        case["id"], case["cmd"], case["ok"], case["result"], case["error"], case["code"])


@pytest.mark.parametrize("case", ACKS["invalid"], ids=lambda c: c["name"])
def test_invalid_ack_vector_is_refused_for_its_rule(case):
    with pytest.raises(AckError) as e:
        parse_ack(case["payload"].encode())
    assert e.value.rule == case["rule"]


def test_the_backend_builds_exactly_what_the_node_accepts():
    # Every valid vector, rebuilt from its arguments, parses back to the same command.
    for case in COMMANDS["valid"]:
        doc = build_command(case["cmd"], case["id"], **case["args"])
        assert parse_command(encode_command(doc)) == {
            "id": case["id"], "cmd": case["cmd"], "args": case["args"]}


HOSTILE = ["..", "../etc", "a/b", "A", "-x", "_x", "é", "cam\x00", "x" * 33, "x" * 10_000, "",
           "+", "#", "cam 1"]


@pytest.mark.parametrize("node", HOSTILE, ids=repr)
def test_hostile_node_ids_are_refused_in_topics(node):
    with pytest.raises(TopicError, match="node id|not <prefix>"):
        parse_topic("espcam", f"espcam/{node}/frame")
    with pytest.raises(ValueError):
        topic("espcam", node, "cmd")


def test_topic_round_trip_and_foreign_topics():
    assert parse_topic("home/espcam", "home/espcam/cam-a1b2c3/frame") == ("cam-a1b2c3", "frame")
    assert topic("espcam", "cam-a1b2c3", "image") == "espcam/cam-a1b2c3/image"
    for t in ("other/cam/frame", "espcam/cam/frame/x", "espcam/cam/bogus", "espcam/cam"):
        with pytest.raises(TopicError):
            parse_topic("espcam", t)


def test_commands_are_validated_before_sending():
    doc = build_command("flash", "f1", state="pulse", ms=300)
    assert doc == {"id": "f1", "cmd": "flash", "state": "pulse", "ms": 300}
    assert build_command("resend", "r", frame=7, chunks=[1, 3]) == {
        "id": "r", "cmd": "resend", "frame": 7, "chunks": [1, 3]}
    assert build_command("config", "c", set={"quality": 50, "flash_on_capture": True})["set"] == {
        "quality": 50, "flash_on_capture": True}
    assert len(encode_command(build_command("capture"))) < 1024
    assert build_command("sleep", "s", seconds=1_209_600)["seconds"] == 1_209_600
    junk = [
        lambda: build_command("selfdestruct"),
        lambda: build_command("flash", state="blink"),
        lambda: build_command("flash", state="pulse", ms=0),
        lambda: build_command("sleep", seconds=0),
        lambda: build_command("sleep", seconds=True),
        # Past the broker's persistent_client_expiration (14 days) the node's session and
        # queued commands are gone.
        lambda: build_command("sleep", seconds=1_209_601),
        lambda: build_command("config", set={"quality": 500}),
        lambda: build_command("config", set={"frame_size": "8K"}),
        lambda: build_command("config", set={"nope": 1}),
        lambda: build_command("config", set={}),
        lambda: build_command("capture", extra=1),
        lambda: build_command("resend", frame=1, chunks=list(range(1000))),
    ]
    for make in junk:
        with pytest.raises(CommandError):
            make()


def test_acks_parse_and_junk_acks_are_refused():
    ack = parse_ack(b'{"id": "a2", "cmd": "flash", "ok": false, "error": "no"}')
    assert (ack.id, ack.ok, ack.error) == ("a2", False, "no")
    for junk in (b"", b"\xff", b"[]", b'{"id": "x"}', b'{"ok": "yes"}'):
        with pytest.raises(ValueError):
            parse_ack(junk)


CONFIRM = json.loads((VECTORS_DIR / "confirm.json").read_text())


@pytest.mark.parametrize("case", CONFIRM["confirm"]["valid"], ids=lambda c: c["name"])
def test_valid_confirm_vector_names_its_frames(case):
    assert parse_confirm(case["payload"].encode()) == (case["stored"], case["lost"])
    # What the backend writes reads back the same.
    assert parse_confirm(encode_confirm(case["stored"], case["lost"])) == (
        case["stored"], case["lost"])


@pytest.mark.parametrize("case", CONFIRM["confirm"]["invalid"], ids=lambda c: c["name"])
def test_invalid_confirm_vector_is_refused_for_its_rule(case):
    with pytest.raises(DocumentError) as e:
        parse_confirm(case["payload"].encode())
    assert e.value.rule == case["rule"]


@pytest.mark.parametrize("case", CONFIRM["dropped"]["valid"], ids=lambda c: c["name"])
def test_valid_dropped_vector_names_its_frames_and_reason(case):
    assert parse_dropped(case["payload"].encode()) == (case["frames"], case["reason"])


@pytest.mark.parametrize("case", CONFIRM["dropped"]["invalid"], ids=lambda c: c["name"])
def test_invalid_dropped_vector_is_refused_for_its_rule(case):
    with pytest.raises(DocumentError) as e:
        parse_dropped(case["payload"].encode())
    assert e.value.rule == case["rule"]


def test_every_refusal_of_the_version_2_documents_has_a_vector():
    assert {c["rule"] for c in CONFIRM["confirm"]["invalid"]} == set(SPEC["refusals"]["confirm"])
    assert {c["rule"] for c in CONFIRM["dropped"]["invalid"]} == set(SPEC["refusals"]["dropped"])
