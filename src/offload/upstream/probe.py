"""Active health checks: the network side (one probe, and a task per server repeating it).

:func:`probe` asks one server once — a TCP (or Unix socket) connect, or an HTTP ``GET`` whose
status line is read — and answers ``(ok, reason)``; it never raises for network trouble, so a
checker loop cannot die of a bad backend. :class:`HealthChecker` runs it every
``check.interval`` per server and feeds the results to the sans-IO
:class:`~offload.upstream.health.HealthTracker`. Checks are rare, so this uses asyncio streams
rather than the data path's protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from offload.errors import BackendTlsError
from offload.tls.client_stream import open_tls

if TYPE_CHECKING:
    from offload.config.model import HealthCheckConfig
    from offload.tls.backend_tls import ServerTls
    from offload.upstream.health import HealthTracker
    from offload.upstream.servers import Server

_log = logging.getLogger("offload.upstream")

STATUS_LINE_LIMIT = 8 * 1024
"""Longest status line accepted (RFC 9112 §4 status-line, read up to its CRLF)."""
CLOSE_WAIT = 1.0
"""Longest wait for a probe's connection to finish closing."""
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t \x21-\x7e\x80-\xff]*)?\r\n")


def _host_header(server: Server, check: HealthCheckConfig) -> str:
    if check.host:
        return check.host
    if server.unix_path:
        return "localhost"
    host = f"[{server.host}]" if ":" in server.host else server.host
    return host if server.port == 80 else f"{host}:{server.port}"


def health_request(server: Server, check: HealthCheckConfig) -> bytes:
    """The HTTP/1.1 request an ``http`` check sends."""
    return (f"GET {check.path} HTTP/1.1\r\n"
            f"Host: {_host_header(server, check)}\r\n"
            "User-Agent: offload-health-check\r\n"
            "Connection: close\r\n\r\n").encode("ascii")


def judge_status_line(line: bytes, expect: tuple[int, int]) -> tuple[bool, str]:
    """``(ok, reason)`` for a status line (with its CRLF) and the inclusive range expected."""
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        return False, "bad response"
    status = int(match.group(1))
    return expect[0] <= status <= expect[1], f"status {status}"


def _connect_reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connect refused"
    return f"connect failed: {(error.strerror or type(error).__name__).lower()}"


async def _connect(server: Server, check: HealthCheckConfig, tls: ServerTls | None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if tls is not None:
        return await _connect_tls(server, check, tls)
    if server.unix_path:
        return await asyncio.open_unix_connection(server.unix_path, limit=STATUS_LINE_LIMIT)
    return await asyncio.open_connection(server.host, server.port, limit=STATUS_LINE_LIMIT)


def check_sni(check: HealthCheckConfig, tls: ServerTls) -> str | None:
    """The SNI a check sends: as a request to the check's Host would (``auto``: that Host,
    else the server's name as configured), or the backend's fixed SNI, or none."""
    host = check.host or tls.fallback_name
    return tls.sni(host.encode("ascii", "replace"))


async def _connect_tls(server: Server, check: HealthCheckConfig, tls: ServerTls
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection with the data path's settings: the same verification, so a check
    fails when the certificate does (``tls: unknown_ca``, ``tls: expired`` ...)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STATUS_LINE_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    stream = await open_tls(protocol, tls, tls.handshake(check_sni(check, tls)),
                            (server.host, server.port))
    return reader, asyncio.StreamWriter(stream, protocol, reader, loop)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT):
            await writer.wait_closed()


async def probe(server: Server, check: HealthCheckConfig, *,
                timeout: float | None = None,  # noqa: ASYNC109 - the one bound for the whole check
                tls: ServerTls | None = None) -> tuple[bool, str]:
    """Check ``server`` once; ``(ok, reason)``.

    The whole check (connect, request, status line) must finish within ``timeout``, by default
    ``check.timeout``. Reasons: "connected", "status 200", "status 503", "timeout",
    "connect refused", "connect failed: ...", "connection closed", "connection reset",
    "bad response", and over TLS "tls: REASON" (``unknown_ca``, ``expired``,
    ``name_mismatch`` ...: :func:`offload.tls.backend_tls.classify_failure`).
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout if timeout is None else timeout):
            try:
                reader, writer = await _connect(server, check, tls)
            except BackendTlsError as error:
                return False, f"tls: {error.reason}"
            except OSError as error:
                return False, _connect_reason(error)
            if check.kind == "tcp":
                return True, "connected"
            writer.write(health_request(server, check))
            line = await reader.readuntil(b"\r\n")
        return judge_status_line(line, check.expect)
    except TimeoutError:
        return False, "timeout"
    except asyncio.IncompleteReadError as error:
        return False, "bad response" if error.partial else "connection closed"
    except asyncio.LimitOverrunError:
        return False, "bad response"
    except ConnectionResetError:
        return False, "connection reset"
    except OSError as error:
        return False, (error.strerror or type(error).__name__).lower()
    finally:
        if writer is not None:
            await _close(writer)


OnChange = Callable[[int, str], None]
"""``on_change(server_index, transition)``: "down", "up" or "returned"."""


class HealthChecker:
    """One task per server probing it every ``check.interval`` (the first probe at once).

    Results go to the server's tracker; transitions to ``on_change``. ``clock`` gives the
    ``now`` for the trackers and must be the balancer's clock (by default ``loop.time``).
    The last result per server is in :attr:`results` (for logs and the status page).
    """

    def __init__(self, servers: Sequence[Server], check: HealthCheckConfig,
                 trackers: Sequence[HealthTracker], on_change: OnChange, *,
                 clock: Callable[[], float] | None = None,
                 tls: Sequence[ServerTls | None] | None = None) -> None:
        if len(servers) != len(trackers):
            raise ValueError("one tracker per server is needed")
        self._servers = tuple(servers)
        self._trackers = tuple(trackers)
        self._check = check
        self._on_change = on_change
        self._clock = clock
        self._tls = tuple(tls) if tls is not None else (None,) * len(self._servers)
        self._tasks: list[asyncio.Task[None]] = []
        self.results: dict[int, tuple[bool, str]] = {}

    def start(self) -> None:
        """Start the checks (from within the running event loop)."""
        if self._tasks:
            raise RuntimeError("health checks already started")
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        self._tasks = [
            loop.create_task(self._run(server, tracker, clock, tls),
                             name=f"health-check {server.label}")
            for server, tracker, tls in zip(self._servers, self._trackers, self._tls,
                                            strict=True)
        ]

    async def stop(self) -> None:
        """Cancel the checks and wait until they have finished."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, server: Server, tracker: HealthTracker,
                   clock: Callable[[], float], tls: ServerTls | None) -> None:
        loop = asyncio.get_running_loop()
        index = tracker.server.index
        interval = self._check.interval
        due = loop.time()
        while True:
            ok, reason = await probe(server, self._check, tls=tls)
            self.results[index] = (ok, reason)
            now = clock()
            for transition in (tracker.record_check(ok, now), tracker.refresh(now)):
                if transition is not None:
                    self._notify(index, transition, reason)
            # Keep to the schedule, but never try to catch up on missed probes.
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())

    def _notify(self, index: int, transition: str, reason: str) -> None:
        try:
            self._on_change(index, transition)
        except Exception:
            _log.exception("health check callback failed for server %d (%s: %s)",
                           index, transition, reason)


__all__ = ["HealthChecker", "OnChange", "health_request", "judge_status_line", "probe"]
