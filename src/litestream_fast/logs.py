"""Logging: quiet by default, structured (key=value text or JSON lines), rate-limited errors.

Nothing is logged per sync at info level; new generations, snapshots, start and stop are.
A failure repeated every tick is logged once per interval with a count of the repeats.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time


class JSONFormatter(logging.Formatter):
    """JSONFormatter writes one JSON object per line: time, level, logger, msg."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "text", stderr: bool = True) -> None:
    """setup_logging configures the ``litestream_fast`` logger (the CLI calls it)."""
    lvl = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}.get(level.lower(), logging.INFO)  # fmt: skip
    handler = logging.StreamHandler(sys.stderr if stderr else sys.stdout)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s level=%(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    root = logging.getLogger("litestream_fast")
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    root.propagate = False


class RateLimitedLogger:
    """RateLimitedLogger logs the same failure at most once per ``interval`` seconds,
    adding how many times it was repeated in between."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()

    def error(self, msg: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            last = self._last.get(msg)
            if last is not None and now - last < self.interval:
                self._count[msg] = self._count.get(msg, 0) + 1
                return
            repeats = self._count.pop(msg, 0)
            self._last[msg] = now
        if repeats:
            msg += f" (repeated {repeats} times)"
        self.logger.error(msg, *args)
