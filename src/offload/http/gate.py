"""The inspection gate: what an inspector (rules, a WAF, an ICAP scanner) must offer to hold a
request, or a response, until it has decided, and the per-exchange gate that waits for them.

Theory of operation. A frontend has a list of :class:`Inspector` objects. For each request the
exchange asks every inspector to :meth:`~Inspector.begin` a :class:`Session` (``None``: nothing
to check for this request); the :class:`Gate` then drives the sessions through at most four
checks, each answered through a :data:`Reply` callback, at once (a synchronous inspector) or
later (an engine in a thread pool, a network service)::

    request_head(reply)                       -> allow | deny | replace | more
    request_body(prefix, complete, reply)     only after "more"; prefix: the first
                                                 body_limit bytes (all of it if shorter)
    response_head(response, reply)            only if wants_response
    response_body(prefix, complete, reply)    only if response_body_limit > 0

``allow`` ends a session's say about that side of the exchange; ``deny`` answers the client
with a status of offload's own (the request never reaches a backend; a response never reaches
the client); ``replace`` answers with a response the inspector made (a block page); ``more``
asks for the body prefix. Every check has a deadline (the session's ``timeout`` on the
exchange's clock); a check still unanswered then gets the session's ``on_timeout()``.

The gate is sans-IO: it holds no bytes (the exchange holds the body it has not forwarded, and
pauses reading the client once it holds ``body_limit``, so memory stays bounded), and it calls
back into the exchange with the outcome. Replies must come on the worker's event loop thread
(an inspector working in a thread pool hands its result over with ``call_soon_threadsafe``); a
reply after the gate closed, or a second reply to one check, is ignored. :meth:`Session.close`
is called exactly once per session, when the exchange ends or the gate is done with it, so an
inspector can free its per-request state (a ModSecurity transaction, an ICAP connection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from offload.proto.http_types import Headers, Request, Response

if TYPE_CHECKING:
    from offload.proto.fingerprint import Fingerprints
    from offload.timers import Cancellable, Clock

Action = Literal["allow", "deny", "replace", "more"]


@dataclass(frozen=True, slots=True)
class Decision:
    """One inspector's answer to one check."""

    action: Action
    status: int = 0
    """The status answered on deny (403 unless the inspector says otherwise) or replace."""
    reason: str = ""
    """The access log's reason for a deny or replace (``waf_denied:942100``)."""
    details: tuple[tuple[str, str], ...] = ()
    """What the inspector wants logged with the outcome (rule ids, score, signature)."""
    headers: Headers = field(default_factory=list)
    """The replacement response's header fields (replace only)."""
    body: bytes = b""
    """The replacement response's body (replace only)."""


ALLOW = Decision("allow")
MORE = Decision("more")


def deny(status: int = 403, reason: str = "denied",
         details: tuple[tuple[str, str], ...] = ()) -> Decision:
    return Decision("deny", status, reason, details)


def replace(status: int, headers: Headers, body: bytes, reason: str = "replaced") -> Decision:
    return Decision("replace", status, reason, headers=headers, body=body)


Reply = Callable[[Decision], None]
"""How a check answers (on the worker's loop thread, once)."""


@dataclass(frozen=True, slots=True)
class Subject:
    """What an inspector may know of the request it is asked about."""

    frontend: str
    client: str
    """The client's address (the forwarded one behind a trusted proxy)."""
    client_port: int
    server_port: int
    request: Request
    request_id: bytes
    fingerprints: Fingerprints | None = None


class Session(Protocol):
    """One inspector's view of one exchange (module docstring)."""

    body_limit: int
    """How many request body bytes ``request_body`` wants at most."""
    wants_response: bool
    """Whether ``response_head`` is to be called."""
    response_body_limit: int
    """How many response body bytes ``response_body`` wants (0: never called)."""
    timeout: float
    """Seconds each check may take before ``on_timeout`` decides."""

    def request_head(self, reply: Reply) -> None: ...

    def request_body(self, prefix: bytes, complete: bool, reply: Reply) -> None: ...

    def response_head(self, response: Response, reply: Reply) -> None: ...

    def response_body(self, prefix: bytes, complete: bool, reply: Reply) -> None: ...

    def on_timeout(self) -> Decision:
        """The decision when a check did not answer in time (the ``on_error`` policy)."""

    def close(self) -> None:
        """The exchange is over (or the gate no longer needs this session): free its state."""


class Inspector(Protocol):
    """A frontend's inspector, shared by its connections in one worker."""

    name: str

    def begin(self, subject: Subject) -> Session | None:
        """A session for this request, or ``None`` when there is nothing to check."""


class _Check:
    """One outstanding question to one session."""

    __slots__ = ("answered", "due", "gate", "session")

    def __init__(self, gate: Gate, session: Session, due: float) -> None:
        self.gate = gate
        self.session = session
        self.due = due
        self.answered = False

    def __call__(self, decision: Decision) -> None:
        if self.answered:
            return
        self.answered = True
        self.gate._answered(self, decision)


Outcome = Callable[[Decision], None]
"""What the exchange is told: ``more`` (hold the body prefix, then call :meth:`Gate.body` or
:meth:`Gate.response_data`), then once the phase is decided, allow (go on) or deny/replace."""


class Gate:
    """The inspection of one exchange: asks every session, and tells the exchange once all
    have answered (or the first one refused).

    Request phase: :meth:`start` asks every session about the head; :meth:`body_wanted` says
    how much body to hold; the exchange calls :meth:`body` once it holds that much (or the
    whole body). Response phase: :meth:`response` when the response head arrives (and
    :meth:`response_data` with the body prefix, if a session wants it).
    """

    __slots__ = ("_asked", "_clock", "_closed", "_deadline_handle", "_more", "_outcome",
                 "_pending", "_phase", "_response_body", "_sessions")

    def __init__(self, sessions: list[Session], clock: Clock) -> None:
        self._sessions = sessions
        self._clock = clock
        self._pending: list[_Check] = []
        self._more: list[Session] = []
        """Sessions that asked for the request body (or the response body)."""
        self._outcome: Outcome | None = None
        self._phase = ""
        self._closed = False
        self._deadline_handle: Cancellable | None = None
        self._asked = False
        self._response_body: list[Session] = []

    # ------------------------------------------------------------ request

    @property
    def pending(self) -> bool:
        """A phase is being decided."""
        return self._outcome is not None

    def start(self, outcome: Outcome) -> None:
        """Ask every session about the request head; ``outcome`` is called once."""
        self._phase = "request_head"
        self._outcome = outcome
        self._more = []
        self._ask(self._sessions, lambda session, reply: session.request_head(reply))

    def body_wanted(self) -> int:
        """How many body bytes to hold before :meth:`body` (0: none wanted)."""
        wanted = [session.body_limit for session in self._more]
        if self._phase == "request_head":  # the body may be wanted: collect it meanwhile
            wanted.extend(check.session.body_limit for check in self._pending)
        return max(wanted, default=0)

    @property
    def awaiting_body(self) -> bool:
        """Every head is answered and some sessions wait for the body prefix."""
        return self._phase == "request_body_wait"

    def body(self, prefix: bytes, complete: bool) -> None:
        """The body prefix: the first ``body_wanted()`` bytes, or all of it (``complete``)."""
        assert self._phase == "request_body_wait"
        self._phase = "request_body"
        sessions, self._more = self._more, []
        self._ask(sessions, lambda session, reply: session.request_body(
            prefix[:session.body_limit], complete and len(prefix) <= session.body_limit, reply))

    # ------------------------------------------------------------ response

    def wants_response(self) -> bool:
        return not self._closed and any(s.wants_response for s in self._sessions)

    def response(self, response: Response, outcome: Outcome) -> None:
        """Ask the sessions that want it about the response head."""
        self._phase = "response_head"
        self._outcome = outcome
        self._more = []
        self._ask([s for s in self._sessions if s.wants_response],
                  lambda session, reply: session.response_head(response, reply))

    def response_body_wanted(self) -> int:
        return max((s.response_body_limit for s in self._more), default=0)

    def response_data(self, prefix: bytes, complete: bool) -> None:
        assert self._phase == "response_body_wait"
        self._phase = "response_body"
        sessions, self._more = self._more, []
        self._ask(sessions, lambda session, reply: session.response_body(
            prefix[:session.response_body_limit],
            complete and len(prefix) <= session.response_body_limit, reply))

    @property
    def awaiting_response_body(self) -> bool:
        return self._phase == "response_body_wait"

    # ------------------------------------------------------------ the checks

    def _ask(self, sessions: list[Session], ask: Callable[[Session, Reply], None]) -> None:
        now = self._clock.time()
        checks = [_Check(self, session, now + session.timeout) for session in sessions]
        self._pending = list(checks)
        self._asked = True  # answers given during the loop wait for the loop's end
        try:
            for check in checks:
                if self._outcome is None or self._closed:
                    return  # an earlier session already refused
                ask(check.session, check)
        finally:
            self._asked = False
        if self._outcome is not None and not self._closed:
            if self._pending:
                self._arm()
            else:
                self._phase_done()

    def _arm(self) -> None:
        if self._deadline_handle is None and self._pending:
            due = min(check.due for check in self._pending)
            self._deadline_handle = self._clock.call_at(due, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        if self._closed or self._outcome is None:
            return
        now = self._clock.time()
        for check in [c for c in self._pending if c.due <= now]:
            check(check.session.on_timeout())
            if self._outcome is None:
                return
        self._arm()

    def _answered(self, check: _Check, decision: Decision) -> None:
        if self._closed or check not in self._pending:
            return
        self._pending.remove(check)
        action = decision.action
        if action in ("deny", "replace"):
            self._decide(decision)
            return
        if action == "more" and (self._phase == "request_head"
                                 or check.session.response_body_limit > 0):
            self._more.append(check.session)
        if not self._pending and not self._asked:
            self._phase_done()

    def _phase_done(self) -> None:
        self._cancel_deadline()
        if self._more and self._phase in ("request_head", "response_head"):
            # the exchange calls body() or response_data() once it holds enough
            self._phase = ("request_body_wait" if self._phase == "request_head"
                           else "response_body_wait")
            if self._outcome is not None:
                self._outcome(MORE)
            return
        self._phase = ""
        self._decide(ALLOW)

    def _decide(self, decision: Decision) -> None:
        self._cancel_deadline()
        outcome, self._outcome = self._outcome, None
        self._pending = []
        self._more = []
        self._phase = ""
        if decision.action != "allow":
            self.close()
        if outcome is not None:
            outcome(decision)

    def _cancel_deadline(self) -> None:
        handle, self._deadline_handle = self._deadline_handle, None
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        """The exchange is over: late answers are ignored, every session freed once."""
        if self._closed:
            return
        self._closed = True
        self._outcome = None
        self._pending = []
        self._cancel_deadline()
        for session in self._sessions:
            session.close()


def open_gate(inspectors: tuple[Inspector, ...], subject: Subject, clock: Clock
              ) -> Gate | None:
    """The gate of one exchange, or ``None`` when no inspector has anything to check."""
    sessions = [s for s in (i.begin(subject) for i in inspectors) if s is not None]
    return Gate(sessions, clock) if sessions else None


__all__ = ["ALLOW", "MORE", "Decision", "Gate", "Inspector", "Reply", "Session", "Subject",
           "deny", "open_gate", "replace"]
