"""The access log: one line per request, JSON or Apache's "combined" format.

The event loop only puts a small dict on a queue; a writer thread formats and writes the lines
in batches, so a slow disk or pipe never stalls request handling.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import sys
import threading
from typing import Any, TextIO

Entry = dict[str, Any]
_STOP = object()


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


class AccessLog:
    """Writes entries to stderr or a file from a background thread."""

    def __init__(self, target: str, fmt: str = "json") -> None:
        self.target = target
        self._format = format_json if fmt == "json" else format_combined
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        stream: TextIO = sys.stderr if self.target == "stderr" else open(  # noqa: SIM115
            self.target, "a", encoding="utf-8")
        self._thread = threading.Thread(target=self._write, args=(stream,), daemon=True,
                                        name="offload-access-log")
        self._thread.start()

    def write(self, entry: Entry) -> None:
        """Queue one entry (never blocks)."""
        self._queue.put(entry)

    def stop(self) -> None:
        """Write out what is queued and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(5)
            self._thread = None

    def _write(self, stream: TextIO) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = [self._format(entry) for entry in batch if isinstance(entry, dict)]
            if lines:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            if any(entry is _STOP for entry in batch):
                if stream is not sys.stderr:
                    stream.close()
                return


def timestamp() -> str:
    """Now, as the access log writes it (UTC, milliseconds)."""
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
