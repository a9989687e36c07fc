"""`espcam faces add|list|remove` and `espcam annotate` on a data directory, and the findings in
the index: kept with their frame, gone with it, and an index from before analysis still read
(docs/doorbell.md). Photos of real people: tests/facephotos.py."""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import facephotos  # noqa: E402
from espcam.backend import faces, findings, people  # noqa: E402
from espcam.backend.storage import Storage  # noqa: E402

from espcam.cli import main as espcam  # noqa: E402

needs_faces = pytest.mark.usefixtures("faces_installed")  # fails, never skips


def store(data_dir: Path, node: str, fid: int, jpeg: bytes, trigger: str = "button"):
    s = Storage(data_dir)
    try:
        return s.store(node, fid, jpeg, crc=zlib.crc32(jpeg), received_at=time.time(),
                       width=640, height=480, trigger=trigger)
    finally:
        s.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = espcam(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_faces
def test_enrol_from_photos_and_stored_frames_list_and_remove(tmp_path, data_dir, capsys):
    d = ["--data-dir", str(data_dir)]
    portrait = tmp_path / "alice.jpg"
    portrait.write_bytes(facephotos.enrolment_photo("collins"))
    wall = tmp_path / "wall.jpg"
    wall.write_bytes(facephotos.frame(None))
    store(data_dir, "cam-door", 3, facephotos.frame("collins"))

    assert run(capsys, "faces", "add", "alice", str(portrait), *d)[0] == 0
    code, out, _ = run(capsys, "faces", "add", "alice", "--frame", "cam-door:3", *d)
    assert code == 0 and "2 in all" in out
    code, out, _ = run(capsys, "faces", "list", "--json", *d)
    assert [p["source"] for p in json.loads(out)["alice"]] == [str(portrait), "frame cam-door:3"]

    # A photo without a face, or one that is no picture: nothing enrolled, exit 1.
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    for bad in (wall, notes, tmp_path / "missing.jpg"):
        code, _, err = run(capsys, "faces", "add", "bob", str(portrait), str(bad), *d)
        assert code == 1 and "nothing enrolled for bob" in err, err
    assert run(capsys, "faces", "add", "bob", "--frame", "cam-door:99", *d)[0] == 1
    assert set(people.Gallery.load(data_dir, faces.MODEL).people) == {"alice"}
    # Names: `unknown` is what a stranger is called; ids are short and printable.
    for name in ("unknown", "Unknown", " alice", ".x", "a/b", "x" * 33):
        assert run(capsys, "faces", "add", name, str(portrait), *d)[0] == 2, name
    assert run(capsys, "faces", "add", "carol", *d)[0] == 2  # no photo at all

    code, out, _ = run(capsys, "faces", "list", *d)
    assert code == 0 and out.split()[:3] == ["alice", "2", "photo(s)"]
    assert run(capsys, "faces", "remove", "alice", *d)[:2] == (0, "removed alice (2 photo(s))\n")
    assert run(capsys, "faces", "remove", "alice", *d)[0] == 1
    assert "no one enrolled" in run(capsys, "faces", "list", *d)[1]


def test_a_people_file_of_another_model_is_refused_not_misread(data_dir, capsys):
    people.Gallery("some_other_model", {"x": []}).save(data_dir)
    code, _, err = run(capsys, "faces", "list", "--data-dir", str(data_dir))
    assert code == 1 and "enrol everyone again" in err


def test_annotate_draws_the_findings_on_a_copy(tmp_path, data_dir, capsys):
    jpeg = facephotos.frame("collins")
    stored = store(data_dir, "cam-door", 5, jpeg)
    store(data_dir, "cam-door", 6, facephotos.frame(None))
    s = Storage(data_dir)
    try:
        assert findings.record(s.index, findings.Findings(
            "cam-door", 5, stored.crc, motion=12.5, motion_box=[100, 0, 420, 300], moved=True,
            faces=[{"box": [227, 49, 279, 101], "name": "alice", "distance": 0.27}]))
    finally:
        s.close()
    out = tmp_path / "a.jpg"
    code, printed, _ = run(capsys, "annotate", "cam-door:5", "-o", str(out), "--data-dir",
                           str(data_dir))
    assert code == 0 and printed.strip() == str(out)
    drawn = Image.open(out)
    assert drawn.size == (640, 480)
    original = Image.open(io.BytesIO(jpeg)).convert("RGB")
    # The face's box is drawn in green where the face is; elsewhere the picture is kept.
    r, g, b = drawn.convert("RGB").getpixel((227, 75))
    assert g > 150 and r < 120 and b < 150
    assert original.getpixel((600, 460)) == pytest.approx(
        drawn.convert("RGB").getpixel((600, 460)), abs=12)
    thumb = tmp_path / "t.jpg"
    assert run(capsys, "annotate", "cam-door:5", "-o", str(thumb), "--thumbnail", "160",
               "--data-dir", str(data_dir))[0] == 0
    assert Image.open(thumb).size == (160, 120)
    # A frame never analysed: copied unmarked, and said so; no such frame: exit 1.
    code, _, err = run(capsys, "annotate", "cam-door:6", "-o", str(tmp_path / "b.jpg"),
                       "--data-dir", str(data_dir))
    assert code == 0 and "not analysed" in err
    assert run(capsys, "annotate", "cam-door:7", "--data-dir", str(data_dir))[0] == 1


def test_findings_go_with_their_frame_and_an_older_index_still_works(tmp_path, data_dir,
                                                                     capsys):
    # An index from before analysis: no findings tables. Listing reads it as it is.
    old = tmp_path / "old"
    stored = store(old, "cam-door", 1, facephotos.frame(None))
    db = sqlite3.connect(old / "index.sqlite3")
    db.executescript("DROP TRIGGER findings_go_with_their_frame; DROP TABLE faces_seen; "
                     "DROP TABLE analysis;")
    db.close()
    code, out, _ = run(capsys, "frames", "cam-door", "--person", "alice", "--data-dir",
                       str(old))
    assert code == 0 and out == ""
    code, out, _ = run(capsys, "frames", "cam-door", "--data-dir", str(old))
    assert code == 0 and out.split()[0] == "1"
    # The service opening it adds the tables, keeping the frames.
    s = Storage(old)
    try:
        assert findings.record(s.index, findings.Findings("cam-door", 1, stored.crc,
                                                          faces=[{"box": [0, 0, 9, 9],
                                                                  "name": "alice",
                                                                  "distance": 0.3}]))
        assert [f.frame_id for f in findings.frames(s.index, "cam-door", person="alice")] == [1]
        # Gone with the frame (retention, forget): no findings of a frame that is not there.
        s.forget_node("cam-door", delete_frames=True)
        assert not findings.has(s.index, "cam-door", 1, stored.crc)
        assert s.index.db.execute("SELECT COUNT(*) FROM faces_seen").fetchone()[0] == 0
        # Nor recorded for a frame already deleted when its analysis ends.
        assert not findings.record(s.index, findings.Findings("cam-door", 1, stored.crc))
    finally:
        s.close()
