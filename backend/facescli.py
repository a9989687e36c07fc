"""`espcam faces add|list|remove` (enrolment: docs/doorbell.md) and `espcam
annotate NODE:ID` (a stored frame with what analysis found drawn on it). They work on the data
directory, like `espcam frames`, next to a running `espcam serve`, which picks up a change of
the enrolled people with its next frame. Adding needs the faces extra; the rest does not.

Exit codes (docs/backend.md): 0 done, 1 error (no face in a photo, unreadable photo, no such
person or frame, the faces extra missing), 2 bad usage (a name that is not one).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from espcam.backend import faces, people
from espcam.backend.names import check_node_id

if TYPE_CHECKING:
    from espcam.backend.config import Settings
    from espcam.backend.framestorage import FrameStorage
    from espcam.backend.records import StoredFrame

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def frame_ref(text: str) -> tuple[str, int]:
    """NODE:ID, e.g. cam-door:42."""
    node, sep, fid = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        return check_node_id(node), int(fid)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NODE:FRAME_ID (cam-door:42)") from None


def add_arguments(sub: argparse._SubParsersAction,
                  common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("faces", help="people to recognise: add, list, remove",
                       description="People whose faces the backend recognises in frames.")
    actions = p.add_subparsers(dest="faces_command", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="enrol a person from photos or stored frames",
                           description="Enrol NAME from one or more photos (one face each; "
                           "the largest counts) and/or stored frames. Several photos per "
                           "person recognise them better; add more later the same way.")
    a.add_argument("name")
    a.add_argument("photos", nargs="*", type=Path, metavar="PHOTO")
    a.add_argument("--frame", action="append", default=[], type=frame_ref, metavar="NODE:ID",
                   help="a stored frame as a photo (again for more)")
    a.set_defaults(func=cmd_add)
    a = actions.add_parser("list", help="who is enrolled, with how many photos")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_list)
    a = actions.add_parser("remove", help="forget a person and all their photos")
    a.add_argument("name")
    a.set_defaults(func=cmd_remove)
    for leaf in actions.choices.values():
        common(leaf)
    p = sub.add_parser("annotate", help="a stored frame with what analysis found drawn on it",
                       description="Write a copy of a stored frame with its motion region and "
                       "faces (name or unknown, distance) drawn on it.")
    p.add_argument("frame", type=frame_ref, metavar="NODE:ID")
    p.add_argument("-o", "--out", type=Path, help="where to write it (default "
                   "./NODE_ID_annotated.jpg)")
    p.add_argument("--thumbnail", type=int, default=0, metavar="PIXELS",
                   help="at most this wide and high")
    common(p)
    p.set_defaults(func=cmd_annotate)


def _fail(text: str, code: int = EXIT_ERROR) -> int:
    print(f"espcam: {text}", file=sys.stderr)
    return code


def _storage(settings: Settings) -> FrameStorage | None:
    from espcam.backend.openstorage import open_storage
    from espcam.backend.storage import StorageError

    try:
        return open_storage(settings, readonly=True)
    except (StorageError, OSError) as e:
        print(f"espcam: no index in {settings.data_dir} ({getattr(e, 'strerror', e)})",
              file=sys.stderr)
        return None


def _stored(storage: FrameStorage, ref: tuple[str, int]) -> StoredFrame | None:
    try:
        return storage.frame(*ref)
    except sqlite3.Error:
        return None


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    try:
        people.check_name(args.name)
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)
    if not args.photos and not args.frame:
        return _fail("give at least one PHOTO or --frame NODE:ID", EXIT_USAGE)
    why = faces.missing()
    if why:
        return _fail(f"cannot enrol: face recognition is not installed: {why}")
    sources: list[tuple[str, Any]] = [(str(p), p) for p in args.photos]
    if args.frame:
        storage = _storage(settings)
        if storage is None:
            return EXIT_ERROR
        try:
            for ref in args.frame:
                stored = _stored(storage, ref)
                if stored is None:
                    return _fail(f"no stored frame {ref[1]} of node {ref[0]} in "
                                 f"{settings.data_dir}")
                sources.append((f"frame {ref[0]}:{ref[1]}", storage.read(stored)))
        finally:
            storage.close()
    engine = faces.Engine()
    found, problems = [], []
    for label, source in sources:
        try:
            seen = engine.faces(source)
        except (OSError, ValueError) as e:
            problems.append(f"{label}: not a picture that can be read ({e})")
            continue
        if not seen:
            problems.append(f"{label}: no face found (a face should be at least 40 pixels "
                            "wide, looking at the camera)")
            continue
        if len(seen) > 1:
            print(f"{label}: {len(seen)} faces; the largest is enrolled")
        found.append((label, seen[0]))
    if problems:
        for p in problems:
            print(f"espcam: {p}", file=sys.stderr)
        return _fail(f"nothing enrolled for {args.name}")
    try:
        with people.changing(settings.data_dir, faces.MODEL) as gallery:
            for label, face in found:
                gallery.add(args.name, face.embedding, label)
            total = len(gallery.people[args.name])
    except (ValueError, OSError) as e:
        return _fail(str(e))
    print(f"enrolled {args.name}: {len(found)} photo(s) added, {total} in all "
          f"({people.path(settings.data_dir)})")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    try:
        gallery = people.Gallery.load(settings.data_dir, faces.MODEL)
    except ValueError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps({n: [{"source": ph.get("source"), "added_at": ph.get("added_at")}
                              for ph in photos] for n, photos in gallery.people.items()},
                         indent=2))
        return EXIT_OK
    if not gallery.people:
        print(f"no one enrolled ({people.path(settings.data_dir)})")
    for name, photos in sorted(gallery.people.items()):
        sources = ", ".join(str(ph.get("source")) for ph in photos)
        print(f"{name:<32} {len(photos):>3} photo(s)  {sources}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with people.changing(settings.data_dir, faces.MODEL) as gallery:
            removed = gallery.remove(args.name)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    if not removed:
        return _fail(f"no one called {args.name!r} is enrolled")
    print(f"removed {args.name} ({removed} photo(s))")
    return EXIT_OK


def cmd_annotate(args: argparse.Namespace, settings: Settings) -> int:
    from espcam.backend import findings
    from espcam.backend.annotate import annotate

    storage = _storage(settings)
    if storage is None:
        return EXIT_ERROR
    try:
        stored = _stored(storage, args.frame)
        if stored is None:
            return _fail(f"no stored frame {args.frame[1]} of node {args.frame[0]} in "
                         f"{settings.data_dir}")
        jpeg = storage.read(stored)
        found = findings.get(storage.index, stored)
    except (OSError, sqlite3.Error) as e:
        return _fail(f"cannot read frame {args.frame[1]} of node {args.frame[0]}: {e}")
    finally:
        storage.close()
    out = args.out or Path(f"{stored.node}_{stored.frame_id}_annotated.jpg")
    try:
        out.write_bytes(annotate(jpeg, found, args.thumbnail))
    except OSError as e:
        return _fail(f"cannot write {out}: {e.strerror or e}")
    print(out)
    if found is None:
        print("(the frame was not analysed: nothing is marked)", file=sys.stderr)
    return EXIT_OK
