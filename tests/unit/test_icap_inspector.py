"""The ICAP inspector's decisions (offload.http.icap_inspector), as a script: checks in,
decisions out, with a stand-in scanner that returns a given verdict (the client itself is
tested against a real c-icap in tests/integration/test_icap_client.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from offload.http.gate import Decision, Subject
from offload.http.icap_inspector import (
    IcapInspector,
    IcapSession,
    http_request_head,
    http_response_head,
)
from offload.observe.stats import Counters
from offload.proto.http_types import Request, Response
from offload.proto.icap import Verdict
from offload.security.events import SecurityEvents
from offload.security.icap_config import IcapConfig


class Scanner:
    """Answers every scan with ``verdict`` (after ``delay`` seconds) and records the calls."""

    def __init__(self, verdict: Verdict, delay: float = 0.0) -> None:
        self.verdict = verdict
        self.delay = delay
        self.calls: list[dict[str, Any]] = []
        self.cancelled = 0

    async def scan(self, method: str, http_request: bytes, **kwargs: Any) -> Verdict:
        self.calls.append({"method": method, "http_request": http_request, **kwargs})
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.verdict


def request(method: bytes = b"POST", length: int | None = 10, *, host_field: bool = True,
            chunked: bool = False) -> Request:
    headers = [(b"Host", b"example.test")] if host_field else []
    if length is not None:
        headers.append((b"Content-Length", b"%d" % length))
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    return Request(method, b"/up?x=1", b"1.1", headers, b"example.test", content_length=length,
                   chunked=chunked)


def make(scanner: Scanner, **config: object) -> tuple[IcapInspector, Counters]:
    counters = Counters()
    icap = IcapConfig.model_validate({"url": "icap://127.0.0.1/avscan", "max_size": "1KiB",
                                      **config})
    return IcapInspector(icap, scanner, SecurityEvents(counters), "web"), counters  # type: ignore[arg-type]


def subject(req: Request) -> Subject:
    return Subject("web", "192.0.2.7", 50000, 443, req, b"rid0001")


def session_of(inspector: IcapInspector, req: Request) -> IcapSession:
    session = inspector.begin(subject(req))
    assert session is not None
    return session


async def ask(check: Any, *args: Any) -> Decision:
    """Run one check and wait for its reply."""
    answered: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
    check(*args, answered.set_result)
    return await asyncio.wait_for(answered, 5)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_nothing_to_scan() -> None:
    inspector, _ = make(Scanner(Verdict("clean")))
    assert inspector.begin(subject(request(b"GET", None))) is None
    downloads, _ = make(Scanner(Verdict("clean")), scan=["response-body"])
    session = session_of(downloads, request(b"GET", None))
    assert session.body_limit == 0 and session.wants_response
    assert session.response_body_limit == 1025


def test_clean_upload() -> None:
    scanner = Scanner(Verdict("clean"))
    inspector, counters = make(scanner)
    session = session_of(inspector, request())
    assert session.body_limit == 1025  # one more than max_size: "exactly" vs "larger"

    async def script() -> None:
        assert (await ask(session.request_head)).action == "more"
        assert (await ask(session.request_body, b"0123456789", True)).action == "allow"
    run(script())
    [call] = scanner.calls
    assert call["method"] == "REQMOD" and call["body"] == b"0123456789"
    assert call["http_response"] is None and call["time_limit"] == 10.0
    assert call["extra"] == ((b"X-Client-IP", b"192.0.2.7"),)
    assert counters.get("icap", "web", "upload", "clean") == 1


def test_infected_upload_is_denied_and_reported() -> None:
    inspector, counters = make(Scanner(Verdict("infected", "Eicar-Test")))
    session = session_of(inspector, request())
    decision = run(ask(session.request_body, b"x" * 10, True))
    assert (decision.action, decision.status) == ("deny", 403)
    assert decision.reason == "icap_infected:Eicar-Test"
    assert decision.details == (("signature", "Eicar-Test"),)
    assert counters.get("icap", "web", "upload", "infected") == 1
    assert counters.get("security", "web", "icap_infected", "Eicar-Test") == 1


@pytest.mark.parametrize(("policy", "action", "status"), [("allow", "allow", 0),
                                                          ("deny", "deny", 503)])
def test_errors_follow_on_error(policy: str, action: str, status: int) -> None:
    inspector, counters = make(Scanner(Verdict("error", reason="icap_refused")),
                               on_error=policy)
    decision = run(ask(session_of(inspector, request()).request_body, b"x", True))
    assert (decision.action, decision.status) == (action, status)
    result = "error_allowed" if policy == "allow" else "error_denied"
    assert counters.get("icap", "web", "upload", result) == 1
    assert counters.get("security", "web", "icap_error", "icap_refused") == 1


@pytest.mark.parametrize(("policy", "action", "status"), [("pass", "allow", 0),
                                                          ("deny", "deny", 413)])
def test_oversize_known_from_content_length(policy: str, action: str, status: int) -> None:
    scanner = Scanner(Verdict("clean"))
    inspector, counters = make(scanner, oversize=policy)
    session = session_of(inspector, request(length=1025))
    decision = run(ask(session.request_head))
    assert (decision.action, decision.status) == (action, status)
    result = "oversize_passed" if policy == "pass" else "oversize_denied"
    assert counters.get("icap", "web", "upload", result) == 1
    assert not scanner.calls  # nothing held, nothing sent
    # exactly max_size is scanned
    assert run(ask(session_of(inspector, request(length=1024)).request_head)).action == "more"


def test_oversize_found_while_holding() -> None:
    scanner = Scanner(Verdict("clean"))
    inspector, _ = make(scanner, oversize="deny")
    session = session_of(inspector, request(length=None, chunked=True))
    assert run(ask(session.request_body, b"x" * 1025, False)).status == 413
    assert not scanner.calls
    assert run(ask(session_of(inspector, request(length=None, chunked=True)).request_body,
                   b"x" * 1024, True)).action == "allow"


def test_download_replaced_with_a_page() -> None:
    scanner = Scanner(Verdict("infected", "Win.Test"))
    inspector, counters = make(scanner, scan=["response-body"])
    session = session_of(inspector, request(b"GET", None))
    response = Response(200, b"OK", b"1.1", [(b"Content-Length", b"4")], content_length=4)

    async def script() -> None:
        assert (await ask(session.request_head)).action == "allow"
        assert (await ask(session.response_head, response)).action == "more"
        decision = await ask(session.response_body, b"evil", True)
        assert (decision.action, decision.status) == ("replace", 403)
        assert b"Win.Test" in decision.body and b"rid0001" in decision.body
        assert (b"X-Request-ID", b"rid0001") in decision.headers
        assert decision.reason == "icap_infected:Win.Test"
    run(script())
    [call] = scanner.calls
    assert call["method"] == "RESPMOD"
    assert call["http_response"] == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"
    assert counters.get("icap", "web", "download", "infected") == 1


def test_download_errors_and_bodiless_responses() -> None:
    inspector, _ = make(Scanner(Verdict("error", reason="icap_timeout")),
                        scan=["response-body"])
    session = session_of(inspector, request(b"GET", None))
    head = Response(200, b"OK", b"1.1", [], has_body=False)
    assert run(ask(session.response_head, head)).action == "allow"
    assert run(ask(session.response_body, b"", True)).action == "allow"
    assert run(ask(session.response_body, b"data", True)).status == 502
    big = Response(200, b"OK", b"1.1", [], content_length=5000)
    assert run(ask(session.response_head, big)).action == "allow"  # oversize = "pass"


def test_gate_deadline_and_close_cancel_the_scan() -> None:
    scanner = Scanner(Verdict("clean"), delay=30)
    inspector, counters = make(scanner)

    async def script() -> None:
        session = session_of(inspector, request())
        replies: list[Decision] = []
        session.request_body(b"x", True, replies.append)
        await asyncio.sleep(0)
        decision = session.on_timeout()
        assert (decision.action, decision.status) == ("deny", 503)
        await asyncio.sleep(0)
        assert scanner.cancelled == 1 and not replies
        other = session_of(inspector, request())
        other.request_body(b"x", True, replies.append)
        await asyncio.sleep(0)
        other.close()
        await asyncio.sleep(0)
        assert scanner.cancelled == 2 and not replies
    run(script())
    assert counters.get("security", "web", "icap_error", "icap_timeout") == 1


def test_http_heads_for_the_service() -> None:
    h2_request = request(host_field=False)  # HTTP/2: the authority is no header field
    assert http_request_head(h2_request) == (b"POST /up?x=1 HTTP/1.1\r\nHost: example.test\r\n"
                                             b"Content-Length: 10\r\n\r\n")
    assert http_request_head(request()).count(b"Host:") == 1
    assert http_response_head(Response(404, b"", b"1.1", [(b"A", b"b")])) == (
        b"HTTP/1.1 404 \r\nA: b\r\n\r\n")
