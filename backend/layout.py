"""Where frames go on the local disk, and what their names say (docs/backend.md, "Storage"):

    <data>/<node>/latest.jpg
    <data>/<node>/<YYYY-MM-DD>/<timestamp>_<frame id>.jpg
    <data>/<node>/<YYYY-MM-DD>/<timestamp>_<frame id>_<crc32 hex>.jpg   when the first is taken
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

FILE_RE = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)_(\d{1,10})(?:_[0-9a-f]{8})?\.jpg")
DATE_DIR_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
TMP_PREFIX = ".tmp-"
# A temporary file ends in .part, not .jpg: nothing that looks for JPEGs picks up a partial one.
TMP_SUFFIX = ".part"


def stamp(t: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y%m%dT%H%M%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_stamp(s: str) -> float:
    return datetime.strptime(s, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC).timestamp()
