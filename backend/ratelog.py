"""Log lines about one cause, at most one every few seconds: a flood of junk cannot flood
the log. Counters stay exact; the next line says how many similar ones were left out."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from typing import Any


class RateLimitedLog:
    """One line per key every `every` seconds, so a flood of junk cannot flood the log.
    Remembers at most `max_keys` keys (the least recent go), so junk under ever new node ids
    cannot grow it either."""

    def __init__(self, logger: logging.Logger, every: float = 10.0,
                 max_keys: int = 1024) -> None:
        self.logger, self.every, self.max_keys = logger, every, max_keys
        self._last: OrderedDict[str, float] = OrderedDict()
        self._suppressed: Counter[str] = Counter()
        self._mutex = threading.Lock()  # also used from paho's thread (_on_message)

    def info(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.INFO, key, msg, args)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.WARNING, key, msg, args)

    def error(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.ERROR, key, msg, args)

    def exception(self, key: str, msg: str, *args: Any) -> None:
        self._emit(logging.ERROR, key, msg, args, exc_info=True)

    def _emit(self, level: int, key: str, msg: str, args: tuple[Any, ...],
              exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._mutex:
            if now - self._last.get(key, -math.inf) < self.every:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            self._last.move_to_end(key)
            while len(self._last) > self.max_keys:
                old, _ = self._last.popitem(last=False)
                self._suppressed.pop(old, None)
            more = self._suppressed.pop(key, 0)
        suffix = f" ({more} similar suppressed)" if more else ""
        self.logger.log(level, msg + suffix, *args, exc_info=exc_info)


def id_ranges(ids: list[int], most: int = 20) -> str:
    """'3-7, 9, 12-13' of sorted ids; past `most` runs, how many more."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:most])
    return shown + (f" and {len(runs) - most} more runs" if len(runs) > most else "")


class FrameLog:
    """Lines about frames given up, one per node and cause per flush, naming every frame id
    (as ranges): a flood costs a line per flush, and no frame is left out. Frames of nodes
    that never announced themselves share one line (their ids mean nothing)."""

    def __init__(self, logger: logging.Logger, level: int, what: str) -> None:
        self.logger, self.level, self.what = logger, level, what
        self._ids: dict[tuple[str, str], list[int]] = {}
        self._strangers: Counter[str] = Counter()
        self._mutex = threading.Lock()

    def add(self, node: str, frame_id: int, cause: str, stranger: bool = False) -> None:
        with self._mutex:
            if stranger:
                self._strangers[cause] += 1
            else:
                self._ids.setdefault((node, cause), []).append(frame_id)

    def flush(self) -> None:
        with self._mutex:
            ids, self._ids = self._ids, {}
            strangers, self._strangers = self._strangers, Counter()
        for (node, cause), frames in sorted(ids.items()):
            many = len(frames) > 1
            self.logger.log(self.level, "%s frame%s %s of node %s: %s%s", self.what,
                            "s" if many else "", id_ranges(frames), node, cause,
                            f" ({len(frames)} frames)" if many else "")
        for cause, n in sorted(strangers.items()):
            self.logger.log(self.level, "%s %d frame%s of nodes that have not announced "
                            "themselves: %s", self.what, n, "s" if n > 1 else "", cause)


def printable(text: object, limit: int = 200) -> str:
    """Text from the network, safe for a log line or a terminal: control characters (newlines,
    ANSI escapes) shown escaped, and at most `limit` characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[:limit])
    return shown + ("..." if len(str(text)) > limit else "")
