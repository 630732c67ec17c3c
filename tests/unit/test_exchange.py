"""The exchange as a script of events in and actions out: a fake client side, a fake backend
pool and a clock moved by hand; no sockets, no sleeps.

Each test feeds what the client and the backend do, and checks what the exchange asked of
each: what it wrote to the backend, what it passed to the client, which server it reported
how, and whether the backend connection went back to the pool.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from offload.errors import BackendTlsError, ProtocolError
from offload.http import exchange as exchange_module
from offload.http import gate
from offload.http.exchange import ClientContext, Exchange
from offload.observe.stats import Counters
from offload.proto.forwarding import ClientFacts, ForwardPolicy
from offload.proto.http_types import Data, EndOfMessage, Request, Response

SERVER_TIMEOUT = 30.0

if not exchange_module.__file__ or not exchange_module.__file__.endswith(".py"):
    pytest.skip("the fakes stand in for compiled (mypyc) classes, which check types at run "
                "time; this logic runs in the pure-Python pass of ./dev test (the same code)",
                allow_module_level=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self._timers: list[tuple[float, int, Callable[[], object], list[bool]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def precise(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> Any:
        cancelled = [False]
        heapq.heappush(self._timers, (when, next(self._order), callback, cancelled))
        return SimpleNamespace(cancel=lambda: cancelled.__setitem__(0, True))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, callback, cancelled = heapq.heappop(self._timers)
            if not cancelled[0]:
                callback()


@dataclass
class FakeUpstream:
    """A backend connection: records what the exchange wrote and did."""

    index: int
    requests: int = 0
    user: Any = None
    private: bool = False
    written: bytearray = field(default_factory=bytearray)
    expected: list[bytes] = field(default_factory=list)
    aborted: bool = False
    closed: bool = False
    paused: bool = False
    ends_with_close: bool = False

    def expect(self, method: bytes) -> None:
        self.expected.append(method)

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True
        self.user = None

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def upgrade_tail(self) -> bytes:
        return b"tail"

    def eof_events(self) -> list[Any]:
        return [EndOfMessage()]


class FakeBackend:
    """The pool of one backend with ``servers`` servers; opening a connection waits until the
    test says how it went."""

    def __init__(self, servers: int = 2) -> None:
        self.name = "app"
        self.config = SimpleNamespace(server_timeout=SERVER_TIMEOUT, proxy_protocol="none")
        self.counters = Counters()
        self.servers = [SimpleNamespace(label=f"s{i}") for i in range(servers)]
        self.order = list(range(servers))
        self.idle: dict[int, FakeUpstream] = {}
        self.opening: list[tuple[int, Callable[..., None], list[bool]]] = []
        self.reports: list[tuple[int, str]] = []
        self.released_to_pool: list[tuple[FakeUpstream, bool]] = []
        self.active = [0] * servers
        self.protocol_errors: list[str] = []
        self.hosts: list[bytes] = []
        self.preambles: list[bytes] = []

    def candidates(self, key: bytes, now: float) -> list[int]:
        return list(self.order)

    def take_idle(self, index: int, host: bytes = b"") -> FakeUpstream | None:
        self.hosts.append(host)
        return self.idle.pop(index, None)

    def open(self, index: int, done: Callable[..., None], host: bytes = b"",
             preamble: bytes = b"") -> Callable[[], None]:
        cancelled = [False]
        self.opening.append((index, done, cancelled))
        self.hosts.append(host)
        self.preambles.append(preamble)
        return lambda: cancelled.__setitem__(0, True)

    def connect_next(self, *, fail: bool = False,
                     error: BaseException | None = None) -> FakeUpstream | None:
        index, done, cancelled = self.opening.pop(0)
        assert not cancelled[0], "the exchange cancelled this connect"
        if fail or error is not None:
            done(index, None, error or ConnectionRefusedError("refused"))
            return None
        upstream = FakeUpstream(index)
        done(index, upstream, None)
        return upstream

    def acquired(self, index: int) -> None:
        self.active[index] += 1

    def released(self, index: int) -> None:
        self.active[index] -= 1

    def report(self, index: int, outcome: str, now: float) -> None:
        self.reports.append((index, outcome))

    def responded(self, index: int, status: int, seconds: float) -> None:
        pass

    def wait_began(self, index: int, request: object, since: float) -> None:
        pass

    def wait_ended(self, index: int, request: object) -> None:
        pass

    def protocol_error(self, connection: FakeUpstream, reason: str, detail: str) -> None:
        self.protocol_errors.append(reason)

    def release(self, connection: FakeUpstream, reusable: bool, now: float) -> None:
        self.released_to_pool.append((connection, reusable))


class FakeDownstream:
    """The client side: records every call as (name, argument)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.paused: set[str] = set()

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args[0] if args else kwargs or None))
        return record

    def pause_request(self, why: str) -> None:
        self.paused.add(why)
        self.calls.append(("pause_request", why))

    def resume_request(self, why: str) -> None:
        self.paused.discard(why)
        self.calls.append(("resume_request", why))

    proxy = b""

    def proxy_header(self) -> bytes:
        return self.proxy

    def names(self) -> list[str]:
        return [name for name, _ in self.calls if name not in ("pause_request",
                                                               "resume_request", "flush")]


def request(method: bytes = b"GET", target: bytes = b"/", **options: Any) -> Request:
    return Request(method=method, target=target, version=b"1.1",
                   headers=[(b"Host", b"example.test")], host=b"example.test", **options)


def ok(body: bytes = b"hello", **options: Any) -> Response:
    return Response(status=200, reason=b"OK", version=b"1.1",
                    headers=[(b"Content-Length", b"%d" % len(body))],
                    content_length=len(body), **options)


class Script:
    """One exchange with its fakes."""

    def __init__(self, req: Request, servers: int = 2) -> None:
        self.clock = FakeClock()
        self.backend = FakeBackend(servers)
        self.downstream = FakeDownstream()
        site = SimpleNamespace(
            clock=self.clock, backend=self.backend, forward_policy=ForwardPolicy(),
            inspectors=(), banned=None, security=None, name="web")
        client = ClientContext(ClientFacts("192.0.2.7", 50000, 443), trusted=False)
        self.exchange = Exchange(self.downstream, site, client, req, b"rid-1")  # type: ignore[arg-type]

    def respond(self, upstream: FakeUpstream, *events: Any) -> None:
        self.exchange.backend_events(list(events))


def test_a_get_is_sent_answered_and_its_connection_pooled():
    script = Script(request())
    script.exchange.start()
    assert script.downstream.paused == {"connecting"}
    upstream = script.backend.connect_next()
    assert upstream is not None and script.downstream.paused == set()
    assert upstream.written.startswith(b"GET / HTTP/1.1\r\nHost: example.test\r\n")
    assert b"X-Request-ID: rid-1\r\n" in upstream.written
    assert upstream.expected == [b"GET"]
    script.exchange.request_end([])
    script.respond(upstream, ok(), Data(b"hello"), EndOfMessage())
    assert script.downstream.names() == ["send_head", "send_data", "send_end", "exchange_done"]
    assert script.backend.released_to_pool == [(upstream, True)]
    assert script.backend.reports == [(0, "ok")]
    assert script.backend.active == [0, 0]


def test_a_connect_failure_moves_to_the_next_server():
    script = Script(request())
    script.exchange.start()
    script.backend.connect_next(fail=True)
    assert script.backend.reports == [(0, "connect_failed")]
    assert [index for index, _, _ in script.backend.opening] == [1]
    upstream = script.backend.connect_next()
    assert upstream is not None and upstream.index == 1


def test_the_request_host_chooses_the_connection_and_a_proxy_header_goes_first():
    # over TLS the host is the SNI: the backend picks a pooled connection or opens one by it;
    # a PROXY header is handed to open(), to be sent before any TLS byte
    script = Script(request())
    script.downstream.proxy = b"PROXY TCP4 192.0.2.7 192.0.2.1 50000 443\r\n"
    script.exchange.start()
    assert script.backend.hosts == [b"example.test", b"example.test"]
    assert script.backend.preambles == [script.downstream.proxy]
    upstream = script.backend.connect_next()
    assert upstream is not None and upstream.written.startswith(b"GET / HTTP/1.1\r\n")


def _tls_error(reason: str, *, client_named: bool) -> BackendTlsError:
    error = BackendTlsError(reason, "OpenSSL's words")
    error.client_named = client_named
    return error


def test_a_certificate_refused_for_the_clients_host_is_a_502_at_once():
    # the SNI came from the client's Host: no other server is tried (a client must not make
    # offload handshake with every server for one bad name)
    script = Script(request(), servers=3)
    script.exchange.start()
    script.backend.connect_next(error=_tls_error("name_mismatch", client_named=True))
    assert script.downstream.calls[-1] == ("answer", 502)
    assert script.exchange.reason == "backend_tls"
    assert script.backend.opening == []
    assert script.backend.reports == [], "the backend itself reports what it holds against whom"


def test_a_server_with_a_bad_certificate_is_skipped_and_the_last_one_is_a_502():
    script = Script(request(), servers=2)
    script.exchange.start()
    script.backend.connect_next(error=_tls_error("expired", client_named=False))
    assert [index for index, _, _ in script.backend.opening] == [1]
    script.backend.connect_next(error=_tls_error("unknown_ca", client_named=False))
    assert script.downstream.calls[-1] == ("answer", 502)
    assert script.exchange.reason == "backend_tls"


def test_every_server_failing_to_connect_is_a_503_with_retry_after():
    script = Script(request(), servers=2)
    script.exchange.start()
    script.backend.connect_next(fail=True)
    script.backend.connect_next(fail=True)
    assert script.downstream.calls[-1] == ("answer", 503)
    assert script.exchange.reason == "no_server_answered"


def test_a_stale_pooled_connection_is_retried_once_fresh_without_blaming_the_server():
    script = Script(request())
    stale = FakeUpstream(0, requests=4)
    script.backend.idle[0] = stale
    script.exchange.start()
    assert stale.written.startswith(b"GET / ")
    script.exchange.request_end([])
    script.exchange.backend_lost(None)  # the server had closed it while it was idle
    assert stale.aborted
    assert [index for index, _, _ in script.backend.opening] == [0], "the same server, fresh"
    assert script.backend.reports == []
    fresh = script.backend.connect_next()
    assert fresh is not None
    script.respond(fresh, ok(b""), EndOfMessage())
    assert script.downstream.names() == ["send_head", "send_end", "exchange_done"]


@pytest.mark.parametrize(("method", "body"), [(b"POST", True), (b"PUT", True), (b"POST", False)])
def test_a_request_that_may_not_be_repeated_gets_502_when_the_backend_resets(method, body):
    options = {"content_length": 5} if body else {}
    script = Script(request(method, **options))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    if body:
        script.exchange.request_data(b"12345")
    script.exchange.request_end([])
    script.exchange.backend_lost(ConnectionResetError())
    assert script.backend.opening == [], "never sent twice"
    assert script.downstream.calls[-1] == ("answer", 502)
    assert script.backend.reports == [(0, "reset")]


def test_interim_responses_pass_before_the_final_one():
    script = Script(request(b"POST", content_length=2, expect_continue=True))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None and b"Expect: 100-continue\r\n" in upstream.written
    script.respond(upstream, Response(status=100, reason=b"Continue", version=b"1.1",
                                      headers=[], has_body=False))
    script.exchange.request_data(b"ok")
    script.exchange.request_end([])
    script.respond(upstream, Response(status=103, reason=b"Early Hints", version=b"1.1",
                                      headers=[(b"Link", b"</a.css>")], has_body=False),
                   ok(b"x"), Data(b"x"), EndOfMessage())
    assert script.downstream.names() == ["send_interim", "send_interim", "send_head",
                                         "send_data", "send_end", "exchange_done"]
    assert [r.status for name, r in script.downstream.calls if name == "send_interim"] == [100, 103]
    assert upstream.written.endswith(b"ok")


def test_head_answer_has_no_body_and_pools_the_connection():
    script = Script(request(b"HEAD"))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None and upstream.expected == [b"HEAD"]
    script.exchange.request_end([])
    script.respond(upstream, ok(b"12345", has_body=False), EndOfMessage())
    assert script.downstream.names() == ["send_head", "send_end", "exchange_done"]
    assert script.backend.released_to_pool == [(upstream, True)]


def test_a_client_gone_mid_upload_drops_the_backend_connection():
    script = Script(request(b"POST", chunked=True))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.request_data(b"part")
    assert upstream.written.endswith(b"4\r\npart\r\n")
    script.exchange.client_gone()
    assert upstream.aborted and script.backend.active == [0, 0]
    assert script.backend.released_to_pool == []
    assert script.exchange.finished and script.exchange.reason == "client_closed"
    script.exchange.backend_lost(None)  # the abort's echo changes nothing
    assert script.downstream.names() == []


def test_a_client_gone_while_connecting_cancels_the_connect():
    script = Script(request())
    script.exchange.start()
    script.exchange.client_gone()
    _, _, cancelled = script.backend.opening[0]
    assert cancelled[0]
    assert script.downstream.paused == set()


def test_a_backend_reset_mid_body_cuts_the_response():
    script = Script(request())
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.request_end([])
    script.respond(upstream, ok(b"0123456789"), Data(b"01234"))
    script.exchange.backend_lost(ConnectionResetError())
    assert script.downstream.names() == ["send_head", "send_data", "abort"]
    assert script.exchange.reason == "backend_reset"
    assert script.backend.released_to_pool == [], "never pooled"


def test_a_malformed_answer_is_a_502_and_never_retried():
    script = Script(request())
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.backend_failed(ProtocolError("bad", 502, "parse_error"))
    assert script.downstream.calls[-1] == ("answer", 502)
    assert script.backend.protocol_errors == ["parse_error"]
    assert script.backend.reports == [(0, "bad_response")]
    assert script.backend.opening == []


def test_the_server_timeout_is_504_before_the_head_and_a_cut_after():
    script = Script(request())
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.request_end([])
    script.clock.advance(SERVER_TIMEOUT - 1)
    assert script.downstream.names() == []
    script.clock.advance(2)
    assert script.downstream.calls[-1] == ("answer", 504)
    assert upstream.aborted and script.backend.reports == [(0, "timeout")]

    script = Script(request())
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.respond(upstream, ok(b"0123456789"), Data(b"0"))
    script.clock.advance(SERVER_TIMEOUT - 1)
    script.respond(upstream, Data(b"1"))  # each event moves the deadline
    script.clock.advance(SERVER_TIMEOUT - 1)
    assert "abort" not in script.downstream.names()
    script.clock.advance(2)
    assert script.downstream.names()[-1] == "abort"


def test_a_client_that_does_not_read_stops_the_backend_and_its_clock():
    script = Script(request())
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.respond(upstream, ok(b"0123456789"), Data(b"0"))
    script.exchange.client_paused()
    assert upstream.paused
    script.clock.advance(SERVER_TIMEOUT * 3)  # the backend waits for the client: no timeout
    assert "abort" not in script.downstream.names()
    script.exchange.client_resumed()
    assert not upstream.paused
    script.clock.advance(SERVER_TIMEOUT + 1)
    assert script.downstream.names()[-1] == "abort"


def test_a_websocket_is_handed_over_as_a_tunnel():
    script = Script(request(websocket=True))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    assert b"Connection: Upgrade\r\nUpgrade: websocket\r\n" in upstream.written
    script.respond(upstream, Response(status=101, reason=b"Switching Protocols",
                                      version=b"1.1", headers=[(b"Upgrade", b"websocket")],
                                      has_body=False))
    assert script.downstream.names() == ["send_interim", "start_tunnel"]
    assert script.downstream.calls[-1] == ("start_tunnel", upstream)
    assert script.exchange.finished and script.exchange.status == 101


def test_a_101_to_a_plain_request_is_a_bad_answer():
    script = Script(request())
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.respond(upstream, Response(status=101, reason=b"Switching Protocols",
                                      version=b"1.1", headers=[], has_body=False))
    assert script.downstream.calls[-1] == ("answer", 502)
    assert script.backend.protocol_errors == ["bad_response"]


def test_no_server_at_all_is_a_503():
    script = Script(request())
    script.backend.order = []
    script.exchange.start()
    assert script.downstream.calls == [("answer", 503)]
    assert script.exchange.reason == "no_server"


def test_a_response_that_ends_before_the_request_body_never_pools_the_connection():
    script = Script(request(b"POST", content_length=10))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.request_data(b"01234")
    script.respond(upstream, ok(b"early"), Data(b"early"), EndOfMessage())
    assert script.backend.released_to_pool == [(upstream, False)]


def test_an_empty_piece_of_body_is_not_an_end_of_chunks():
    """HTTP/2 clients may send empty DATA frames; chunked towards the backend, an empty chunk
    would be the last one and the real end a second request."""
    script = Script(request(b"POST", chunked=True))
    script.exchange.start()
    upstream = script.backend.connect_next()
    assert upstream is not None
    head_end = len(upstream.written)
    script.exchange.request_data(b"")
    script.exchange.request_data(b"ab")
    script.exchange.request_data(b"")
    script.exchange.request_end([])
    assert bytes(upstream.written[head_end:]) == b"2\r\nab\r\n0\r\n\r\n"


# ------------------------------------------------------------ the inspection gate


class FakeSession:
    """An inspector's session that answers when the test says (``None``: at once with
    ``auto``); records what it was asked."""

    def __init__(self, *, body_limit: int = 0, wants_response: bool = False,
                 auto: Any = None, timeout: float = 5.0, on_timeout: Any = None) -> None:
        self.body_limit = body_limit
        self.wants_response = wants_response
        self.response_body_limit = 0
        self.timeout = timeout
        self.auto = auto
        self.timeout_decision = on_timeout or gate.deny(503, "inspector_timeout")
        self.asked: list[tuple[str, Any]] = []
        self.replies: list[Callable[[gate.Decision], None]] = []
        self.closed = 0

    def _ask(self, what: str, argument: Any, reply: Callable[[gate.Decision], None]) -> None:
        self.asked.append((what, argument))
        if self.auto is not None:
            reply(self.auto)
        else:
            self.replies.append(reply)

    def request_head(self, reply: Callable[[gate.Decision], None]) -> None:
        self._ask("head", None, reply)

    def request_body(self, prefix: bytes, complete: bool,
                     reply: Callable[[gate.Decision], None]) -> None:
        self._ask("body", (prefix, complete), reply)

    def response_head(self, response: Response, reply: Callable[[gate.Decision], None]) -> None:
        self._ask("response", response.status, reply)

    def response_body(self, prefix: bytes, complete: bool,
                      reply: Callable[[gate.Decision], None]) -> None:
        self._ask("response_body", (prefix, complete), reply)

    def on_timeout(self) -> gate.Decision:
        return self.timeout_decision

    def close(self) -> None:
        self.closed += 1

    def answer(self, decision: gate.Decision) -> None:
        self.replies.pop(0)(decision)


class FakeInspector:
    name = "fake"

    def __init__(self, session: FakeSession | None) -> None:
        self.session = session
        self.subjects: list[gate.Subject] = []

    def begin(self, subject: gate.Subject) -> FakeSession | None:
        self.subjects.append(subject)
        return self.session


def gated(req: Request, *sessions: FakeSession) -> Script:
    script = Script(req)
    script.exchange.site.inspectors = tuple(FakeInspector(s) for s in sessions)
    return script


def test_a_request_is_held_until_the_inspector_answers_and_a_deny_never_reaches_a_backend():
    session = FakeSession()
    script = gated(request(b"GET", b"/?id=1%27%20or%201=1"), session)
    script.exchange.start()
    assert session.asked == [("head", None)]
    assert script.backend.opening == [], "nothing is sent before the inspector decided"
    assert "inspection" in script.downstream.paused
    session.answer(gate.deny(403, "waf_denied:942100"))
    assert script.backend.opening == [] and script.backend.idle == {}
    assert script.downstream.calls[-1] == ("answer", 403)
    assert script.exchange.reason == "waf_denied:942100"
    assert session.closed == 1
    assert script.downstream.paused == set()


def test_the_deny_answer_carries_the_request_id():
    session = FakeSession(auto=gate.deny(403, "waf_denied:1"))
    script = gated(request(), session)
    answers: list[Any] = []
    script.downstream.answer = lambda status, **kw: answers.append((status, kw))  # type: ignore[method-assign]
    script.exchange.start()
    assert answers == [(403, {"retry_after": False, "extra": ((b"X-Request-ID", b"rid-1"),),
                              "detail": "request id: rid-1"})]


def test_an_allowed_request_goes_on_and_the_subject_names_the_client():
    session = FakeSession()
    inspector = FakeInspector(session)
    script = Script(request())
    script.exchange.site.inspectors = (inspector,)
    script.exchange.start()
    subject = inspector.subjects[0]
    assert (subject.client, subject.client_port, subject.request_id) == ("192.0.2.7", 50000,
                                                                          b"rid-1")
    session.answer(gate.ALLOW)
    upstream = script.backend.connect_next()
    assert upstream is not None and upstream.written.startswith(b"GET / HTTP/1.1\r\n")
    assert session.closed == 1, "no response inspection: the session is freed at once"


def test_the_body_prefix_is_held_reading_pauses_at_the_limit_and_all_of_it_is_sent_after():
    session = FakeSession(body_limit=4)
    script = gated(request(b"POST", content_length=10), session)
    script.exchange.start()
    assert "inspection" not in script.downstream.paused, "the body is read while the head waits"
    script.exchange.request_data(b"12")
    assert "inspection" not in script.downstream.paused
    script.exchange.request_data(b"3456")
    assert "inspection" in script.downstream.paused, "the prefix is held: reading stops"
    session.answer(gate.MORE)
    assert session.asked[-1] == ("body", (b"1234", False))
    assert script.backend.opening == []
    session.answer(gate.ALLOW)
    assert "inspection" not in script.downstream.paused
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.request_data(b"7890")
    script.exchange.request_end([])
    assert upstream.written.endswith(b"\r\n\r\n1234567890")


def test_a_body_shorter_than_the_limit_is_inspected_whole_at_its_end():
    session = FakeSession(body_limit=100)
    script = gated(request(b"POST", content_length=5), session)
    script.exchange.start()
    session.answer(gate.MORE)
    script.exchange.request_data(b"a=1&b")
    assert len(session.asked) == 1
    script.exchange.request_end([])
    assert session.asked[-1] == ("body", (b"a=1&b", True))
    session.answer(gate.deny(403, "waf_denied:941100"))
    assert script.downstream.calls[-1] == ("answer", 403)
    assert script.backend.opening == []


def test_a_request_without_body_still_gets_its_body_phase():
    # ModSecurity's CRS decides on the query string in phase 2: "more" on a GET is answered
    # at once with an empty, complete body
    session = FakeSession(body_limit=100)
    script = gated(request(), session)
    script.exchange.start()
    session.answer(gate.MORE)
    assert session.asked[-1] == ("body", (b"", True))


def test_expect_continue_waits_for_the_head_decision():
    session = FakeSession(body_limit=10)
    script = gated(request(b"POST", content_length=3, expect_continue=True), session)
    script.exchange.start()
    assert "send_continue" not in script.downstream.names(), "a refused head needs no body"
    session.answer(gate.MORE)
    assert script.downstream.names() == ["send_continue"]
    script.exchange.request_data(b"abc")
    script.exchange.request_end([])
    session.answer(gate.ALLOW)
    upstream = script.backend.connect_next()
    assert upstream is not None and b"Expect" not in upstream.written


def test_an_inspector_that_does_not_answer_in_time_gets_its_timeout_policy():
    session = FakeSession(timeout=2.0)
    script = gated(request(), session)
    script.exchange.start()
    script.clock.advance(1.5)
    assert script.downstream.names() == []
    script.clock.advance(1.0)
    assert script.downstream.calls[-1] == ("answer", 503)
    assert script.exchange.reason == "inspector_timeout"
    session.answer(gate.ALLOW)  # too late: ignored
    assert script.backend.opening == []

    allowing = FakeSession(timeout=2.0, on_timeout=gate.ALLOW)
    script = gated(request(), allowing)
    script.exchange.start()
    script.clock.advance(3)
    assert script.backend.opening, "on_timeout allow: the request goes on"


def test_every_inspector_must_answer_and_the_first_refusal_decides():
    first, second = FakeSession(), FakeSession()
    script = gated(request(), first, second)
    script.exchange.start()
    first.answer(gate.ALLOW)
    assert script.backend.opening == []
    second.answer(gate.deny(403, "icap:Eicar"))
    assert script.downstream.calls[-1] == ("answer", 403)
    assert (first.closed, second.closed) == (1, 1)

    sync_deny = FakeSession(auto=gate.deny(403, "rule_denied:x"))
    late = FakeSession()
    script = gated(request(), sync_deny, late)
    script.exchange.start()
    assert late.asked == [], "once refused, the others are not asked"


def test_a_client_gone_while_inspecting_frees_the_sessions_and_late_answers_do_nothing():
    session = FakeSession()
    script = gated(request(), session)
    script.exchange.start()
    script.exchange.client_gone()
    assert session.closed == 1
    session.answer(gate.ALLOW)
    assert script.backend.opening == [] and script.downstream.names() == []


def test_the_response_head_is_held_until_the_inspector_allows_it():
    session = FakeSession(wants_response=True, auto=None)
    script = gated(request(), session)
    script.exchange.start()
    session.answer(gate.ALLOW)
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.exchange.request_end([])
    script.respond(upstream, ok(b"hello"), Data(b"hel"))
    assert session.asked[-1] == ("response", 200)
    assert script.downstream.names() == [] and upstream.paused
    script.respond(upstream, Data(b"lo"), EndOfMessage())  # already in flight
    session.answer(gate.ALLOW)
    assert not upstream.paused
    assert script.downstream.names() == ["send_head", "send_data", "send_data", "send_end",
                                         "exchange_done"]
    assert script.backend.released_to_pool == [(upstream, True)]
    assert session.closed == 1


def test_a_refused_response_never_reaches_the_client():
    session = FakeSession(wants_response=True)
    script = gated(request(), session)
    script.exchange.start()
    session.answer(gate.ALLOW)
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.respond(upstream, ok(b"secret"), Data(b"secret"), EndOfMessage())
    session.answer(gate.deny(502, "waf_response_denied:950100"))
    assert script.downstream.names() == ["answer"]
    assert script.downstream.calls[-1] == ("answer", 502)
    assert upstream.aborted and script.backend.released_to_pool == []


def test_a_response_can_be_replaced_after_its_body_prefix_was_seen():
    session = FakeSession(wants_response=True)
    session.response_body_limit = 4
    script = gated(request(), session)
    script.exchange.start()
    session.answer(gate.ALLOW)
    upstream = script.backend.connect_next()
    assert upstream is not None
    script.respond(upstream, ok(b"EICAR-virus"), Data(b"EIC"))
    session.answer(gate.MORE)
    assert not upstream.paused
    script.respond(upstream, Data(b"AR-virus"))
    assert session.asked[-1] == ("response_body", (b"EICA", False))
    assert upstream.paused
    session.answer(gate.replace(403, [(b"Content-Type", b"text/plain")], b"blocked\n",
                                "icap_replaced"))
    assert script.downstream.names() == ["send_head", "send_data", "send_end", "exchange_done"]
    sent = [(name, value) for name, value in script.downstream.calls if name.startswith("send")]
    head = sent[0][1]
    assert head.status == 403
    assert (b"Content-Length", b"8") in head.headers
    assert sent[1] == ("send_data", b"blocked\n")
    assert upstream.aborted
