"""Reassembly edge cases: order, duplicates, CRC, disagreeing chunks, limits, resends, loss."""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from espcam.backend.jpeg import JpegInfo, NotAJpeg, inspect_jpeg  # noqa: E402
from espcam.backend.ledger import Ledger  # noqa: E402
from espcam.backend.protocol import decode_chunk  # noqa: E402
from espcam.backend.reassembly import FrameRejected, Limits, Reassembler  # noqa: E402
from lightnode import encode_chunks, make_jpeg  # noqa: E402


def chunks_of(data: bytes, frame_id: int = 1, chunk_size: int = 256, meta=None, version=1):
    """A version 1 node's chunks unless asked: its frames given up are lost."""
    return [decode_chunk(c) for c in encode_chunks(data, frame_id, chunk_size,
                                                   meta or {"trigger": "boot"},
                                                   version=version)]


def feed(r: Reassembler, node: str, chunks, now: float = 0.0, ledger: Ledger | None = None):
    """Chunks in, as the backend's frame path takes them: the ledger (if given) knows which
    frames are finished, the reassembler holds only the incomplete ones."""
    done = None
    for c in chunks:
        if ledger and ledger.check_chunk(node, c.frame_id, c.crc32) in ("duplicate",
                                                                    "stored_before"):
            continue
        try:
            frame, _ = r.add(node, c, now)
        except FrameRejected as e:
            if ledger and not e.retry:
                ledger.finished(node, e.frame_id, e.crc32)
            raise
        if frame and ledger:
            ledger.finished(node, frame.frame_id, frame.crc32)
        done = done or frame
    return done


def new_ledger() -> Ledger:
    return Ledger(lambda node, n: [])


def test_any_order_with_duplicates_completes_once():
    data = make_jpeg(seed=1)
    cs = chunks_of(data)
    shuffled = cs + cs[::2]
    random.Random(4).shuffle(shuffled)
    r, ledger = Reassembler(), new_ledger()
    frames = [f for c in shuffled if (f := feed(r, "cam-1", [c], ledger=ledger))]
    assert len(frames) == 1 and frames[0].data == data
    assert frames[0].meta == {"trigger": "boot"}
    assert r.frames_held == 0 and r.bytes_held == 0
    # A whole retransmission of a finished frame is recognised, not started again.
    assert feed(r, "cam-1", cs, ledger=ledger) is None and r.frames_held == 0


def test_same_frame_id_on_two_nodes_is_two_frames():
    a, b = make_jpeg(seed=1), make_jpeg(seed=2)
    r = Reassembler()
    assert feed(r, "cam-a", chunks_of(a, 5)).data == a
    assert feed(r, "cam-b", chunks_of(b, 5)).data == b


def corrupted(data: bytes, frame_id: int, index: int = 1):
    raw = encode_chunks(data, frame_id, 256, None, version=1)
    bad = bytearray(raw[index])
    bad[-1] ^= 1
    raw[index] = bytes(bad)
    return [decode_chunk(c) for c in raw]


def test_crc_mismatch_asks_for_the_whole_frame_again_and_a_clean_copy_completes():
    data = make_jpeg(seed=3)
    r = Reassembler(Limits(resend_after=1.0))
    with pytest.raises(FrameRejected, match="CRC32.*asking the node for the whole frame") as e:
        feed(r, "cam-1", corrupted(data, 9), now=0.0)
    assert e.value.retry and (e.value.node, e.value.frame_id) == ("cam-1", 9)
    assert r.counters["crc_failures"] == 1 and r.counters["frames_lost"] == 0
    assert r.frames_held == 1 and r.bytes_held == 0  # the bad bytes are let go
    (req,), lost = r.tick(0.1)  # asked for at once, not after resend_after
    assert lost == [] and req.whole and req.frame_id == 9
    assert req.chunks == list(range(len(encode_chunks(data, 9, 256, None))))
    frame = feed(r, "cam-1", chunks_of(data, 9), now=0.2)
    assert frame is not None and frame.data == data
    assert r.frames_held == 0 and r.bytes_held == 0


def test_crc_mismatch_twice_is_given_up_and_counted_lost():
    data = make_jpeg(seed=3)
    r, ledger = Reassembler(), new_ledger()
    with pytest.raises(FrameRejected):
        feed(r, "cam-1", corrupted(data, 9), ledger=ledger)
    r.tick(0.1)
    with pytest.raises(FrameRejected, match="LOST frame 9 of node cam-1.*again") as e:
        feed(r, "cam-1", corrupted(data, 9), ledger=ledger)
    assert not e.value.retry
    assert r.counters["crc_failures"] == 2 and r.counters["frames_lost"] == 1
    assert r.frames_held == 0 and r.bytes_held == 0
    # Later copies are duplicates of a frame given up.
    assert feed(r, "cam-1", corrupted(data, 9), ledger=ledger) is None
    assert r.frames_held == 0


def test_a_reused_frame_id_with_another_crc_starts_a_new_frame():
    a, b = make_jpeg(seed=1), make_jpeg(seed=2)
    r, ledger = Reassembler(), new_ledger()
    assert feed(r, "cam-1", chunks_of(a, 7), ledger=ledger).data == a
    assert feed(r, "cam-1", chunks_of(a, 7), ledger=ledger) is None
    assert feed(r, "cam-1", chunks_of(b, 7), ledger=ledger).data == b
    assert ledger.counters["reused_frame_ids"] == 1


def test_frames_stored_before_a_restart_are_known_duplicates():
    data = make_jpeg(seed=5)
    crc = chunks_of(data, 3)[0].crc32
    ledger = Ledger(lambda node, n: [(3, crc)] if node == "cam-1" else [])
    r = Reassembler()
    # The broker hands over the frame's last chunk again after a restart: no frame opened.
    assert feed(r, "cam-1", chunks_of(data, 3)[-1:], ledger=ledger) is None
    assert r.frames_held == 0


def test_chunk_disagreeing_with_earlier_chunks_is_rejected():
    a = chunks_of(make_jpeg(seed=1), 3)
    b = chunks_of(make_jpeg(seed=2), 3)  # same frame id, other content
    r = Reassembler()
    r.add("cam-1", a[0], 0.0)
    with pytest.raises(ValueError, match="disagrees"):
        r.add("cam-1", b[1], 0.0)


def test_non_jpeg_frame_is_rejected_by_inspection():
    assert inspect_jpeg(make_jpeg(64, 48)).width == 64
    truncated = make_jpeg(seed=5)[:-400]
    for junk in (b"\x00" * 1000, b"GIF89a" + b"\x00" * 100, truncated):
        with pytest.raises(NotAJpeg):
            inspect_jpeg(junk)


def full_decode_refuses(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return False
    except Exception:
        return True


def test_inspection_refuses_every_damaged_jpeg_a_full_decode_refuses():
    """The check decodes at 1/8 scale; damage must be caught exactly as by a full decode."""
    rnd = random.Random(7)
    refused = 0
    for src in (make_jpeg(seed=1), make_jpeg(640, 480, seed=2)):
        assert inspect_jpeg(src) == JpegInfo(*Image.open(io.BytesIO(src)).size)
        for _ in range(150):
            d = bytearray(src)
            at = rnd.randrange(2, len(d))
            match rnd.randrange(3):
                case 0:
                    del d[at:]
                case 1:
                    d[at] ^= 1 << rnd.randrange(8)
                case _:
                    del d[at:at + rnd.randrange(1, 200)]
            expected = full_decode_refuses(bytes(d))
            refused += expected
            try:
                inspect_jpeg(bytes(d))
                assert not expected, f"damage at byte {at} passed the check"
            except NotAJpeg:
                assert expected, f"a full decode takes damage at byte {at}, the check refused"
    assert refused > 30  # the damage was real: many of the frames were refused


def test_size_and_chunk_count_limits():
    r = Reassembler(Limits(max_frame_bytes=1000, max_chunks=3))
    with pytest.raises(ValueError, match="max_frame_bytes"):
        r.add("cam-1", chunks_of(b"x" * 1001)[0], 0.0)
    with pytest.raises(ValueError, match="max_chunks"):
        r.add("cam-1", chunks_of(b"x" * 1000)[0], 0.0)
    assert r.frames_held == 0


def test_flood_of_frames_that_never_complete_stays_bounded():
    lim = Limits(max_frames_per_node=3, max_frames_total=10, max_bytes_total=20_000)
    r = Reassembler(lim)
    big = b"y" * 15_000
    for node in range(20):
        for fid in range(1, 30):
            # Chunk 0 only: every frame stays incomplete forever.
            r.add(f"cam-{node}", chunks_of(big, fid, 1024)[0], float(fid))
            assert r.frames_held <= lim.max_frames_total
            assert r.bytes_held <= lim.max_bytes_total
    assert r.counters["frames_lost"] > 0


def test_bytes_limit_holds_while_admitted_frames_grow():
    # Four frames start while there is room, then all of them keep receiving chunks: the
    # byte limit must hold on every chunk, not only when a frame starts.
    lim = Limits(max_bytes_total=20_000, max_frames_per_node=8, max_frames_total=8)
    r = Reassembler(lim)
    frames = {fid: chunks_of(make_jpeg(seed=fid), fid, 1024) for fid in range(1, 5)}
    lost = []
    for i in range(max(len(cs) for cs in frames.values()) - 1):  # never the last chunk
        for cs in frames.values():
            if i < len(cs) - 1:
                _, evicted = r.add("cam-1", cs[i], float(i))
                lost += evicted
            assert r.bytes_held <= lim.max_bytes_total, r.bytes_held
    assert lost and all("max_bytes_total" in x.reason for x in lost)


def test_frame_larger_than_the_total_byte_budget_is_refused_at_its_first_chunk():
    r = Reassembler(Limits(max_bytes_total=10_000))
    with pytest.raises(ValueError, match="max_bytes_total=10000"):
        r.add("cam-1", chunks_of(b"z" * 10_001, 1, 1024)[3], 0.0)
    assert r.frames_held == 0 and r.bytes_held == 0


def test_resend_requests_exactly_the_missing_chunks_then_gives_up():
    lim = Limits(resend_after=1.0, resend_tries=2, max_age=100)
    r = Reassembler(lim)
    cs = chunks_of(make_jpeg(seed=6), 4)
    n = len(cs)
    feed(r, "cam-1", [c for c in cs if c.index not in (1, n - 2)], now=0.0)
    assert r.tick(0.5) == ([], [])  # not quiet long enough yet
    reqs, lost = r.tick(1.0)
    assert [(q.node, q.frame_id, q.chunks) for q in reqs] == [("cam-1", 4, [1, n - 2])]
    r.add("cam-1", cs[1], 1.5)  # half of the answer arrives
    reqs, _ = r.tick(2.5)
    assert reqs[0].chunks == [n - 2] and reqs[0].attempt == 2
    reqs, lost = r.tick(3.5)
    assert reqs == [] and lost[0].frame_id == 4 and lost[0].missing == 1
    assert r.counters["frames_lost"] == 1 and r.frames_held == 0


def test_resend_completes_the_frame():
    data = make_jpeg(seed=7)
    cs = chunks_of(data, 8)
    r = Reassembler(Limits(resend_after=1.0))
    feed(r, "cam-1", cs[:-1], 0.0)
    (req,), _ = r.tick(1.0)
    assert req.chunks == [len(cs) - 1]
    assert feed(r, "cam-1", [cs[i] for i in req.chunks], 1.1).data == data


def test_node_saying_no_longer_held_means_lost_and_old_frames_expire():
    r = Reassembler(Limits(max_age=10))
    cs = chunks_of(make_jpeg(seed=8), 2)
    r.add("cam-1", cs[0], 0.0)
    lost = r.give_up("cam-1", 2, "node cannot resend: frame 2 is no longer held")
    assert lost and "no longer held" in lost.reason
    r.add("cam-1", chunks_of(make_jpeg(seed=9), 3)[0], 0.0)
    _, lost = r.tick(11.0)
    assert [x.frame_id for x in lost] == [3]


def test_a_version_2_frame_given_up_incomplete_is_let_go_not_lost():
    # Its node keeps it until the backend confirms it, and sends it again.
    r = Reassembler(Limits(resend_after=1.0, resend_tries=1, max_age=100))
    cs = chunks_of(make_jpeg(seed=6), 4, version=2)
    feed(r, "cam-1", cs[:-1], now=0.0)
    r.tick(1.0)
    _, lost = r.tick(2.0)
    assert [(x.frame_id, x.version) for x in lost] == [(4, 2)]
    assert r.counters["frames_let_go"] == 1 and r.counters["frames_lost"] == 0
