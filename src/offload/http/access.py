"""Counting and logging the requests of HTTP mode, for both protocol versions.

Every request that got an answer is counted once (``requests`` by status class, the request
and backend latency histograms) and written once to the frontend's access log, whether the
backend answered, offload answered itself (an exchange that failed, a rule that refused) or the
request never became an exchange (a parse error, a timeout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from offload.observe.access_log import timestamp
from offload.proto.http_types import header_value

if TYPE_CHECKING:
    from offload.http.exchange import Exchange
    from offload.http.site import HttpSite
    from offload.proto.forwarding import ClientFacts
    from offload.tls.stream import TLSServerStream

STATUS_CLASS = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def count_exchange(site: HttpSite, exchange: Exchange) -> None:
    """Count a request that got an answer (its access-log line may come later: a tunnel)."""
    counters = site.counters
    counters.inc("requests", site.name, site.backend.name, STATUS_CLASS[exchange.status // 100])
    counters.observe(site.clock.precise() - exchange.started, "request_seconds", site.name)
    if exchange.t_first_byte and exchange.t_connected:
        counters.observe(exchange.t_first_byte - exchange.t_connected,
                         "backend_response_seconds", site.backend.name)


class RequestLog:
    """The requests of one client connection: counted and written to the access log."""

    __slots__ = ("client", "site", "stream")

    def __init__(self, site: HttpSite, stream: TLSServerStream, client: ClientFacts) -> None:
        self.site = site
        self.stream = stream
        self.client = client

    def exchange(self, exchange: Exchange) -> None:
        """Count ``exchange`` and write its access-log line."""
        count_exchange(self.site, exchange)
        self.write(exchange)

    def write(self, exchange: Exchange) -> None:
        """Only the access-log line (the request was counted already)."""
        log = self.site.access_log
        if log is not None:
            log.write(self.entry(exchange, exchange.status, exchange.reason))

    def local(self, status: int, reason: str) -> None:
        """A request offload answered before it became an exchange (parse errors, timeouts)."""
        site = self.site
        site.counters.inc("requests", site.name, site.backend.name, STATUS_CLASS[status // 100])
        if site.access_log is not None:
            site.access_log.write(self.entry(None, status, reason))

    def entry(self, exchange: Exchange | None, status: int, reason: str) -> dict[str, object]:
        """One access-log line (docs/http-mode.md#access-log)."""
        site, stream, client = self.site, self.stream, self.client
        line: dict[str, object] = {
            "time": timestamp(),
            "client": f"{client.address}:{client.port}",
            "frontend": site.name,
            "sni": stream.server_name,
            "tls_version": stream.tls_version,
            "cipher": stream.cipher,
            "alpn": stream.alpn,
            "resumed": stream.resumed,
            "handshake_ms": round(stream.handshake_seconds * 1000, 2),
            "ja4": stream.ja4,
            "status": status,
        }
        if exchange is not None:
            request = exchange.request
            backend = site.backend
            server = (backend.servers[exchange.server_index].label
                      if exchange.server_index >= 0 else None)
            line.update({
                "method": request.method.decode("latin-1"),
                "path": request.target.decode("latin-1"),
                "host": request.host.decode("latin-1"),
                "http": request.version.decode(),
                "bytes_in": exchange.bytes_in,
                "bytes_out": exchange.bytes_out,
                "backend": backend.name,
                "server": server,
                "connect_ms": _ms(exchange.started, exchange.t_connected),
                "response_ms": _ms(exchange.t_connected, exchange.t_first_byte),
                "total_ms": round((site.clock.precise() - exchange.started) * 1000, 2),
                "request_id": exchange.request_id.decode("latin-1"),
                "user_agent": _text(header_value(request.headers, b"user-agent")),
                "referer": _text(header_value(request.headers, b"referer")),
            })
            if exchange.notes:
                line.update(exchange.notes)
        if reason:
            line["reason"] = reason
        return line


def _ms(start: float, end: float) -> float | None:
    return round((end - start) * 1000, 2) if start and end else None


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
