"""Backend protocol decoding against the shared vectors (tests/vectors/chunks.json), topics,
node ids and commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from espcam.backend.protocol import (
    ChunkError,
    CommandError,
    TopicError,
    build_command,
    decode_chunk,
    encode_command,
    parse_ack,
    parse_topic,
    topic,
)
from espcam.backend.reassembly import Reassembler

VECTORS = json.loads((Path(__file__).parent / "vectors" / "chunks.json").read_text())


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


# What the backend says for each rule an invalid vector breaks (the vector's "rule"): the
# reason must be the broken rule, not some other check that happened to fire first.
RULE_MESSAGES = {
    "header_length": r"shorter than the 28-byte header",
    "magic": r"^bad magic b'XX'",
    "version": r"^unknown protocol version 2",
    "total_len_range": r"^total_len (0|16777217) outside 1 \.\.\. 16777216",
    "chunk_size_range": r"^chunk_size (100|65537) outside 256 \.\.\. 65536",
    "count_matches": r"^count 5 disagrees with total_len 1000 and chunk_size 256 \(expected 4\)",
    "index_below_count": r"^index 4 not below count 4",
    "payload_length": r"^payload of chunk 1/4 is 25[57] bytes, expected 256",
    "meta_len_within_message": r"^meta_len 60000 runs beyond",
    "meta_len_needs_flag": r"^meta_len 3 but the metadata flag is clear",
    "meta_on_chunk_0_only": r"^metadata on chunk 1; only chunk 0",
}


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vector_is_rejected_for_the_rule_it_breaks(case):
    with pytest.raises(ChunkError, match=RULE_MESSAGES[case["rule"]]):
        decode_chunk(bytes.fromhex(case["chunk_hex"]))


def test_every_rule_of_the_vectors_is_checked():
    assert {c["rule"] for c in VECTORS["invalid"]} == set(RULE_MESSAGES)


def test_metadata_must_be_a_json_object():
    case = VECTORS["valid"][0]
    raw = bytearray(bytes.fromhex(case["chunks_hex"][0]))
    meta_len = int.from_bytes(raw[24:26], "big")
    raw[28:28 + meta_len] = b"[" + b" " * (meta_len - 2) + b"]"
    with pytest.raises(ChunkError, match="not an object"):
        decode_chunk(bytes(raw))


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
