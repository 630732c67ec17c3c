"""One request and its response, from choosing a server to the last byte sent to the client.

Theory of operation. The client connection hands the exchange the request head, then body
events; the exchange picks servers (balancer order), takes an idle pooled connection or opens
one, writes the rewritten head and streams the body, then streams the response back the same
way. Everything is callbacks on the event loop; a task exists only while a new backend
connection is being opened.

Retries (RFC 9110 §9.2.2): a request moves to the next server when connecting fails; it is sent
again only when it is idempotent, no response byte has arrived, and no body byte was sent
(so a stale keep-alive connection costs nothing). A request whose body was streamed is never
repeated.

Framing towards the client: the backend's Content-Length is kept; a chunked or close-delimited
body goes out chunked to an HTTP/1.1 client and close-delimited to an HTTP/1.0 client.

Inspection rules (:mod:`offload.http.inspection`) run before a server is chosen: a denied
request is answered 403 and never reaches a backend. When a rule also looks at the body, the
exchange holds the body until it has the first ``body_inspect_bytes`` (or the whole body, if
shorter), decides, and only then connects and sends what it held; reading is never paused for
this, and nothing beyond that prefix (plus the rest of the read it arrived in) is buffered.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from offload.errors import ProtocolError
from offload.http.inspection import backend_auth_failure, denied_reason, forwarded_client
from offload.proto import http_rewrite as rewrite
from offload.proto.http_types import Data, EndOfMessage, Event, Headers, Request, Response
from offload.security.rules import Verdict
from offload.timers import Deadline

if TYPE_CHECKING:
    from offload.http.connection import HttpConnection
    from offload.http.upstream import BackendConnection, HttpBackend

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers) -> bytes:
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(b"%b: %b\r\n" % pair for pair in trailers) + b"\r\n"


class Exchange:
    """A request travelling through offload (one per request, created by the connection)."""

    __slots__ = (
        "_candidates", "_connecting", "_fresh_retry", "_held", "_prefix", "_prefix_size",
        "_response_complete", "_timer", "_verdict",
        "backend",
        "body_sent", "bytes_in", "bytes_out", "client", "conn", "finished", "framing", "keep_alive",
        "reason", "request", "request_done", "request_id", "response", "response_started",
        "server_index", "started", "status", "t_connected", "t_first_byte", "upstream",
    )

    def __init__(self, conn: HttpConnection, request: Request, request_id: bytes) -> None:
        self.conn = conn
        self.request = request
        self.request_id = request_id
        self.backend: HttpBackend = conn.backend
        self.upstream: BackendConnection | None = None
        self.server_index = -1
        self.started = time.monotonic()
        self.t_connected = 0.0
        self.t_first_byte = 0.0
        self.request_done = False
        self.body_sent = False
        self.response: Response | None = None
        self.response_started = False
        self.finished = False
        self.framing = "length"
        self.keep_alive = False
        self.status = 0
        self.reason = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self._held: list[bytes] = []
        self._candidates: list[int] = []
        self._connecting: asyncio.Task[None] | None = None
        self._fresh_retry = True
        self._response_complete = False
        self._timer: Deadline | None = None
        self._verdict: Verdict | None = None
        """Set while the body prefix is held for the rules that look at it."""
        self._prefix: list[bytes] = []
        self._prefix_size = 0
        facts = conn.client_facts
        self.client = (forwarded_client(request.headers, conn.forward_policy, facts.address)
                       if conn.trusted else facts.address)
        """The address rules and bans see (the forwarded one behind a trusted proxy)."""

    # ------------------------------------------------------------ start and servers

    def start(self) -> None:
        site = self.conn.site
        if self.conn.trusted and site.banned and site.banned.banned(self.client, time.monotonic()):
            # Behind a proxy the ban cannot refuse the connection; it refuses the requests.
            site.security.decision("request_refused", "banned", site.name, self.client)
            self.fail_local(403, "banned")
            return
        inspection = site.inspection
        if inspection is None:
            self._route()
            return
        verdict = inspection.head(self.client, self.request, self.request_id)
        if verdict.deny:
            self.fail_local(403, denied_reason(verdict))
        elif not verdict.needs_body:
            inspection.forward(self.request, verdict)
            self._route()
        elif not self.request.has_body:
            self._verdict = verdict
            self._inspect_body()
        else:
            self._verdict = verdict
            request = self.request
            if request.expect_continue:
                # the client waits for 100 before it sends the body the rules must see: say it
                # ourselves, and do not ask the backend again
                request.expect_continue = False
                if request.version == b"1.1":
                    self.conn.write(CONTINUE)

    def _inspect_body(self) -> None:
        """The body prefix is complete: finish the verdict, then deny or go on."""
        inspection = self.conn.site.inspection
        verdict = self._verdict
        assert inspection is not None and verdict is not None
        prefix = b"".join(self._prefix)
        self._verdict = None
        self._prefix = []
        verdict = inspection.body(prefix, verdict, self.client, self.request, self.request_id)
        if verdict.deny:
            self._held = []
            self.fail_local(403, denied_reason(verdict))
            return
        inspection.forward(self.request, verdict)
        self._route()

    def _route(self) -> None:
        self._candidates = self.backend.candidates(self.conn.balance_key, self.conn.loop.time())
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
        idle = self.backend.take_idle(index)
        if idle is not None:
            self.backend.acquired(index)
            self._bind(idle, fresh=False)
            return
        self.conn.pause_client("connecting")  # until the new connection is there
        self._connecting = self.conn.loop.create_task(self._connect(index))

    async def _connect(self, index: int) -> None:
        try:
            upstream = await self.backend.connect(index)
        except (OSError, TimeoutError) as error:
            self._connecting = None
            self.conn.resume_client("connecting")
            self.backend.counters.inc("backend_connect_failed", self.backend.name)
            self.backend.report(index, "connect_failed", self.conn.loop.time())
            self.conn.log_backend_failure(self, index, error)
            if not self.finished:
                self._next_server()
            return
        self._connecting = None
        self.conn.resume_client("connecting")
        if self.finished:
            upstream.close()
            return
        self.backend.acquired(index)
        self._bind(upstream, fresh=True)

    def _bind(self, upstream: BackendConnection, *, fresh: bool) -> None:
        self.upstream = upstream
        upstream.user = self
        upstream.requests += 1
        upstream.parser.expect(self.request.method)
        self.t_connected = time.monotonic()
        self.backend.wait_began(self.server_index, self, self.conn.loop.time())
        self._timer = self.conn.server_deadline
        self._timer.set(self.conn.loop.time() + self.backend.config.server_timeout)
        head, self.request_id = rewrite.backend_request_head(
            self.request, self.conn.client_facts, self.conn.forward_policy, self.request_id,
            trusted=self.conn.trusted)
        out = [head]
        if fresh:
            proxy = self.conn.proxy_header()
            if proxy:
                out.insert(0, proxy)
                upstream.private = True
        if self._held:
            self.body_sent = True
            out.extend(self._held)
            self._held = []
        upstream.write(b"".join(out))

    # ------------------------------------------------------------ request body (from client)

    def request_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        piece = chunk(data) if self.request.chunked else data
        upstream = self.upstream
        if upstream is None:
            self._held.append(piece)
        else:
            self.body_sent = True
            upstream.write(piece)
        if self._verdict is not None:
            self._prefix.append(data)
            self._prefix_size += len(data)
            inspection = self.conn.site.inspection
            if inspection is not None and self._prefix_size >= inspection.body_bytes:
                self._inspect_body()

    def request_end(self, trailers: Headers) -> None:
        self.request_done = True
        if self.request.chunked:
            piece = last_chunk(trailers)
            if self.upstream is None:
                self._held.append(piece)
            else:
                self.upstream.write(piece)
        if self._verdict is not None:
            self._inspect_body()  # the whole body was shorter than the prefix

    # ------------------------------------------------------------ response (from backend)

    def backend_events(self, events: list[Event]) -> None:
        timer = self._timer
        if timer is not None:
            timer.set(self.conn.loop.time() + self.backend.config.server_timeout)
        out: list[bytes] = []
        for event in events:
            if isinstance(event, Data):
                data = event.data
                self.bytes_out += len(data)
                out.append(chunk(data) if self.framing == "chunked" else data)
            elif isinstance(event, Response):
                self._response_head(event, out)
                if self.finished:
                    return
            elif isinstance(event, EndOfMessage):
                if self.framing == "chunked":
                    out.append(last_chunk(event.trailers))
                self._response_complete = True
                break  # one response per request: the parser never gives more, and neither do we
        if out:
            self.conn.write(b"".join(out))
        if self._response_complete and not self.finished:
            # keep_alive was only granted if the whole request had been read, so a response
            # that ends before its request does ends the client connection too.
            self._finish()

    def _response_head(self, response: Response, out: list[bytes]) -> None:
        if not self.t_first_byte:
            self.t_first_byte = time.monotonic()
            self.backend.wait_ended(self.server_index, self)
        status = response.status
        if status < 200:
            if status == 101:
                self._switch_protocols(response, out)
            elif self.request.version == b"1.1":
                out.append(rewrite.client_response_head(
                    response, framing="none", keep_alive=True, client_version=b"1.1",
                    policy=self.conn.response_policy))
            return
        self.response = response
        self.status = status
        self.response_started = True
        self.backend.report(self.server_index, "ok" if status < 500 else "status_5xx",
                            self.conn.loop.time())
        self.backend.responded(self.server_index, status, self.t_first_byte - self.t_connected)
        if status in (401, 403):
            site = self.conn.site
            backend_auth_failure(site.security, site.name, self.client)
        if not response.has_body:
            self.framing = "none"
        elif response.content_length is not None:
            self.framing = "length"
        elif self.request.version == b"1.1":
            self.framing = "chunked"
        else:
            self.framing = "close"
        self.keep_alive = (self.request.keep_alive and self.framing != "close"
                           and self.request_done and not self.conn.draining)
        out.append(rewrite.client_response_head(
            response, framing=self.framing, keep_alive=self.keep_alive,
            client_version=self.request.version, policy=self.conn.response_policy))

    def _switch_protocols(self, response: Response, out: list[bytes]) -> None:
        upstream = self.upstream
        if not self.request.websocket or upstream is None:
            self.backend_failed(ProtocolError("unexpected 101 from the backend", 502,
                                              "bad_response"))
            return
        self.status = 101
        self.response = response
        self.response_started = True
        out.append(rewrite.client_response_head(
            response, framing="none", keep_alive=True, client_version=b"1.1",
            policy=self.conn.response_policy))
        self.conn.write(b"".join(out))
        out.clear()
        self.finished = True
        self._stop_timer()
        self.conn.start_tunnel(self, upstream, upstream.parser.upgrade_tail or b"")

    def backend_raw(self, data: bytes) -> None:  # only in tunnel mode, handled by the tunnel
        raise AssertionError("raw data reached an exchange")

    def backend_failed(self, error: ProtocolError) -> None:
        if self.upstream is not None:
            self.backend.protocol_error(self.upstream, error.reason, str(error))
        self.backend.report(self.server_index, "bad_response", self.conn.loop.time())
        # the server did answer, if badly: sending the request again is not safe
        self._upstream_broken(error.reason, 502, retry=False)

    def backend_eof(self) -> None:
        upstream = self.upstream
        if upstream is not None and self.response is not None and upstream.parser.until_close:
            self.backend_events(upstream.parser.feed_eof())
            return
        self._upstream_broken("backend_closed", 502)

    def backend_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._upstream_broken("backend_closed" if exc is None else "backend_reset", 502)

    def backend_pause_writing(self) -> None:
        self.conn.pause_client("backend")

    def backend_resume_writing(self) -> None:
        self.conn.resume_client("backend")

    def server_timeout(self) -> None:
        """The server stayed silent for ``server_timeout``."""
        self._timer = None
        self.backend.counters.inc("timeout", "server")
        self.backend.report(self.server_index, "timeout", self.conn.loop.time())
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
            self.backend.report(self.server_index, "reset", self.conn.loop.time())
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

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.clear()
            self._timer = None

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
            self.backend.wait_ended(self.server_index, self)
            self.backend.released(self.server_index)
        self._stop_timer()

    def fail_local(self, status: int, reason: str, *, retry_after: bool = False) -> None:
        """offload answers itself (no server, timeout, bad gateway)."""
        if self.finished:
            return
        self.status = status
        self.reason = reason
        self.finished = True
        self._stop_timer()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
            self.conn.resume_client("connecting")
        self.conn.exchange_answered(self, status, retry_after=retry_after)

    def _abort(self, reason: str) -> None:
        """The response was already started: all we can do is cut the connection."""
        self.reason = reason
        self.finished = True
        self._stop_timer()
        self.conn.exchange_aborted(self)

    def _finish(self) -> None:
        self.finished = True
        self._stop_timer()
        upstream, self.upstream = self.upstream, None
        response = self.response
        if upstream is not None:
            length = self.request.content_length
            reusable = (response is not None and response.keep_alive and self.request_done
                        and not response.until_close
                        and (length is None or self.bytes_in == length))
            self.backend.wait_ended(self.server_index, self)
            self.backend.released(self.server_index)
            self.backend.release(upstream, reusable, self.conn.loop.time())
        self.conn.exchange_done(self)

    def client_gone(self) -> None:
        """The client disconnected or broke the protocol mid-exchange."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
            self.conn.resume_client("connecting")
        if not self.finished:
            self.finished = True
            self.reason = self.reason or "client_closed"
            self._drop_upstream()
