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
