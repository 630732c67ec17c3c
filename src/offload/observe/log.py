"""Structured logging: one JSON object per line (or plain text), never blocking the event loop.

Workers log through a queue drained by a thread, so a slow stderr or log file stalls the thread,
not the event loop. The supervisor logs directly: it forks, and a fork must not happen while
another thread holds a lock. Structured fields go in ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LOGGER = "offload"
AUDIT_LOGGER = "offload.audit"
"""Admin actions and certificate changes: who, what, result (the line carries the time)."""


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """``extra=`` argument carrying structured fields: ``log.info("x", extra=fields(a=1))``."""
    return {"fields": values}


LINES_PER_SECOND = 10.0
"""Log lines per second a :class:`CappedLog` allows for each key, with a burst of twice as many."""


class CappedLog:
    """A cap on log lines per key (a flood must not become a log flood): :meth:`admit` says
    whether to write this line, and how many were left out since the last one written."""

    __slots__ = ("_allowance", "_clock", "_rate")

    def __init__(self, rate: float = LINES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._allowance: dict[object, tuple[float, float, int]] = {}
        """key -> (tokens, when, lines suppressed since the last one written)."""

    def admit(self, key: object) -> int:
        """-1 if this line is over the cap; else how many lines were left out before it."""
        now = self._clock()
        burst = 2 * self._rate
        tokens, when, suppressed = self._allowance.get(key, (burst, now, 0))
        tokens = min(burst, tokens + (now - when) * self._rate)
        if tokens < 1:
            self._allowance[key] = (tokens, now, suppressed + 1)
            return -1
        self._allowance[key] = (tokens - 1, now, 0)
        return suppressed


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "pid": ..., "msg": ..., **fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00Z info [pid] msg key=value ...``, for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"{stamp} {record.levelname.lower():7} [{record.process}] {record.getMessage()}"
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            text += " " + " ".join(f"{key}={value}" for key, value in extra.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class LogSetup:
    """The logging configuration of one process; ``stop()`` flushes the queue thread."""

    def __init__(self) -> None:
        self._listener: logging.handlers.QueueListener | None = None

    def configure(self, level: str = "info", fmt: str = "json", *, threaded: bool = False,
                  stream: TextIO | None = None) -> None:
        """Send offload's logs to ``stream`` (stderr) at ``level``, replacing any handlers."""
        self.stop()
        logger = logging.getLogger(LOGGER)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        output = logging.StreamHandler(stream or sys.stderr)
        output.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        if threaded:
            pipe: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
            self._listener = logging.handlers.QueueListener(pipe, output)
            self._listener.start()
            logger.addHandler(logging.handlers.QueueHandler(pipe))
        else:
            logger.addHandler(output)
        logger.setLevel(level.upper())
        logger.propagate = False
        logging.raiseExceptions = False

    def route_audit(self, destination: str) -> None:
        """Send audit lines to the event log (``stderr``), nowhere (``off``) or a file (JSON
        lines, appended); raises OSError if the file cannot be opened."""
        logger = logging.getLogger(AUDIT_LOGGER)
        handler: logging.Handler | None = None
        if destination not in ("stderr", "off"):
            handler = logging.FileHandler(destination, encoding="utf-8")
            handler.setFormatter(JsonFormatter())
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.disabled = destination == "off"
        logger.propagate = handler is None
        if handler is not None:
            logger.addHandler(handler)

    def stop(self) -> None:
        """Write out what is queued and stop the writer thread."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def after_fork(self, level: str, fmt: str) -> None:
        """In a new worker: drop the parent's handlers and log through a queue thread."""
        self._listener = None
        self.configure(level, fmt, threaded=True)

