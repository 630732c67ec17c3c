"""The client side of HTTP mode for HTTP/1.1: one TLS connection carrying HTTP/1.1 requests.

It is the :class:`~offload.http.downstream.Downstream` of its exchanges, one at a time: it
decides how each response is framed for this client (Content-Length, chunked, or until the
close for an HTTP/1.0 client), writes 100 Continue, 408, 429 and offload's own answers, keeps
the connection alive or closes it, and hands a WebSocket over to a byte tunnel.

Theory of operation. Bytes from the TLS stream go through the request parser; its events wait
in an inbox and are handed out in order: a request head starts an exchange, body events go to
the exchange whose request they belong to. A pipelined request waits in the inbox (and reading
pauses) until the exchange before it has finished, so answers leave in request order.

    state             what the deadline means
    waiting           keepalive_timeout (nothing received: close quietly), or request_timeout
                      for the whole head once its first byte arrived (408: slowloris)
    receiving body    the body's pace (security/body_pace.py): min_body_rate on average, no
                      stall of body_timeout (408, or close if answered already)
    otherwise         none (the exchange has its own server timeout)

Reading from the client pauses for three reasons, each released on its own: the exchange is
opening a backend connection, the backend cannot take more bytes, or pipelined requests wait;
the body's clock stops meanwhile. Bytes are parsed only as far as they can be served: heads in
small pieces, a body whole; once a pipelined request waits, the rest of the read stays raw
bytes until its turn (a client that pipelines thousands of requests and never reads the
answers holds one read's worth of bytes, not thousands of parsed requests). While the client
does not read our answers (writes paused), no further pipelined request is started, and the
backend's silence is not held against it.

A request over the frontend's request rate limit is answered 429 with Retry-After and never
reaches the backend; the connection stays open when the request had no body (as nginx's
limit_req does), so the client can slow down without paying for a new handshake.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from offload.errors import ProtocolError
from offload.http import access
from offload.http.exchange import ClientContext, Exchange
from offload.http.site import HttpSite
from offload.http.upstream import BackendConnection, HttpBackend
from offload.l4.relay import TcpRelay, proxy_header
from offload.observe.log import fields
from offload.proto.http1 import RequestParser
from offload.proto.http1_write import (
    CONTINUE,
    chunk,
    client_response_head,
    error_response,
    last_chunk,
)
from offload.proto.http_types import (
    Data,
    EndOfMessage,
    Event,
    Headers,
    Request,
    Response,
    header_value,
)
from offload.security.body_pace import BodyPace
from offload.security.limits import LimitDecision
from offload.timers import Deadline
from offload.tls.client_certs import host_matches_sni
from offload.tls.stream import TLSServerStream

_log = logging.getLogger("offload.http")

H2_PREFACE_START = b"PRI * HTTP/2.0"
H2_REFUSAL = (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, empty
              b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"  # GOAWAY, 8 bytes, stream 0
              b"\x00\x00\x00\x00\x00\x00\x00\x0d")  # last stream 0, HTTP_1_1_REQUIRED
"""What a client that speaks HTTP/2 without having negotiated it is told."""

HEAD_SLICE = 4096
"""Bytes fed to the parser at a time outside a body when no end of a head is in sight; a head
whose end is in sight is fed up to that end, so a pipelining client can make us parse one head
beyond the request being served, not a whole read."""
CHUNKED_SLICE = 16 * 1024
"""Bytes fed at a time inside a chunked body (whose end we cannot see coming)."""


class Backlog:
    """Bytes received but not parsed yet, handed out piece by piece without copying the rest."""

    __slots__ = ("_data", "_offset")

    def __init__(self) -> None:
        self._data = b""
        self._offset = 0

    def __bool__(self) -> bool:
        return self._offset < len(self._data)

    def add(self, data: bytes) -> None:
        if self._offset < len(self._data):
            self._data = self._data[self._offset:] + data
        else:
            self._data = data
        self._offset = 0

    def head_end(self, limit: int) -> int:
        """How many bytes up to the end of the first head, if it ends within ``limit``; -1
        otherwise."""
        end = self._data.find(b"\r\n\r\n", self._offset, self._offset + limit)
        return end + 4 - self._offset if end >= 0 else -1

    def take(self, size: int) -> bytes:
        data, start = self._data, self._offset
        if start == 0 and size >= len(data):
            self._data = b""
            return data
        self._offset = start + size
        if self._offset >= len(data):
            self._data, self._offset = b"", 0
        return data[start:start + size]

    def take_all(self) -> bytes:
        return self.take(len(self._data))

    def clear(self) -> None:
        self._data, self._offset = b"", 0


class Http1Connection(asyncio.Protocol):
    """The application protocol of one client TLS stream speaking HTTP/1.1 (or 1.0)."""

    def __init__(self, stream: TLSServerStream, site: HttpSite) -> None:
        self.stream = stream
        self.site = site
        self.backend: HttpBackend = site.backend
        self.response_policy = site.response_policy
        self.parser = RequestParser(site.limits)
        self.exchange: Exchange | None = None
        self._receiving: Exchange | None = None
        self._inbox: deque[Event] = deque()
        self._unparsed = Backlog()
        """Bytes received but not parsed yet: they follow a pipelined request that waits."""
        self._paused: set[str] = set()
        self._closing = False
        self._writing_paused = False
        self._pumping = False
        self._pace = BodyPace(site.frontend.min_body_rate, site.frontend.body_timeout)
        self._head_started = False
        self._client_eof = False
        self._deferred: ProtocolError | None = None
        """A parse error in a pipelined request, answered once the requests before it are."""
        self._requests = 0
        self._out: list[bytes] = []
        """The current response's bytes, held until the exchange flushes (one write)."""
        self._chunked = False
        self._keep_alive = False
        """How the current response is framed, and whether the connection outlives it."""
        self.clock = clock = site.clock
        self._deadline = Deadline(clock, self._on_deadline)
        self.server_deadline = Deadline(clock, self._on_server_deadline)
        """The backend side's timer, shared by this connection's exchanges (one at a time)."""
        self.client_facts = facts = site.client_facts(stream)
        self.trusted = site.forward_policy.trusts(facts.address)
        self.client = ClientContext(facts, self.trusted)
        self.requests_log = access.RequestLog(site, stream, facts)

    @property
    def draining(self) -> bool:
        return self.site.draining

    # ------------------------------------------------------------ stream events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline.set(self.clock.time() + self.site.frontend.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self.exchange is None and self._receiving is None and not self._head_started:
            if not self._requests and data.startswith(H2_PREFACE_START):
                self._refuse_prior_knowledge()
                return
            self._head_started = True
            self._deadline.set(self.clock.time() + self.site.frontend.request_timeout)
        elif self._receiving is not None:
            when = self._pace.received(len(data), self.clock.time())
            if not self._pace.paused:
                self._deadline.set(when)
        self._unparsed.add(data)
        self._pump()

    def _parse_some(self) -> None:
        """Feed the parser the next piece of :attr:`_unparsed` (all of it after an error or an
        upgrade: it is answered, or waits for the backend's 101)."""
        parser = self.parser
        unparsed = self._unparsed
        left = parser.body_left
        if left > 0:
            size = left
        elif left < 0:
            size = CHUNKED_SLICE
        else:
            size = unparsed.head_end(HEAD_SLICE)
            if size < 0:
                size = HEAD_SLICE
        try:
            events = parser.feed(unparsed.take(size))
        except ProtocolError as error:
            unparsed.clear()
            self._parse_error(error)
            return
        if events:
            self._inbox.extend(events)
        if parser.upgrade_tail is not None:
            if unparsed:  # everything after the head waits for the backend's 101
                parser.feed(unparsed.take_all())
            self.pause_client("upgrade")  # the backend decides whether this becomes a tunnel

    def _refuse_prior_knowledge(self) -> None:
        """An HTTP/2 connection preface without ALPN ``h2`` (prior knowledge, RFC 9113 §3.3):
        answered in HTTP/2, which the client understands — an empty SETTINGS and GOAWAY
        HTTP_1_1_REQUIRED — then closed. HTTP/2 is only spoken when ALPN chose it."""
        self.site.counters.inc("http_rejected", self.site.name, "h2_prior_knowledge")
        self.stream.write(H2_REFUSAL)
        self.requests_log.local(505, "h2_prior_knowledge")
        self._close()

    def eof_received(self) -> bool:
        self._client_eof = True
        if (self.exchange is None and self._receiving is None and not self._inbox
                and not self._unparsed):
            self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._deadline.cancel()
        self.server_deadline.cancel()
        for exchange in (self.exchange, self._receiving):
            if exchange is not None and not exchange.finished:
                if isinstance(exc, TimeoutError):  # the stream's send_timeout
                    exchange.reason = str(exc)
                exchange.client_gone()
                self._log(exchange)
        self.exchange = self._receiving = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.exchange is not None:
            self.exchange.client_paused()  # the backend waits for the client, not vice versa

    def resume_writing(self) -> None:
        self._writing_paused = False
        exchange = self.exchange
        if exchange is not None:
            exchange.client_resumed()
        if ((self._inbox or self._unparsed) and exchange is None and self._receiving is None
                and not self._closing):
            self._pump()

    # ------------------------------------------------------------ requests

    def _pump(self) -> None:
        """Hand out parsed events, parsing more while nothing waits in the inbox."""
        if self._pumping:
            return  # called back from inside the loop below, which goes on by itself
        self._pumping = True
        try:
            while True:
                self._pump_inbox()
                if (self._inbox or not self._unparsed or self._closing
                        or self.parser.upgrade_tail is not None):
                    break
                self._parse_some()  # an error empties _unparsed: the next turn pumps what's left
        finally:
            self._pumping = False
        if self._inbox or self._unparsed:
            self.pause_client("pipeline")
        else:
            self.resume_client("pipeline")

    def _pump_inbox(self) -> None:
        inbox = self._inbox
        while inbox and not self._closing:
            event = inbox[0]
            if isinstance(event, Request):
                if self.exchange is not None or self._receiving is not None \
                        or self._writing_paused:
                    break  # pipelined: wait for the current exchange, or for the client to read
                inbox.popleft()
                self._start(event)
            elif isinstance(event, Data):
                inbox.popleft()
                receiving = self._receiving
                if receiving is not None and not receiving.finished:
                    receiving.request_data(event.data)
            elif isinstance(event, EndOfMessage):
                inbox.popleft()
                receiving, self._receiving = self._receiving, None
                if receiving is not None and not receiving.finished:
                    receiving.request_end(event.trailers)
                self._settle()
            else:
                inbox.popleft()

    def _parse_error(self, error: ProtocolError) -> None:
        """Answer what was parsed before the error first; the error ends the connection."""
        complete = _complete_requests(error.before)
        if complete:
            self._inbox.extend(complete)
            self._pump()
        if self._closing:
            return
        if self._receiving is None and (self.exchange is not None or self._inbox):
            # the error is in a request pipelined behind one still being answered
            self._deferred = error
            self.pause_client("error")
        else:
            self._reject(error)

    def _start(self, request: Request) -> None:
        if self.site.client_auth and not host_matches_sni(request.host, self.stream.server_name):
            self._reject(ProtocolError("the Host is not the name this connection was verified "
                                       "for", 421, "host_not_sni"))
            return
        self._requests += 1
        self._head_started = False
        exchange = Exchange(self, self.site, self.client, request, self._request_id(request),
                            deadline=self.server_deadline)
        limits = self.site.rate_limits
        if limits is not None and self.stream.client_key:
            decision = limits.on_request(self.stream.client_key, self.clock.precise(),
                                         self.stream.fingerprints)
            if decision.limit is not None:
                self._rate_limited(exchange, decision)
                return
        self.exchange = self._receiving = exchange
        if request.has_body:
            now = self.clock.time()
            self._deadline.set(self._pace.start(now))
            if self._paused:
                self._pace.pause(now)
                self._deadline.clear()
        else:
            self._deadline.clear()
        exchange.start()

    def _rate_limited(self, exchange: Exchange, decision: LimitDecision) -> None:
        """429 with Retry-After (RFC 6585 §4); a body-less request keeps the connection."""
        assert decision.limit is not None
        request = exchange.request
        self.site.security.decision(
            "rate_limited", decision.limit, self.site.name, self.client_facts.address,
            retry_after=decision.retry_after,
            offence="limit_hit" if decision.per_client else None)
        keep_alive = (request.keep_alive and request.version == b"1.1" and not request.has_body
                      and not self.draining and not self._client_eof)
        self.stream.write(error_response(
            429, keep_alive=keep_alive, policy=self.response_policy,
            extra_headers=[(b"Retry-After", b"%d" % decision.retry_after)]))
        self._log_local(429, decision.limit, exchange)
        if not keep_alive:
            self._close()
        # else the request's EndOfMessage, next in the inbox, settles the connection

    def _request_id(self, request: Request) -> bytes:
        if self.trusted:
            incoming = header_value(request.headers, b"x-request-id")
            if incoming:
                return incoming
        return self.site.request_ids.next()

    def _reject(self, error: ProtocolError) -> None:
        """The client broke HTTP: answer its status (unless a response is under way), close."""
        self.site.counters.inc("http_rejected", self.site.name, error.reason)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("request refused", extra=fields(
                frontend=self.site.name, client=f"{self.client_facts.address}",
                status=error.status, reason=error.reason, detail=str(error)))
        exchange = self.exchange or self._receiving
        if exchange is not None and exchange.response_started:
            exchange.client_gone()
            exchange.reason = error.reason
            self._log(exchange)
            self.exchange = self._receiving = None
            self._close(notify=False)
            return
        if exchange is not None:
            exchange.client_gone()
            self.exchange = self._receiving = None
        self.stream.write(error_response(error.status, policy=self.response_policy))
        self._log_local(error.status, error.reason)
        self._close()

    # ------------------------------------------------------------ Downstream: the exchange's calls

    def send_continue(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.request.version == b"1.1":
            self.stream.write(CONTINUE)

    def send_interim(self, response: Response) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.request.version == b"1.1":  # no 1xx to 1.0
            self._out.append(client_response_head(
                response, framing="none", keep_alive=True, client_version=b"1.1",
                policy=self.response_policy))

    def send_head(self, response: Response) -> None:
        exchange = self.exchange
        assert exchange is not None
        request = exchange.request
        if not response.has_body:
            framing = "none"
        elif response.content_length is not None:
            framing = "length"
        elif request.version == b"1.1":
            framing = "chunked"
        else:
            framing = "close"  # an HTTP/1.0 client: the close delimits the body
        self._chunked = framing == "chunked"
        # keep-alive only once the whole request has been read: a response that ends before
        # its request does ends the client connection too
        self._keep_alive = (request.keep_alive and framing != "close" and exchange.request_done
                            and not self.draining)
        self._out.append(client_response_head(
            response, framing=framing, keep_alive=self._keep_alive,
            client_version=request.version, policy=self.response_policy))

    def send_data(self, data: bytes) -> None:
        self._out.append(chunk(data) if self._chunked else data)

    def send_end(self, trailers: Headers) -> None:
        if self._chunked:
            self._out.append(last_chunk(trailers))

    def flush(self) -> None:
        out = self._out
        if out:
            self.stream.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def pause_request(self, why: str) -> None:
        self.pause_client(why)

    def resume_request(self, why: str) -> None:
        self.resume_client(why)

    def proxy_header(self) -> bytes:
        return proxy_header(self.stream, self.backend.config.proxy_protocol)

    def answer(self, status: int, *, retry_after: bool,
               extra: tuple[tuple[bytes, bytes], ...] = (), detail: str = "") -> None:
        """offload answers the current request itself (no server, timeout, bad gateway)."""
        exchange = self.exchange
        assert exchange is not None
        request = exchange.request
        # error_response cannot announce keep-alive to an HTTP/1.0 client: close those
        self._keep_alive = (request.keep_alive and request.version == b"1.1"
                            and self._receiving is not exchange and not self.draining
                            and not self._client_eof)
        self._out.clear()
        if retry_after:
            extra = (*extra, (b"Retry-After", b"1"))
        self.stream.write(error_response(
            status, keep_alive=self._keep_alive, extra_headers=extra, detail=detail,
            policy=self.response_policy))
        self.exchange_done()

    def abort(self) -> None:
        """The response was cut after it started: close without close_notify."""
        exchange = self.exchange
        assert exchange is not None
        self.flush()
        self._log(exchange)
        if self._receiving is exchange:
            self._receiving = None
        self.exchange = None
        self._close(notify=False)

    def exchange_done(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.flush()
        self._log(exchange)
        self.exchange = None
        if exchange.request.websocket and self.parser.upgrade_tail is not None:
            # the backend refused the upgrade: what followed the request is HTTP again
            try:
                self._inbox.extend(self.parser.resume())
            except ProtocolError as error:
                self._deferred = error
            self.resume_client("upgrade")
        if not self._keep_alive or self.draining or self._client_eof:
            if self._receiving is exchange:
                self._receiving = None
            self._close()
            return
        self._settle()

    def pause_client(self, reason: str) -> None:
        if not self._paused:
            self.stream.pause_reading()
            if self._receiving is not None:  # the body's clock stops while we do not read
                self._pace.pause(self.clock.time())
                self._deadline.clear()
        self._paused.add(reason)

    def resume_client(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self._closing:
                self.stream.resume_reading()
                if self._receiving is not None and self._pace.paused:
                    self._deadline.set(self._pace.resume(self.clock.time()))

    def _settle(self) -> None:
        """Between exchanges: wait for the next request or start the one already waiting."""
        if self.exchange is not None or self._receiving is not None or self._closing:
            return
        if self._deferred is not None and not self._inbox:
            error, self._deferred = self._deferred, None
            self._reject(error)
            return
        if self._client_eof and not self._inbox and not self._unparsed:
            self._close()
            return
        if self._unparsed:  # the next request has begun: its head gets request_timeout
            self._head_started = True
            self._deadline.set(self.clock.time() + self.site.frontend.request_timeout)
        else:
            self._head_started = False
            self._deadline.set(self.clock.time() + self.site.frontend.keepalive_timeout)
        if self._inbox or self._unparsed:
            self._pump()

    def start_tunnel(self, upstream: BackendConnection, backend_tail: bytes) -> None:
        """101 Switching Protocols: relay bytes both ways from now on. The request is counted
        now; its access-log line is written when the tunnel ends, with the tunnel's bytes and
        duration, and only then is the server's connection slot given back."""
        exchange = self.exchange
        assert exchange is not None
        self.flush()  # the 101
        access.count_exchange(self.site, exchange)
        self.exchange = self._receiving = None
        self._deadline.cancel()
        transport = upstream.transport
        assert transport is not None
        upstream.user = None
        upstream.private = True
        upstream.flush()  # the relay writes directly from here on
        relay = TcpRelay(self.stream, None, self.site.frontend.idle_timeout, self.site.counters,
                         backend_name=self.backend.name)
        self.stream.set_app(relay)
        client_tail = self.parser.upgrade_tail or b""
        index = upstream.index
        backend = self.backend

        def tunnel_ended(relay: TcpRelay) -> None:
            backend.released(index)
            exchange.bytes_in, exchange.bytes_out = relay.bytes_in, relay.bytes_out
            exchange.reason = relay.reason
            self.requests_log.write(exchange)

        relay.adopt(transport, self.backend.servers[index], to_backend=client_tail,
                    to_client=backend_tail, on_end=tunnel_ended)
        self._paused.clear()
        self.stream.resume_reading()

    # ------------------------------------------------------------ endings

    def _on_server_deadline(self) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.server_timeout()

    def _on_deadline(self) -> None:
        receiving = self._receiving
        if receiving is not None:
            cause = self._pace.cause(self.clock.time())
            self.site.counters.inc("timeout", "body" if cause == "body_timeout" else "body_rate")
            self._too_slow(cause)
            receiving.reason = cause
            if receiving.response_started:
                self._reject(ProtocolError("request body too slow", 408, cause))
            else:
                receiving.client_gone()
                self.exchange = self._receiving = None
                self.stream.write(error_response(408, policy=self.response_policy))
                self._log_local(408, cause, receiving)
                self._close()
            return
        if self.exchange is not None:
            return
        if self._head_started:
            self.site.counters.inc("timeout", "request_header")
            self._too_slow("request_timeout")
            self.stream.write(error_response(408, policy=self.response_policy))
            self._log_local(408, "request_timeout")
        else:
            self.site.counters.inc("timeout", "keepalive")
        self._close()

    def _too_slow(self, cause: str) -> None:
        self.site.security.decision("slow_client", cause, self.site.name,
                                    self.client_facts.address)

    def drain(self) -> None:
        """The worker is stopping: close now if idle between requests, else after the current
        response. A connection that has not sent its first request yet is not idle: its client
        opened it to send one, which may be on the way, so it keeps ``request_timeout`` to send
        it and is served (with ``Connection: close``) like a busy one."""
        if self.exchange is None and self._receiving is None and not self._inbox \
                and not self._unparsed and self._requests > 0:
            self._close()

    def _close(self, *, notify: bool = True) -> None:
        if self._closing:
            return
        self._closing = True
        self._deadline.cancel()
        self.server_deadline.cancel()
        self.stream.close(notify=notify)

    # ------------------------------------------------------------ access log

    def _log_local(self, status: int, reason: str, exchange: Exchange | None = None) -> None:
        """A request offload answered without an exchange (parse errors, timeouts)."""
        if exchange is not None:
            exchange.status, exchange.reason = status, reason
            self._log(exchange)
        else:
            self.requests_log.local(status, reason)

    def _log(self, exchange: Exchange) -> None:
        self.requests_log.exchange(exchange)


def _complete_requests(events: list[object]) -> list[Event]:
    """The events of the requests that ended (EndOfMessage) before a parse error."""
    end = max((i for i, event in enumerate(events) if isinstance(event, EndOfMessage)),
              default=-1)
    return [event for event in events[: end + 1]
            if isinstance(event, Request | Data | EndOfMessage)]
