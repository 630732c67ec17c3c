"""The client side of HTTP mode for HTTP/2 (ALPN ``h2``): one TLS connection, many streams.

Theory of operation. Bytes from the TLS stream go first through the :class:`FrameGuard`
(offload's own flood budgets, on raw frame headers), then into the engine (libnghttp2 or h2,
:mod:`offload.proto.h2_engine`), whose events drive the streams. Each request stream is an
:class:`H2Stream`: the :class:`~offload.http.downstream.Downstream` of one protocol-neutral
:class:`~offload.http.exchange.Exchange`, exactly as the HTTP/1.1 connection is for its
requests. What the engine has to send goes to the TLS stream at the end of each batch.

Flow control is tied to backpressure, both ways, so no buffer grows without bound:

* request bodies: DATA is acknowledged (the client's window opened again) only once the
  exchange has passed it on, and not while the exchange has paused the request (a backend
  connection being opened, a backend that does not read); a client can therefore have at
  most its window of body in offload per stream, and the connection window over all streams;
* responses: the engine queues what the client's windows do not allow yet; a stream whose
  queue passes :data:`STREAM_HIGH_WATER` pauses its backend connection until it drains, so a
  slow stream never stalls the others, and one that makes no progress for ``send_timeout``
  (a window never opened) is reset. While the TLS connection's own buffer is full, nothing is
  read from the client and the engine's output waits.

Limits (each counted in ``offload_http2_limits_total`` when it fires): concurrent streams (the
SETTINGS the engine enforces), streams per connection (then GOAWAY), the decoded head's size
and field count (:mod:`offload.proto.h2_request`), CONTINUATION frames, control-frame floods
and streams ended early by either side (:mod:`offload.proto.h2_guard`): a budget spent ends
the connection with GOAWAY ENHANCE_YOUR_CALM. A stream the client resets cancels its backend
request; a stream reset in the same read as its HEADERS never reaches a backend.

A stop or reload sends a graceful GOAWAY: open streams finish, no stream is lost.
"""

from __future__ import annotations

import asyncio
import logging

from offload.errors import ProtocolError
from offload.http import access
from offload.http.exchange import ClientContext, Exchange
from offload.http.site import HttpSite
from offload.http.upstream import BackendConnection
from offload.l4.relay import proxy_header
from offload.observe.log import fields
from offload.proto.forwarding import own_response, response_fields
from offload.proto.h2_engine import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    H2Engine,
    H2Event,
    Header,
    RequestReceived,
    StreamReset,
    TrailersReceived,
    WindowOpened,
)
from offload.proto.h2_guard import FrameGuard
from offload.proto.h2_request import (
    BodyCount,
    MalformedRequest,
    request_from_headers,
    request_trailers,
)
from offload.proto.http_types import Headers, Request, Response, header_value
from offload.security.body_pace import BodyPace
from offload.timers import Deadline
from offload.tls.client_certs import host_matches_sni
from offload.tls.stream import TLSServerStream

_log = logging.getLogger("offload.http2")

STREAM_HIGH_WATER = 64 * 1024
"""Response bytes queued on one stream (the client's window is closed) before its backend
connection is paused."""
STREAM_LOW_WATER = 16 * 1024
TICK = 1.0
"""How often body pace and stalled streams are looked at, while any need it."""
SHUTDOWN_ACK_WAIT = 2.0
"""How long an idle connection waits for the PING of a graceful GOAWAY to come back (a round
trip, however slow the network) before it closes anyway."""


def _h2_fields(headers: Headers) -> list[Header]:
    """Response fields as HTTP/2 wants them: lower-case names (RFC 9113 §8.2.2)."""
    return [(name.lower(), value) for name, value in headers]


class H2Stream:
    """One request stream: the :class:`~offload.http.downstream.Downstream` of its exchange."""

    __slots__ = ("_conn", "_head_ended", "_paused", "_unacked", "body", "exchange",
                 "last_queued", "pace", "pace_due", "responded", "stalled_since",
                 "stream_id", "throttled")

    def __init__(self, conn: H2Connection, stream_id: int, body: BodyCount) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.body = body
        self.exchange: Exchange | None = None
        self._paused: set[str] = set()
        self._unacked = 0
        """Received body bytes (flow-controlled) not acknowledged while the request is paused."""
        self._head_ended = False
        """The response head carried END_STREAM (no body): send_end has nothing to do."""
        self.responded = False
        self.throttled = False
        """The response waits for the client's window: the backend is paused."""
        self.stalled_since = 0.0
        self.last_queued = 0
        self.pace: BodyPace | None = None
        """The request body's pace (min_body_rate, body_timeout) while it arrives."""
        self.pace_due = 0.0

    # ---------------------------------------------------------------- request body

    def received(self, data: bytes, flow_length: int) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.request_data(data)
            if self.pace is not None:
                self.pace_due = self.pace.received(len(data), self._conn.clock.time())
            if self._paused:
                self._unacked += flow_length
                return
        self._conn.engine.acknowledge(self.stream_id, flow_length)

    def give_back_window(self) -> None:
        """The exchange is over: body bytes held back while it was paused go nowhere now, so
        their share of the connection's window is given back (else a few uploads answered
        early by a backend that was not reading would shut the connection's window for good)."""
        if self._unacked:
            self._conn.engine.acknowledge(self.stream_id, self._unacked)
            self._unacked = 0

    # ---------------------------------------------------------------- Downstream

    def send_continue(self) -> None:
        self._conn.engine.send_headers(self.stream_id, [(b":status", b"100")], False)
        self._conn.flush()

    def send_interim(self, response: Response) -> None:
        fields_, _ = response_fields(response, self._conn.site.response_policy)
        self._conn.engine.send_headers(
            self.stream_id, [(b":status", b"%d" % response.status), *_h2_fields(fields_)],
            False)

    def send_head(self, response: Response) -> None:
        fields_, length = response_fields(response, self._conn.site.response_policy,
                                          chunked=True)
        out: list[Header] = [(b":status", b"%d" % response.status), *_h2_fields(fields_)]
        if response.status != 204:  # RFC 9110 §8.6: never on a 204
            if response.content_length is not None:
                out.append((b"content-length", b"%d" % response.content_length))
            elif not response.has_body and length is not None and length.isdigit():
                out.append((b"content-length", length))  # HEAD, 304: the representation's
        self._head_ended = not response.has_body
        self.responded = True
        self._conn.engine.send_headers(self.stream_id, out, self._head_ended)

    def send_data(self, data: bytes) -> None:
        if data:
            engine = self._conn.engine
            engine.send_data(self.stream_id, data, False)
            self._conn.guard.sent_data(len(data))
            if not self.throttled and engine.queued(self.stream_id) > STREAM_HIGH_WATER:
                self._conn.throttle(self)
                if self.exchange is not None:
                    self.exchange.client_paused()

    def send_end(self, trailers: Headers) -> None:
        if self._head_ended:
            return
        if trailers:
            self._conn.engine.send_trailers(self.stream_id, _h2_fields(trailers))
        else:
            self._conn.engine.send_data(self.stream_id, b"", True)

    def flush(self) -> None:
        self._conn.flush()

    def exchange_done(self) -> None:
        self._conn.stream_done(self)

    def answer(self, status: int, *, retry_after: bool,
               extra: tuple[tuple[bytes, bytes], ...] = (), detail: str = "") -> None:
        self._conn.answer(self, status, retry_after=retry_after, extra=extra, detail=detail)

    def abort(self) -> None:
        """The response cannot be finished: the client sees the stream reset."""
        self._conn.engine.reset(self.stream_id, CANCEL)
        self._conn.stream_done(self)

    def pause_request(self, why: str) -> None:
        self._paused.add(why)
        if self.pace is not None:
            self.pace.pause(self._conn.clock.time())

    def resume_request(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            if not self._paused:
                if self._unacked:
                    self._conn.engine.acknowledge(self.stream_id, self._unacked)
                    self._unacked = 0
                    self._conn.flush()
                if self.pace is not None and self.pace.paused:
                    self.pace_due = self.pace.resume(self._conn.clock.time())

    def start_tunnel(self, upstream: BackendConnection, backend_tail: bytes) -> None:
        raise AssertionError("HTTP/2 requests never switch protocols")  # no WebSocket over h2

    def proxy_header(self) -> bytes:
        return proxy_header(self._conn.stream, self._conn.site.backend.config.proxy_protocol)


class H2Connection(asyncio.Protocol):
    """The application protocol of one client TLS stream that negotiated ``h2``."""

    def __init__(self, stream: TLSServerStream, site: HttpSite) -> None:
        self.stream = stream
        self.site = site
        self.engine: H2Engine = site.h2_engine(site.h2_settings)
        self.guard = FrameGuard(site.h2_flood_limits)
        self.clock = clock = site.clock
        self.streams: dict[int, H2Stream] = {}
        self.throttled: set[H2Stream] = set()
        """Streams whose response waits for the client's window."""
        self._requests = 0
        self._closing = False
        self._goaway_sent = False
        self._client_left = False
        self._writing_paused = False
        self._ticking = False
        self._idle = Deadline(clock, self._on_idle)
        self._tick = Deadline(clock, self._on_tick)
        self.client_facts = facts = site.client_facts(stream)
        self.trusted = site.forward_policy.trusts(facts.address)
        self.client = ClientContext(facts, self.trusted)
        self.requests_log = access.RequestLog(site, stream, facts)

    @property
    def draining(self) -> bool:
        return self.site.draining

    # ------------------------------------------------------------ the TLS stream's events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.engine.initiate()
        self.flush()
        self._idle.set(self.clock.time() + self.site.frontend.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        over = self.guard.feed(data, self.clock.time())
        if over is not None:
            self._calm_down(over)
            return
        events = self.engine.receive(data)
        if events:
            self._dispatch(events)
        if self._goaway_sent and not self._closing:
            self._maybe_idle()  # the round trip of a graceful GOAWAY may have come back
        self.flush()

    def eof_received(self) -> bool:
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._idle.cancel()
        self._tick.cancel()
        for stream in list(self.streams.values()):
            self._stream_gone(stream, str(exc) if isinstance(exc, TimeoutError)
                              else "client_closed")
        self.streams.clear()
        self.throttled.clear()
        self.engine.release()  # the connection sits in cycles: what it queued goes now

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.stream.pause_reading()  # no more to answer (PINGs, SETTINGS) until it drains

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._closing:
            self.stream.resume_reading()
            self.flush()

    # ------------------------------------------------------------ engine events

    def _dispatch(self, events: list[H2Event]) -> None:
        """Act on the engine's events (an opened window needs nothing: the flush that follows
        sends what it allows, and releases the streams it drained)."""
        # a stream reset in the same read as its HEADERS is never started (Rapid Reset)
        reset_now = {e.stream_id for e in events if isinstance(e, StreamReset)}
        for event in events:
            if isinstance(event, DataReceived):
                self._data(event)
            elif isinstance(event, RequestReceived):
                if event.stream_id not in reset_now:
                    self._request(event)
            elif isinstance(event, TrailersReceived):
                self._trailers(event)
            elif isinstance(event, StreamReset):
                self._reset(event)
            elif isinstance(event, WindowOpened):
                pass
            elif isinstance(event, GoAwayReceived):
                self._goaway_sent = True  # the client opens nothing more: finish and close
                self._client_left = True
                if not self.streams:
                    self._close()
            elif isinstance(event, ConnectionFailed):
                self._count_limit("protocol_error")
                self._closing_after_flush()
                return
            if self._closing:
                return

    def _request(self, event: RequestReceived) -> None:
        site = self.site
        stream_id = event.stream_id
        if stream_id > self.engine.final_stream_id:
            # it came in the same read as what made a final GOAWAY go out (the stream that
            # spent max_requests, the ACK of a shutdown notice's PING); the GOAWAY tells the
            # client it was not processed, so it may send it again (RFC 9113 §6.8)
            self.engine.reset(stream_id, REFUSED_STREAM)
            return
        self._idle.clear()
        self._requests += 1
        config = site.frontend.http2
        if self._requests >= config.max_requests and not self._goaway_sent:
            # the last stream this connection takes; the client opens a new connection
            self._goaway_sent = True
            self.engine.goaway(NO_ERROR, stream_id)
            self._count_limit("max_requests")
        try:
            request = request_from_headers(event.headers, event.end_stream, site.h2_head_limits)
        except MalformedRequest as malformed:
            self._refuse_stream(stream_id, malformed)
            return
        except ProtocolError as refused:  # a name of its own: compiled, a name has one type
            self._answer_refused(stream_id, refused, event.end_stream,
                                 head=(b":method", b"HEAD") in event.headers)
            return
        if site.client_auth and not host_matches_sni(request.host, self.stream.server_name):
            self._answer_refused(stream_id, ProtocolError(
                "the Host is not the name this connection was verified for", 421,
                "host_not_sni"), event.end_stream, head=request.method == b"HEAD")
            return
        stream = H2Stream(self, stream_id, BodyCount(request, site.h2_head_limits))
        self.streams[stream_id] = stream
        exchange = Exchange(stream, site, self.client, request, self._request_id(request))
        stream.exchange = exchange
        limits = site.rate_limits
        if limits is not None and self.stream.client_key:
            decision = limits.on_request(self.stream.client_key, self.clock.precise(),
                                         self.stream.fingerprints)
            if decision.limit is not None:
                site.security.decision(
                    "rate_limited", decision.limit, site.name, self.client_facts.address,
                    retry_after=decision.retry_after,
                    offence="limit_hit" if decision.per_client else None)
                exchange.status, exchange.reason = 429, decision.limit
                exchange.finished = True
                self._own_answer(stream, 429, extra=(
                    (b"Retry-After", b"%d" % decision.retry_after),))
                return
        if not event.end_stream:
            frontend = site.frontend
            stream.pace = BodyPace(frontend.min_body_rate, frontend.body_timeout)
            stream.pace_due = stream.pace.start(self.clock.time())
            self.watch()
        exchange.start()
        if event.end_stream and not exchange.finished:
            exchange.request_end([])

    def _request_id(self, request: Request) -> bytes:
        if self.trusted:
            incoming = header_value(request.headers, b"x-request-id")
            if incoming:
                return incoming
        return self.site.request_ids.next()

    def _data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:  # answered already, or refused: the bytes go nowhere
            self.engine.acknowledge(event.stream_id, event.flow_length)
            return
        try:
            stream.body.data(len(event.data))
        except ProtocolError as error:
            self._stream_failed(stream, error)
            return
        stream.received(event.data, event.flow_length)
        if event.end_stream:
            self._end_of_request(event.stream_id, [])

    def _trailers(self, event: TrailersReceived) -> None:
        """The trailer block ends the request; it goes to the backend as chunked trailers, so
        it is checked like a head first (:func:`~offload.proto.h2_request.request_trailers`)."""
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        try:
            trailers = request_trailers(event.headers, self.site.h2_head_limits)
        except ProtocolError as error:  # the backend sees the request cut short, not ended
            self._stream_failed(stream, error)
            return
        self._end_of_request(event.stream_id, trailers)

    def _end_of_request(self, stream_id: int, trailers: Headers) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        try:
            stream.body.end()
        except ProtocolError as error:
            self._stream_failed(stream, error)
            return
        stream.pace = None
        exchange = stream.exchange
        if exchange is not None and not exchange.finished:
            exchange.request_end(trailers)

    def _reset(self, event: StreamReset) -> None:
        over = self.guard.stream_reset(self.clock.time())
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            self._stream_gone(stream, "client_reset" if event.by_peer else "stream_error")
        if over is not None:
            self._calm_down(over)

    def throttle(self, stream: H2Stream) -> None:
        """``stream``'s response waits for the client's window: watch it for a stall."""
        stream.throttled = True
        stream.stalled_since = self.clock.time()
        stream.last_queued = self.engine.queued(stream.stream_id)
        self.throttled.add(stream)
        self.watch()

    def _release(self) -> None:
        """After output went out: streams whose queue drained get their backend back, and
        answered ones whose last byte has gone are forgotten."""
        engine = self.engine
        for stream in list(self.throttled):
            if engine.queued(stream.stream_id) >= STREAM_LOW_WATER:
                continue
            stream.throttled = False
            self.throttled.discard(stream)
            exchange = stream.exchange
            if exchange is not None and not exchange.finished:
                exchange.client_resumed()
            elif engine.queued(stream.stream_id) == 0:
                self.streams.pop(stream.stream_id, None)
        self._maybe_idle()

    # ------------------------------------------------------------ answers and endings

    def answer(self, stream: H2Stream, status: int, *, retry_after: bool,
               extra: tuple[tuple[bytes, bytes], ...] = (), detail: str = "") -> None:
        """The exchange's own answer (no server, timeout, refused by a rule)."""
        if retry_after:
            extra = (*extra, (b"Retry-After", b"1"))
        self._own_answer(stream, status, extra=extra, detail=detail)

    def _own_answer(self, stream: H2Stream, status: int,
                    extra: tuple[tuple[bytes, bytes], ...] = (), detail: str = "") -> None:
        answer = own_response(status, extra_headers=extra, detail=detail,
                              policy=self.site.response_policy)
        exchange = stream.exchange
        self._send_answer(stream.stream_id, status, answer.fields, answer.body,
                          head=exchange is not None and exchange.request.method == b"HEAD")
        if exchange is not None and not exchange.request_done:
            # RFC 9113 §8.1: the answer came before the request's end; stop the rest of it
            self.engine.reset(stream.stream_id, NO_ERROR)
        self.stream_done(stream)

    def _send_answer(self, stream_id: int, status: int, fields_: Headers, body: bytes, *,
                     head: bool) -> None:
        """One of offload's own answers; to a HEAD request without its body (RFC 9110 §9.3.2:
        DATA there is a stream error for the client)."""
        engine = self.engine
        engine.send_headers(stream_id, [
            (b":status", b"%d" % status), *_h2_fields(fields_),
            (b"content-length", b"%d" % len(body))], head)
        if not head:
            engine.send_data(stream_id, body, True)

    def _answer_refused(self, stream_id: int, error: ProtocolError, ended: bool, *,
                        head: bool = False) -> None:
        """A request refused before it became an exchange (like a parse error in HTTP/1.1)."""
        self.site.counters.inc("http_rejected", self.site.name, error.reason)
        answer = own_response(error.status, policy=self.site.response_policy)
        engine = self.engine
        self._send_answer(stream_id, error.status, answer.fields, answer.body, head=head)
        if not ended:
            engine.reset(stream_id, NO_ERROR)
        self.requests_log.local(error.status, error.reason)
        self._maybe_idle()

    def _refuse_stream(self, stream_id: int, error: ProtocolError) -> None:
        """RFC 9113 §8.1.1: a malformed request is a stream error; it counts as a stream the
        client ended early."""
        self.site.counters.inc("http_rejected", self.site.name, error.reason)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("stream refused", extra=fields(
                frontend=self.site.name, client=self.client_facts.address,
                reason=error.reason, detail=str(error)))
        self.engine.reset(stream_id, PROTOCOL_ERROR)
        self.requests_log.local(400, error.reason)
        over = self.guard.stream_reset(self.clock.time())
        if over is not None:
            self._calm_down(over)
        self._maybe_idle()

    def _stream_failed(self, stream: H2Stream, error: ProtocolError) -> None:
        """The body broke the rules mid-stream (Content-Length, size): reset or answer."""
        self.site.counters.inc("http_rejected", self.site.name, error.reason)
        exchange = stream.exchange
        if isinstance(error, MalformedRequest) or stream.responded or exchange is None \
                or exchange.finished:
            self.engine.reset(stream.stream_id, PROTOCOL_ERROR)
            self.streams.pop(stream.stream_id, None)
            self._stream_gone(stream, error.reason)
            over = self.guard.stream_reset(self.clock.time())
            if over is not None:
                self._calm_down(over)
            return
        exchange.client_gone()
        exchange.status, exchange.reason = error.status, error.reason
        exchange.finished = True
        self._own_answer(stream, error.status)

    def stream_done(self, stream: H2Stream) -> None:
        exchange = stream.exchange
        if exchange is not None:
            self.requests_log.exchange(exchange)
        stream.pace = None
        stream.give_back_window()
        self.flush()
        if self.engine.queued(stream.stream_id) == 0:
            self.streams.pop(stream.stream_id, None)
        elif not stream.throttled:  # what is left waits for the window: watch it
            self.throttle(stream)
        self._maybe_idle()

    def _stream_gone(self, stream: H2Stream, reason: str) -> None:
        """The client reset the stream, or it broke: the exchange (if running) is cancelled,
        and its backend connection dropped."""
        stream.give_back_window()
        exchange = stream.exchange
        if exchange is not None and not exchange.finished:
            exchange.reason = reason
            exchange.client_gone()
            self.requests_log.exchange(exchange)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self._closing or any(s.exchange is None or not s.exchange.finished
                                for s in self.streams.values()):
            return
        if (self._goaway_sent and self.engine.open_streams == 0
                and (self._client_left or not self.engine.shutdown_pending)):
            # a stream the client sent before it saw a shutdown notice is still on its way
            # until the notice's PING comes back (RFC 9113 §6.8): closing now would lose it
            self._closing_after_flush()
            return
        if not self.streams:
            wait = self.site.frontend.keepalive_timeout
            if self._goaway_sent:  # only the shutdown notice's round trip is waited for
                wait = min(wait, SHUTDOWN_ACK_WAIT)
            self._idle.set(self.clock.time() + wait)

    # ------------------------------------------------------------ timers

    def watch(self) -> None:
        """Something needs looking at every tick: a request body's pace, a stalled stream."""
        if not self._ticking:
            self._ticking = True
            self._tick.set(self.clock.time() + TICK)

    def _on_tick(self) -> None:
        self._ticking = False
        now = self.clock.time()
        send_timeout = self.site.frontend.send_timeout
        busy = False
        engine = self.engine
        for stream in list(self.streams.values()):
            pace = stream.pace
            if pace is not None and not pace.paused:
                busy = True
                if now >= stream.pace_due:
                    cause = pace.cause(now)
                    self.site.counters.inc("timeout", "body" if cause == "body_timeout"
                                           else "body_rate")
                    self.site.security.decision("slow_client", cause, self.site.name,
                                                self.client_facts.address)
                    stream.pace = None
                    self._stream_failed(stream, ProtocolError("request body too slow", 408,
                                                              cause))
                    continue
            if stream.throttled:
                busy = True
                queued = engine.queued(stream.stream_id)
                if queued < stream.last_queued:  # the client is reading: not stalled
                    stream.stalled_since = now
                stream.last_queued = queued
                if send_timeout and now - stream.stalled_since > send_timeout:
                    # the client never opened its window: its stream is given up
                    self._count_limit("stalled_stream")
                    engine.reset(stream.stream_id, CANCEL)
                    stream.throttled = False
                    self.throttled.discard(stream)
                    self.streams.pop(stream.stream_id, None)
                    self._stream_gone(stream, "send_timeout")
        if busy and not self._closing:
            self.watch()
        self.flush()

    def _on_idle(self) -> None:
        if self.streams or self._closing:
            return
        self.site.counters.inc("timeout", "keepalive")
        self.engine.goaway(NO_ERROR, self.engine.last_stream_id)
        self._closing_after_flush()

    # ------------------------------------------------------------ output and closing

    def flush(self) -> None:
        if self._writing_paused:
            return
        data = self.engine.data_to_send()
        if data:
            self.stream.write(data)
            if self.throttled:
                self._release()

    def _count_limit(self, which: str) -> None:
        self.site.counters.inc("h2_limit", self.site.name, which)

    def _calm_down(self, reason: str) -> None:
        """A budget is spent: GOAWAY ENHANCE_YOUR_CALM, every stream cancelled, close."""
        self._count_limit(reason)
        self.site.security.decision("h2_flood", reason, self.site.name,
                                    self.client_facts.address, offence="limit_hit")
        self.engine.goaway(ENHANCE_YOUR_CALM)
        for stream in list(self.streams.values()):
            self._stream_gone(stream, reason)
        self.streams.clear()
        self._closing_after_flush()

    def _closing_after_flush(self) -> None:
        self._writing_paused = False
        self.flush()
        self._close()

    def drain(self) -> None:
        """The worker is stopping: graceful GOAWAY; open streams finish, then close."""
        if self._closing:
            return
        if not self._goaway_sent:
            self._goaway_sent = True
            self.engine.goaway(NO_ERROR)
            self.flush()
        self._maybe_idle()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._idle.cancel()
        self._tick.cancel()
        self.stream.close()
