"""Malware scanning through ICAP as an inspector of the inspection gate
(:mod:`offload.http.gate`): uploads go to the service as REQMOD, downloads (if configured) as
RESPMOD, and the verdict becomes the gate's decision.

Theory of operation. For a request with a body (and ``scan`` naming ``request-body``) the
session asks for the body up to ``max_size`` (one byte more, to tell "exactly max_size" from
"larger"); the gate holds it, and the session scans it with the frontend's
:class:`~offload.http.icap_client.IcapClient` in a task of its own. A response is handled the
same way when ``scan`` names ``response-body``. What each outcome becomes::

    verdict / situation        upload (REQMOD)                 download (RESPMOD)
    clean                      allow                           allow
    infected                   403 with the request id         replaced: 403 page naming it
    error (down, slow, bad)    on_error: allow, or 503         on_error: allow, or 502
    larger than max_size       oversize: pass, or 413          oversize: pass, or 502

Every outcome other than a clean scan is counted (``offload_icap_scans``); detections and
errors are also security decisions (counted and logged with the signature name or the reason,
the client, the request id).  A body larger than ``max_size`` is known early when it has a
Content-Length, and is then never held.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from offload.http.gate import ALLOW, MORE, Decision, Reply, Subject, deny, replace
from offload.proto.forwarding import FIELD_VALUE
from offload.proto.http_types import Request, Response
from offload.proto.icap import Method, Verdict

if TYPE_CHECKING:
    from offload.http.icap_client import IcapClient
    from offload.security.events import SecurityEvents
    from offload.security.icap_config import IcapConfig

MAX_LOGGED_PATH = 256
DEADLINE_MARGIN = 0.5
"""The gate's own deadline for a scan comes this much after the client's (which reports the
timeout with its reason); it is only a backstop."""
_OWN_TYPE = (b"Content-Type", b"text/plain; charset=utf-8")
_NO_STORE = (b"Cache-Control", b"no-store")


def http_request_head(request: Request) -> bytes:
    """The request head as HTTP/1.1, for the ICAP service to see (RFC 3507 §4.4)."""
    lines = [b"%b %b HTTP/1.1" % (request.method, request.target)]
    if not any(name.lower() == b"host" for name, _ in request.headers) and request.host:
        lines.append(b"Host: " + request.host)
    lines.extend(name + b": " + value for name, value in request.headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def http_response_head(response: Response) -> bytes:
    lines = [b"HTTP/1.1 %d %b" % (response.status, response.reason or b"")]
    lines.extend(name + b": " + value for name, value in response.headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class IcapInspector:
    """One frontend's ICAP scanning in one worker (the client is shared per service)."""

    name = "icap"

    def __init__(self, config: IcapConfig, client: IcapClient, events: SecurityEvents,
                 frontend: str, request_id_header: bytes = b"X-Request-ID") -> None:
        self.config = config
        self.client = client
        self.events = events
        self.frontend = frontend
        self.request_id_header = request_id_header

    def begin(self, subject: Subject) -> IcapSession | None:
        request = subject.request
        uploads = self.config.uploads and request.has_body
        if not uploads and not self.config.downloads:
            return None
        return IcapSession(self, subject, uploads=uploads)

    # -------------------------------------------------------------- outcomes, counted

    def count(self, direction: str, result: str) -> None:
        self.events.counters.inc("icap", self.frontend, direction, result)

    def report(self, kind: str, cause: str, subject: Subject, direction: str,
               detail: tuple[str, str]) -> None:
        """A detection or an error as a security decision: counted per cause, logged (capped)
        with the client, the request and ``detail`` (the signature, or the policy applied)."""
        request = subject.request
        target = request.target.decode("latin-1")
        if len(target) > MAX_LOGGED_PATH:
            target = target[:MAX_LOGGED_PATH] + "..."
        method = request.method.decode("latin-1")
        rid = subject.request_id.decode("latin-1")
        name, value = detail
        if name == "signature":
            self.events.decision(kind, cause, self.frontend, subject.client,
                                 direction=direction, method=method, path=target,
                                 request_id=rid, signature=value)
        else:
            self.events.decision(kind, cause, self.frontend, subject.client,
                                 direction=direction, method=method, path=target,
                                 request_id=rid, on_error=value)


class IcapSession:
    """The scans of one exchange (at most one upload and one download)."""

    def __init__(self, inspector: IcapInspector, subject: Subject, *, uploads: bool) -> None:
        config = inspector.config
        self.inspector = inspector
        self.subject = subject
        self.uploads = uploads
        self.body_limit = config.max_size + 1 if uploads else 0
        self.wants_response = config.downloads
        self.response_body_limit = config.max_size + 1 if config.downloads else 0
        self.timeout = config.timeout + DEADLINE_MARGIN
        self._direction = "upload"
        self._response: Response | None = None
        self._task: asyncio.Task[Verdict] | None = None
        self._closed = False

    # -------------------------------------------------------------- the gate's checks

    def request_head(self, reply: Reply) -> None:
        if not self.uploads:
            reply(ALLOW)
            return
        length = self.subject.request.content_length
        if length is not None and length > self.inspector.config.max_size:
            reply(self._oversize())
            return
        reply(MORE)

    def request_body(self, prefix: bytes, complete: bool, reply: Reply) -> None:
        self._direction = "upload"
        if not complete or len(prefix) > self.inspector.config.max_size:
            reply(self._oversize())
            return
        self._scan("REQMOD", None, prefix, reply)

    def response_head(self, response: Response, reply: Reply) -> None:
        self._direction = "download"
        self._response = response
        if not response.has_body or response.status < 200:
            reply(ALLOW)
            return
        length = response.content_length
        if length == 0:
            reply(ALLOW)
        elif length is not None and length > self.inspector.config.max_size:
            reply(self._oversize())
        else:
            reply(MORE)

    def response_body(self, prefix: bytes, complete: bool, reply: Reply) -> None:
        self._direction = "download"
        if not complete or len(prefix) > self.inspector.config.max_size:
            reply(self._oversize())
            return
        if not prefix:
            reply(ALLOW)
            return
        self._scan("RESPMOD", self._response, prefix, reply)

    def on_timeout(self) -> Decision:
        self._cancel()
        return self._failed("icap_timeout")

    def close(self) -> None:
        self._closed = True
        self._cancel()

    # -------------------------------------------------------------- scanning

    def _scan(self, method: Method, response: Response | None, body: bytes,
              reply: Reply) -> None:
        inspector = self.inspector
        request_head = http_request_head(self.subject.request)
        response_head = http_response_head(response) if response is not None else None
        extra = ((b"X-Client-IP", self.subject.client.encode("ascii", "replace")),)
        task = asyncio.get_running_loop().create_task(inspector.client.scan(
            method, request_head, http_response=response_head, body=body,
            time_limit=inspector.config.timeout, extra=extra))
        self._task = task

        def done(finished: asyncio.Task[Verdict]) -> None:
            if self._task is finished:
                self._task = None
            if finished.cancelled() or self._closed:
                return
            error = finished.exception()
            verdict = (finished.result() if error is None
                       else Verdict("error", reason="icap_internal_error"))
            reply(self._decide(verdict))

        task.add_done_callback(done)

    def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    def _decide(self, verdict: Verdict) -> Decision:
        inspector = self.inspector
        direction = self._direction
        if verdict.kind == "clean":
            inspector.count(direction, "clean")
            return ALLOW
        if verdict.kind == "error":
            return self._failed(verdict.reason)
        signature = verdict.signature
        inspector.count(direction, "infected")
        inspector.report("icap_infected", signature, self.subject, direction,
                         ("signature", signature))
        reason = f"icap_infected:{signature}"
        details = (("signature", signature),)
        if direction == "upload":
            return deny(403, reason, details)
        return self._block_page(signature, reason)

    def _block_page(self, signature: str, reason: str) -> Decision:
        rid = self.subject.request_id
        body = (f"403 Forbidden: this download was blocked because it contains malware "
                f"({signature}).\nrequest id: {rid.decode('latin-1')}\n").encode()
        headers = [_OWN_TYPE, _NO_STORE]
        if FIELD_VALUE.fullmatch(rid):
            headers.append((self.inspector.request_id_header, rid))
        return replace(403, headers, body, reason)

    def _failed(self, reason: str) -> Decision:
        inspector = self.inspector
        direction = self._direction
        policy = inspector.config.on_error
        inspector.count(direction, f"error_{'allowed' if policy == 'allow' else 'denied'}")
        inspector.report("icap_error", reason, self.subject, direction, ("on_error", policy))
        if policy == "allow":
            return ALLOW
        return deny(503 if direction == "upload" else 502, f"icap_error:{reason}")

    def _oversize(self) -> Decision:
        inspector = self.inspector
        direction = self._direction
        if inspector.config.oversize == "pass":
            inspector.count(direction, "oversize_passed")
            return ALLOW
        inspector.count(direction, "oversize_denied")
        return deny(413 if direction == "upload" else 502, "icap_oversize")


__all__ = ["IcapInspector", "IcapSession", "http_request_head", "http_response_head"]
