"""One request and its response, from choosing a server to the last byte sent to the client.

Theory of operation. The client side (:class:`~offload.http.downstream.Downstream`: the
HTTP/1.1 connection or an HTTP/2 stream) hands the exchange the request head, then body events;
the exchange picks servers (balancer order), takes an idle pooled connection or opens one,
writes the rewritten head and streams the body, then streams the response back through the
client side. Everything is callbacks on one :class:`~offload.timers.Clock`: the exchange does no
I/O of its own and writes no client-side bytes, so it can be driven by a test as a script of
events in and actions out.

Retries (RFC 9110 §9.2.2): a request moves to the next server when connecting fails; it is sent
again only when it is idempotent, no response byte has arrived, and no body byte was sent
(so a stale keep-alive connection costs nothing). A request whose body was streamed is never
repeated.

Inspection (:mod:`offload.http.gate`: the frontend's rules, a WAF, a scanner) runs before a
server is chosen: a denied request is answered with the inspector's status (403) and its
request id, and never reaches a backend. While the inspectors decide, the exchange holds the
body until it has the prefix they asked for (or the whole body, if shorter) and only then
connects and sends what it held; once it holds that prefix and an answer is still awaited it
pauses reading the client (``pause_request("inspection")``), so nothing beyond the prefix (plus
the rest of the read it arrived in) is buffered. An inspector that wants the response head is
asked before the head reaches the client; the backend is not read meanwhile.

Towards the backend, a body of unknown length (``request.chunked``) goes out chunked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from offload.errors import BackendTlsError, ProtocolError
from offload.http.gate import Decision, Gate, Subject, open_gate
from offload.http.inspection import backend_auth_failure, forwarded_client
from offload.observe.log import fields
from offload.proto.forwarding import FIELD_VALUE, ClientFacts, request_fields
from offload.proto.http1_write import chunk, last_chunk, request_head
from offload.proto.http_types import Data, EndOfMessage, Event, Headers, Request, Response
from offload.timers import Clock, Deadline

if TYPE_CHECKING:
    from offload.http.downstream import Downstream
    from offload.http.site import HttpSite
    from offload.http.upstream import BackendConnection, HttpBackend

_log = logging.getLogger("offload.http")


class ClientContext:
    """What an exchange knows of its client: shared by the requests of one connection."""

    __slots__ = ("balance_key", "facts", "trusted")

    def __init__(self, facts: ClientFacts, trusted: bool) -> None:
        self.facts = facts
        self.trusted = trusted
        """The client is a trusted proxy: its forwarding fields are believed."""
        self.balance_key = facts.address.encode()


class Exchange:
    """A request travelling through offload (one per request, created by the client side)."""

    __slots__ = (
        "_candidates", "_connecting", "_fresh_retry", "_gate", "_held", "_held_events",
        "_own_timer", "_prefix", "_prefix_size", "_response_complete", "_timer",
        "backend", "body_sent", "bytes_in", "bytes_out", "client", "client_context", "clock",
        "downstream", "finished", "notes", "reason", "request", "request_done", "request_id",
        "response", "response_started", "server_index", "site", "started", "status",
        "t_connected", "t_first_byte", "upstream",
    )

    def __init__(self, downstream: Downstream, site: HttpSite, client: ClientContext,
                 request: Request, request_id: bytes, *, deadline: Deadline | None = None
                 ) -> None:
        self.downstream = downstream
        self.site = site
        self.client_context = client
        self.request = request
        self.request_id = request_id
        self.clock: Clock = site.clock
        self.backend: HttpBackend = site.backend
        self.upstream: BackendConnection | None = None
        self.server_index = -1
        self.started = self.clock.precise()
        self.t_connected = 0.0
        self.t_first_byte = 0.0
        self.request_done = False
        self.body_sent = False
        self.response: Response | None = None
        self.response_started = False
        self.finished = False
        self.status = 0
        self.reason = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self._held: list[bytes] = []
        self._candidates: list[int] = []
        self._connecting: Callable[[], object] | None = None
        """Cancels the backend connection being opened."""
        self._fresh_retry = True
        self._response_complete = False
        self._timer = (deadline if deadline is not None
                       else Deadline(self.clock, self._on_server_deadline))
        self._own_timer = deadline is None
        """The backend side's deadline (a client connection may share one between its
        exchanges, which run one at a time)."""
        self._gate: Gate | None = None
        self.notes: dict[str, object] | None = None
        """The inspectors' fields for the access log (what a WAF matched), if any."""
        """The inspectors' sessions, while any has something to decide."""
        self._held_events: list[Event] | None = None
        """Backend events held while the inspectors decide on the response."""
        self._prefix: list[bytes] = []
        self._prefix_size = 0
        self.client = (forwarded_client(request.headers, site.forward_policy,
                                        client.facts.address)
                       if client.trusted else client.facts.address)
        """The address rules and bans see (the forwarded one behind a trusted proxy)."""

    # ------------------------------------------------------------ start and servers

    def start(self) -> None:
        site = self.site
        if (self.client_context.trusted and site.banned
                and site.banned.banned(self.client, self.clock.precise())):
            # Behind a proxy the ban cannot refuse the connection; it refuses the requests.
            site.security.decision("request_refused", "banned", site.name, self.client)
            self.fail_local(403, "banned")
            return
        if not site.inspectors:
            self._route()
            return
        facts = self.client_context.facts
        self.notes = {}
        self._gate = gate = open_gate(site.inspectors, Subject(
            site.name, self.client, facts.port, facts.local_port, self.request,
            self.request_id, facts.fingerprints, self.notes), self.clock)
        if gate is None:
            self._route()
            return
        gate.start(self._request_decided)
        if gate.pending and not self.finished:
            self._hold_body()

    def _request_decided(self, decision: Decision) -> None:
        """The inspectors answered: ``more`` (they want the body prefix) or the verdict."""
        if self.finished:
            return
        action = decision.action
        if action == "more":
            request = self.request
            if request.expect_continue and not self.request_done:
                # the client waits for 100 before it sends the body the inspectors must see:
                # say it ourselves, and do not ask the backend again
                request.expect_continue = False
                self.downstream.send_continue()
            self._hold_body()
            return
        self._prefix = []
        self.downstream.resume_request("inspection")
        if action == "allow":
            if self._gate is not None and not self._gate.wants_response():
                self._end_gate()
            self._route()
        else:
            self._held = []
            self._refuse(decision)

    def _hold_body(self) -> None:
        """Hold the body prefix the inspectors want; once held, ask them, or stop reading."""
        gate = self._gate
        if gate is None or not gate.pending:
            return
        wanted = gate.body_wanted()
        held = self._prefix_size >= wanted
        if gate.awaiting_body and (held or self.request_done or not self.request.has_body):
            prefix = b"".join(self._prefix)
            gate.body(prefix, self.request_done or not self.request.has_body)
            if self._gate is gate and gate.pending:  # answered later: hold what comes
                self.downstream.pause_request("inspection")
        elif held:
            self.downstream.pause_request("inspection")
        else:
            self.downstream.resume_request("inspection")

    def _refuse(self, decision: Decision) -> None:
        """An inspector refused: answer with its status (or its page) and the request id."""
        if decision.action == "replace":
            self.status = decision.status
            self.reason = decision.reason
            self.finished = True
            self._timer_done()
            self._cancel_connect()
            response = Response(status=decision.status, reason=b"", version=b"1.1",
                                headers=[*decision.headers, (b"Content-Length",
                                                             b"%d" % len(decision.body))],
                                content_length=len(decision.body))
            self.response = response
            self.response_started = True
            downstream = self.downstream
            downstream.send_head(response)
            if decision.body:
                downstream.send_data(decision.body)
            downstream.send_end([])
            downstream.exchange_done()
            return
        self.fail_local(decision.status or 403, decision.reason, request_id=True)

    def _route(self) -> None:
        self._candidates = self.backend.candidates(self.client_context.balance_key,
                                                   self.clock.time())
        if not self._candidates:
            self.backend.counters.inc("backend_unavailable", self.backend.name)
            self.fail_local(503, "no_server", retry_after=True)
            return
        self._next_server()

    def _next_server(self) -> None:
        if not self._candidates:
            self.fail_local(503, "no_server_answered", retry_after=True)
            return
        index = self._candidates.pop(0)
        self.server_index = index
        host = self.request.host  # over TLS, it chooses the SNI (and so the connection)
        idle = self.backend.take_idle(index, host)
        if idle is not None:
            self.backend.acquired(index)
            self._bind(idle, fresh=False)
            return
        self.downstream.pause_request("connecting")  # until the new connection is there
        self._connecting = self.backend.open(index, self._opened, host,
                                             self.downstream.proxy_header())

    def _opened(self, index: int, upstream: BackendConnection | None,
                error: BaseException | None) -> None:
        """The backend connection asked for in :meth:`_next_server` is open (or failed)."""
        self._connecting = None
        self.downstream.resume_request("connecting")
        if isinstance(error, BackendTlsError):
            # counted, logged and held against the server by the backend; the client learns
            # nothing but 502
            if error.client_named or not self._candidates:
                self.fail_local(502, "backend_tls")
            elif not self.finished:
                self._next_server()
            return
        if upstream is None:
            self.backend.counters.inc("backend_connect_failed", self.backend.name)
            self.backend.report(index, "connect_failed", self.clock.time())
            if _log.isEnabledFor(logging.DEBUG):
                server = self.backend.servers[index]
                _log.debug("backend connect failed", extra=fields(
                    backend=self.backend.name, server=server.label, address=str(server),
                    reason="timeout" if isinstance(error, TimeoutError) else str(error)))
            if not self.finished:
                self._next_server()
            return
        if self.finished:
            upstream.close()
            return
        self.backend.acquired(index)
        self._bind(upstream, fresh=True)

    def _bind(self, upstream: BackendConnection, *, fresh: bool) -> None:
        self.upstream = upstream
        upstream.user = self
        upstream.requests += 1
        upstream.expect(self.request.method)
        now = self.clock.time()
        self.t_connected = self.clock.precise()
        self.backend.wait_began(self.server_index, self, now)
        self._timer.set(now + self.backend.config.server_timeout)
        site = self.site
        fields_, self.request_id = request_fields(
            self.request, self.client_context.facts, site.forward_policy, self.request_id,
            trusted=self.client_context.trusted)
        out = [request_head(self.request, fields_)]  # a PROXY header went first, with open()
        if self._held:
            self.body_sent = True
            out.extend(self._held)
            self._held = []
        upstream.write(b"".join(out))

    # ------------------------------------------------------------ request body (from client)

    def request_data(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end a chunked body (an HTTP/2 client may send one)
        self.bytes_in += len(data)
        piece = chunk(data) if self.request.chunked else data
        upstream = self.upstream
        if upstream is None:
            self._held.append(piece)
        else:
            self.body_sent = True
            upstream.write(piece)
        gate = self._gate
        if gate is not None and gate.pending and not gate.awaiting_response_body:
            self._prefix.append(data)
            self._prefix_size += len(data)
            self._hold_body()

    def request_end(self, trailers: Headers) -> None:
        self.request_done = True
        if self.request.chunked:
            piece = last_chunk(trailers)
            if self.upstream is None:
                self._held.append(piece)
            else:
                self.upstream.write(piece)
        gate = self._gate
        if gate is not None and gate.pending:
            self._hold_body()  # the whole body was shorter than the prefix

    # ------------------------------------------------------------ the client's pace

    def client_paused(self) -> None:
        """The client does not take the response as fast as it comes: stop reading it, and
        the server's silence is not held against it meanwhile."""
        upstream = self.upstream
        if upstream is not None:
            upstream.pause_reading()
            self._timer.clear()

    def client_resumed(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.resume_reading()
            if not self.finished:
                self._timer.set(self.clock.time() + self.backend.config.server_timeout)

    # ------------------------------------------------------------ response (from backend)

    def backend_events(self, events: list[Event]) -> None:
        held = self._held_events
        if held is not None:  # the inspectors are deciding on the response
            self._hold_response(events)
            return
        self._timer.set(self.clock.time() + self.backend.config.server_timeout)
        downstream = self.downstream
        for index, event in enumerate(events):
            if self._held_events is not None:  # the head just went to the inspectors
                self._hold_response(events[index:])
                return
            if isinstance(event, Data):
                self.bytes_out += len(event.data)
                downstream.send_data(event.data)
            elif isinstance(event, Response):
                self._response_head(event)
                if self.finished:
                    return
            elif isinstance(event, EndOfMessage):
                self._response_complete = True
                downstream.send_end(event.trailers)
                break  # one response per request: the parser never gives more, and neither do we
        if self._response_complete and not self.finished:
            self._finish()
        elif not self.finished:
            downstream.flush()

    def _response_head(self, response: Response) -> None:
        if not self.t_first_byte:
            self.t_first_byte = self.clock.precise()
            self.backend.wait_ended(self.server_index, self)
        status = response.status
        if status < 200:
            if status == 101:
                self._switch_protocols(response)
            else:
                self.downstream.send_interim(response)
            return
        self.response = response
        self.status = status
        self.response_started = True
        self.backend.report(self.server_index, "ok" if status < 500 else "status_5xx",
                            self.clock.time())
        self.backend.responded(self.server_index, status, self.t_first_byte - self.t_connected)
        if status in (401, 403):
            site = self.site
            backend_auth_failure(site.security, site.name, self.client)
        gate = self._gate
        if gate is not None and gate.wants_response():
            self._held_events = []
            self._prefix = []
            self._prefix_size = 0
            self._timer.clear()  # the inspectors' own deadline runs meanwhile
            if self.upstream is not None:
                self.upstream.pause_reading()
            gate.response(response, self._response_decided)
            return
        self.downstream.send_head(response)

    def _hold_response(self, events: list[Event]) -> None:
        """Backend events that came while the inspectors decide on the response."""
        held = self._held_events
        gate = self._gate
        assert held is not None
        held.extend(events)
        if gate is None or not gate.awaiting_response_body:
            return
        for event in events:
            if isinstance(event, Data):
                self._prefix.append(event.data)
                self._prefix_size += len(event.data)
        complete = any(isinstance(event, EndOfMessage) for event in held)
        if complete or self._prefix_size >= gate.response_body_wanted():
            if self.upstream is not None:
                self.upstream.pause_reading()
            prefix = b"".join(self._prefix)
            self._prefix = []
            gate.response_data(prefix, complete)

    def _response_decided(self, decision: Decision) -> None:
        if self.finished:
            return
        upstream = self.upstream
        if decision.action == "more":  # read the response body prefix, then ask again
            held, self._held_events = self._held_events or [], []
            if upstream is not None:
                upstream.resume_reading()
            self._hold_response(held)
            return
        held, self._held_events = self._held_events or [], None
        self._end_gate()
        if decision.action == "allow":
            response = self.response
            assert response is not None
            self._timer.set(self.clock.time() + self.backend.config.server_timeout)
            if upstream is not None:
                upstream.resume_reading()
            self.downstream.send_head(response)
            self.backend_events(held)
            return
        self._drop_upstream()
        self.response = None
        self.response_started = False
        self._refuse(decision)

    def _switch_protocols(self, response: Response) -> None:
        upstream = self.upstream
        if not self.request.websocket or upstream is None:
            self.backend_failed(ProtocolError("unexpected 101 from the backend", 502,
                                              "bad_response"))
            return
        self.status = 101
        self.response = response
        self.response_started = True
        self.finished = True
        self._timer_done()
        self._end_gate()
        self.downstream.send_interim(response)
        self.downstream.start_tunnel(upstream, upstream.upgrade_tail())

    def backend_raw(self, data: bytes) -> None:  # only in tunnel mode, handled by the tunnel
        raise AssertionError("raw data reached an exchange")

    def backend_failed(self, error: ProtocolError) -> None:
        if self.upstream is not None:
            self.backend.protocol_error(self.upstream, error.reason, str(error))
        self.backend.report(self.server_index, "bad_response", self.clock.time())
        # the server did answer, if badly: sending the request again is not safe
        self._upstream_broken(error.reason, 502, retry=False)

    def backend_eof(self) -> None:
        upstream = self.upstream
        if upstream is not None and self.response is not None and upstream.ends_with_close:
            self.backend_events(upstream.eof_events())
            return
        self._upstream_broken("backend_closed", 502)

    def backend_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if isinstance(exc, BackendTlsError):  # the server refused the handshake after all
            self._upstream_broken("backend_tls", 502, retry=False)
        else:
            self._upstream_broken("backend_closed" if exc is None else "backend_reset", 502)

    def backend_pause_writing(self) -> None:
        self.downstream.pause_request("backend")

    def backend_resume_writing(self) -> None:
        self.downstream.resume_request("backend")

    def _on_server_deadline(self) -> None:
        if not self.finished:
            self.server_timeout()

    def server_timeout(self) -> None:
        """The server stayed silent for ``server_timeout``."""
        self.backend.counters.inc("timeout", "server")
        self.backend.report(self.server_index, "timeout", self.clock.time())
        self._drop_upstream()
        if self.response_started:
            self._abort("server_timeout")
        else:
            self.fail_local(504, "server_timeout")

    def _upstream_broken(self, reason: str, status: int, *, retry: bool = True) -> None:
        """The backend connection failed; retry if allowed, else answer or cut the response."""
        if self.finished:
            return
        fresh_retry_ok = (retry and self.response is None and not self.t_first_byte
                          and self.request.idempotent and not self.body_sent
                          and not self.request.has_body)
        upstream = self.upstream
        reused = upstream is not None and upstream.requests > 1
        # a pooled connection the server had closed meanwhile is not the server failing
        stale = reused and fresh_retry_ok and self._fresh_retry
        if retry and not stale:  # a reset or close mid-exchange (bad answers report themselves)
            self.backend.report(self.server_index, "reset", self.clock.time())
        self._drop_upstream()
        if fresh_retry_ok:
            if reused and self._fresh_retry:
                # a keep-alive connection the server had closed: try once more, fresh
                self._fresh_retry = False
                self._candidates.insert(0, self.server_index)
            self.backend.counters.inc("retry", self.backend.name)
            self._next_server()
            return
        if self.response_started:
            self._abort(reason)
        else:
            self.fail_local(status, reason)

    # ------------------------------------------------------------ endings

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
            self.backend.wait_ended(self.server_index, self)
            self.backend.released(self.server_index)
        self._timer.clear()

    def _cancel_connect(self) -> None:
        if self._connecting is not None:
            self._connecting()
            self._connecting = None
            self.downstream.resume_request("connecting")

    def fail_local(self, status: int, reason: str, *, retry_after: bool = False,
                   request_id: bool = False) -> None:
        """offload answers itself (no server, timeout, bad gateway, refused by a rule); a
        refusal carries the request id, for the client to quote when it asks why."""
        if self.finished:
            return
        self.status = status
        self.reason = reason
        self.finished = True
        self._timer_done()
        self._cancel_connect()
        self._end_gate()
        rid = self.request_id
        if request_id and FIELD_VALUE.fullmatch(rid):
            name = self.site.forward_policy.request_id_header
            self.downstream.answer(status, retry_after=retry_after,
                                   extra=((name, rid),),
                                   detail=f"request id: {rid.decode('latin-1')}")
        else:
            self.downstream.answer(status, retry_after=retry_after)

    def _end_gate(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.close()
            self.downstream.resume_request("inspection")

    def _abort(self, reason: str) -> None:
        """The response was already started: all we can do is cut the connection."""
        self.reason = reason
        self.finished = True
        self._timer_done()
        self._end_gate()
        self.downstream.abort()

    def _finish(self) -> None:
        self.finished = True
        self._timer_done()
        self._end_gate()
        upstream, self.upstream = self.upstream, None
        response = self.response
        if upstream is not None:
            length = self.request.content_length
            reusable = (response is not None and response.keep_alive and self.request_done
                        and not response.until_close
                        and (length is None or self.bytes_in == length))
            self.backend.wait_ended(self.server_index, self)
            self.backend.released(self.server_index)
            self.backend.release(upstream, reusable, self.clock.time())
        self.downstream.exchange_done()

    def client_gone(self) -> None:
        """The client disconnected, reset the stream or broke the protocol mid-exchange."""
        self._cancel_connect()
        if not self.finished:
            self.finished = True
            self.reason = self.reason or "client_closed"
            self._drop_upstream()
        self._end_gate()
        self._timer_done()

    def _timer_done(self) -> None:
        """The exchange is over. A deadline of its own (an HTTP/2 stream's) is cancelled: only
        cleared, its armed timer would keep the exchange, its stream, the client's connection
        and what that connection holds (responses queued for the client) alive until
        ``server_timeout`` after the client left. A deadline shared with the connection's next
        exchanges (HTTP/1.1) is cleared, as its next ``set`` is then cheap."""
        if self._own_timer:
            self._timer.cancel()
        else:
            self._timer.clear()
