"""Start-up consistency of the local disk's frames and index: after a crash, files without a
row are indexed, rows without a file dropped, and temporary files of interrupted writes
deleted, so that what the index says is what is on disk."""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

from espcam.backend.index import Index
from espcam.backend.jpeg import NotAJpeg, inspect_jpeg
from espcam.backend.layout import DATE_DIR_RE, FILE_RE, TMP_PREFIX, parse_stamp
from espcam.backend.names import is_node_id
from espcam.backend.records import StoredFrame

log = logging.getLogger("espcam.storage")


def reconcile(root: Path, index: Index) -> dict[str, int]:
    """Make files and index agree after a crash: index files that have no row, drop rows
    whose file is gone, delete temporary files of interrupted writes."""
    stats = {"indexed": 0, "dropped_rows": 0, "removed_tmp": 0, "skipped": 0}
    known = {path for _, path in index.paths()}
    for node_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not is_node_id(node_dir.name):
            continue
        for tmp in node_dir.glob(TMP_PREFIX + "*"):
            tmp.unlink(missing_ok=True)
            stats["removed_tmp"] += 1
        for day_dir in sorted(p for p in node_dir.iterdir() if p.is_dir()):
            if not DATE_DIR_RE.fullmatch(day_dir.name):
                continue
            for f in sorted(day_dir.iterdir()):
                if f.name.startswith(TMP_PREFIX):
                    f.unlink(missing_ok=True)
                    stats["removed_tmp"] += 1
                    continue
                rel = f"{node_dir.name}/{day_dir.name}/{f.name}"
                m = FILE_RE.fullmatch(f.name)
                if rel in known or not m:
                    continue
                stats[_index_orphan(index, node_dir.name, f, rel, m)] += 1
    for node, path in index.paths():
        if not (root / path).is_file():
            index.drop(node, path)
            stats["dropped_rows"] += 1
    index.forget_totals()
    if any(stats.values()):
        log.info("reconcile: %s", ", ".join(f"{k} {v}" for k, v in stats.items()))
    return stats

def _index_orphan(index: Index, node: str, f: Path, rel: str, m: re.Match[str]) -> str:
    """A JPEG on disk without a row (its writer died between file and row): index it."""
    return index_orphan(index, node, f.read_bytes(), rel, m, f.stat().st_mtime, str(f))


def index_orphan(index: Index, node: str, data: bytes, rel: str, m: re.Match[str],
                 received_at: float, where: str) -> str:
    """Kept bytes without a row (their writer died between them and the row), named `rel` in
    the layout (`m`: its file name matched by FILE_RE): index them. Returns the stat it
    counts under."""
    try:
        # No pixel limit: this file passed the one in force when it was stored.
        info = inspect_jpeg(data, max_pixels=None)
    except NotAJpeg as e:
        log.error("reconcile: leaving %s alone, not indexed: %s", where, e)
        return "skipped"
    taken = parse_stamp(m.group(1))
    frame_id = int(m.group(2))
    crc = zlib.crc32(data) & 0xFFFFFFFF
    if index.has(node, frame_id, crc):
        log.warning("reconcile: %s duplicates an indexed frame; left alone", where)
        return "skipped"
    index.add(StoredFrame(node, frame_id, taken, received_at, len(data),
                          info.width, info.height, None, crc, rel), taken,
              as_last=False)
    return "indexed"
