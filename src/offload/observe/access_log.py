"""The access log: one line per request, JSON or Apache's "combined" format.

The event loop only puts a small dict on a queue; a writer thread formats and writes the lines
in batches, so a slow disk or pipe never stalls request handling.

A full or failing disk must not take the proxy down with it, nor grow its memory: the queue
holds at most ``limit`` entries (more are dropped and counted, never blocking the loop); a
write error (ENOSPC, EIO, ...) drops that batch's lines, counts them and is logged at most
once per :data:`ERROR_LOG_INTERVAL`; the thread keeps going and the next batch tries again, so
the log recovers by itself when the disk does (one "writable again" line says so). The counts
are exported as ``offload_access_log_dropped_total`` (:meth:`AccessLog.dropped`).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from offload.observe.log import fields

Entry = dict[str, Any]
DropReason = Literal["queue_full", "write_error", "format_error"]
_STOP = object()
_log = logging.getLogger("offload.access_log")

QUEUE_LIMIT = 16_384
"""Entries waiting for the writer thread at most (a few MiB): past it, new lines are dropped."""
ERROR_LOG_INTERVAL = 60.0
"""Seconds between two log lines about a failing access log."""


def format_json(entry: Entry) -> str:
    return json.dumps(entry, separators=(",", ":"), default=str)


def _quote(value: object) -> str:
    text = "-" if value in (None, "") else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"')


def format_combined(entry: Entry) -> str:
    """``client - - [time] "METHOD path HTTP/x" status bytes "referer" "user-agent"``."""
    stamp = dt.datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
    client = str(entry.get("client", "-")).rpartition(":")[0] or "-"
    request = f'{entry.get("method") or "-"} {entry.get("path") or "-"} HTTP/{entry.get("http") or "-"}'
    size = entry.get("bytes_out") or "-"
    return (f'{client} - - [{stamp:%d/%b/%Y:%H:%M:%S %z}] "{_quote(request)}" '
            f'{entry.get("status", 0)} {size} "{_quote(entry.get("referer"))}" '
            f'"{_quote(entry.get("user_agent"))}"')


def _write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write ``data`` to ``fd``; how many bytes went out, and the error that stopped it."""
    view = memoryview(data)
    done = 0
    while done < len(data):
        try:
            written = os.write(fd, view[done:])
        except OSError as error:
            return done, error
        if written <= 0:
            return done, OSError(errno.EIO, "write wrote nothing")
        done += written
    return done, None


class LineWriter:
    """Writes batches of lines to a file descriptor and lives through write errors.

    Runs in the writer thread only (so its counts need no lock; the loop thread only reads
    them). A write cut short leaves a torn line in the file; the next write starts with a
    newline, so the torn fragment stands on a line of its own and the next line is whole.
    """

    __slots__ = ("_clock", "_failing", "_fd", "_last_report", "_owns_fd", "_torn",
                 "_unreported", "dropped", "name")

    def __init__(self, fd: int, name: str, clock: Callable[[], float] = time.monotonic, *,
                 owns_fd: bool = True) -> None:
        self._fd = fd
        self._owns_fd = owns_fd
        self.name = name
        self._clock = clock
        self.dropped = 0
        """Lines lost to write errors, since the start."""
        self._failing = False
        self._last_report = 0.0
        self._unreported = 0
        self._torn = False

    def write(self, lines: list[str]) -> None:
        """Write ``lines`` (each without its newline), or count those that did not make it."""
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        prefix = 1 if self._torn else 0
        data = ("\n" * prefix + text).encode("utf-8", "backslashreplace")
        done, error = _write_all(self._fd, data)
        if error is None:
            self._torn = False
            if self._failing:
                self._recovered()
            return
        if done:
            self._torn = data[done - 1] != 0x0A
        complete = max(data.count(b"\n", 0, done) - prefix, 0)
        self._failed(len(lines) - complete, error)

    def close(self) -> None:
        """Close the file (not stderr, which is not ours)."""
        if self._owns_fd:
            self._owns_fd = False
            os.close(self._fd)

    def _failed(self, lost: int, error: OSError) -> None:
        self.dropped += lost
        self._unreported += lost
        now = self._clock()
        if self._failing and now - self._last_report < ERROR_LOG_INTERVAL:
            return
        self._failing = True
        self._last_report = now
        _log.error("access log write failed, lines dropped", extra=fields(
            file=self.name, error=error.strerror or str(error),
            errno=errno.errorcode.get(error.errno or 0, str(error.errno)),
            dropped=self._unreported, next_report_in=ERROR_LOG_INTERVAL))
        self._unreported = 0

    def _recovered(self) -> None:
        self._failing = False
        _log.warning("access log writable again", extra=fields(
            file=self.name, dropped=self._unreported, dropped_total=self.dropped))
        self._unreported = 0


class AccessLog:
    """Writes entries to stderr or a file from a background thread (see the module docstring).

    ``limit`` bounds the queue; ``clock`` (seconds) paces the error log lines.
    """

    def __init__(self, target: str, fmt: str = "json", *, limit: int = QUEUE_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._format = format_json if fmt == "json" else format_combined
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._limit = limit
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._writer: LineWriter | None = None
        self._queue_full = 0
        """Entries refused by :meth:`write` (event loop thread only)."""
        self._unformattable = 0
        """Entries the formatter failed on (writer thread only)."""

    def open(self) -> LineWriter:
        """The writer for the target (appending to a file, which is created if needed)."""
        if self.target == "stderr":
            sys.stderr.flush()
            self._writer = LineWriter(sys.stderr.fileno(), self.target, self._clock,
                                      owns_fd=False)
        else:
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o666)  # like open(): the umask decides
            self._writer = LineWriter(fd, self.target, self._clock)
        return self._writer

    def start(self) -> None:
        writer = self.open()
        self._thread = threading.Thread(target=self._run, args=(writer,), daemon=True,
                                        name="offload-access-log")
        self._thread.start()

    def write(self, entry: Entry) -> None:
        """Queue one entry (never blocks; dropped and counted when the queue is full)."""
        if self._queue.qsize() >= self._limit:
            self._queue_full += 1
            return
        self._queue.put(entry)

    def stop(self) -> None:
        """Write out what is queued and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(5)
            self._thread = None

    def sync(self, timeout: float) -> bool:
        """Wait until the writer has handled every entry queued before this call; False if it
        did not within ``timeout`` seconds (or is not running)."""
        if self._thread is None:
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def dropped(self) -> dict[DropReason, int]:
        """Lines lost so far, by reason (for ``offload_access_log_dropped_total``)."""
        writer = self._writer
        return {"queue_full": self._queue_full,
                "write_error": writer.dropped if writer is not None else 0,
                "format_error": self._unformattable}

    def format(self, batch: list[object]) -> list[str]:
        """The lines of the entries in ``batch``; an entry that cannot be formatted is counted
        and skipped, so one odd value never stops the log."""
        lines = []
        for entry in batch:
            if not isinstance(entry, dict):
                continue
            try:
                lines.append(self._format(entry))
            except Exception:  # a bad entry must not kill the writer
                self._unformattable += 1
        return lines

    def _run(self, writer: LineWriter) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(entry is _STOP for entry in batch)
            try:
                writer.write(self.format(batch))
            except Exception:  # a bug, not the disk: say so and keep the thread alive
                _log.exception("access log writer error", extra=fields(file=self.target))
            for entry in batch:
                if isinstance(entry, threading.Event):
                    entry.set()
        writer.close()


def timestamp() -> str:
    """Now, as the access log writes it (UTC, milliseconds)."""
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
