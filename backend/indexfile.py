"""The index's SQLite file (`index.sqlite3` in the data directory): opening it for the service
(WAL, its pragmas, the schema, migrations) or read-only for the commands, and how its errors
read to a user. index.py holds what is done with it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from espcam.backend.indexschema import SCHEMA

log = logging.getLogger("espcam.index")

INDEX_NAME = "index.sqlite3"


def describe_db_error(e: sqlite3.Error) -> str:
    text = str(e)
    if "readonly" in text or "read-only" in text:
        return f"file system is read-only or not writable ({text})"
    if "full" in text:
        return f"disk full ({text})"
    return f"index error ({text})"


def why_not_writable(root: Path) -> str | None:
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return "file system is read-only"
    except OSError:
        return None
    if not os.access(root, os.W_OK):
        return "no permission to write there"
    return None


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path))}?{mode}"


def open_for_writing(root: Path) -> sqlite3.Connection:
    root.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / INDEX_NAME, check_same_thread=False)
    try:
        db.row_factory = sqlite3.Row
        # WAL: a commit costs one fsync of the log instead of several, and `espcam nodes`
        # / `frames` can read while the service writes. synchronous=NORMAL may lose the
        # last rows on power loss, never the files: each JPEG is fsynced before its row is
        # written and reconcile() indexes files without rows at start. (Keep the data
        # directory on a local file system: WAL does not work over NFS.)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        _migrate(db)
        db.executescript(SCHEMA)
        db.commit()
    except BaseException:
        db.close()
        raise
    return db


def open_readonly(root: Path) -> sqlite3.Connection:
    """For `espcam nodes` and `frames`: no pragma, no schema, nothing written, so they work
    on a read-only data directory and never change what the service writes."""
    path = root / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no index (has `espcam serve` run here?)",
                                str(path))
    db = sqlite3.connect(_uri(path, "mode=ro"), uri=True, check_same_thread=False)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        # A WAL index closed cleanly has no -shm file, and a read-only directory cannot
        # get one; nothing can write there either, so reading it as immutable is safe.
        db.close()
        db = sqlite3.connect(_uri(path, "immutable=1"), uri=True, check_same_thread=False)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    db.row_factory = sqlite3.Row
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Indexes written before frames were keyed by CRC too get the new key, rows kept."""
    cols = {r["name"]: r["pk"] for r in db.execute("PRAGMA table_info(frames)")}
    if not cols or cols.get("crc"):
        return
    log.info("index: re-keying the frames table by (node, frame_id, crc)")
    with db:
        db.execute("ALTER TABLE frames RENAME TO frames_old")
        db.execute("DROP INDEX IF EXISTS frames_by_time")
        db.executescript(SCHEMA)
        db.execute("INSERT INTO frames SELECT node, frame_id, captured_at, received_at, "
                   "taken_at, bytes, width, height, trigger, crc, path FROM frames_old")
        db.execute("DROP TABLE frames_old")
