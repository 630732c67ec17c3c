"""The one error hierarchy of offload.

Library and OS exceptions are translated into these at one boundary each (config loading,
certificate loading, socket binding), so the CLI can print a clear message and the running
code can decide what to do (for example whether a retry on another server is safe).
"""

from __future__ import annotations

from dataclasses import dataclass


class OffloadError(Exception):
    """Base of every error offload raises on purpose."""


@dataclass(frozen=True)
class Issue:
    """One problem found in a configuration: where, what, and how to fix it."""

    where: str
    """The key path (``frontends[0].certificates[1]``) or command-line flag."""
    what: str
    fix: str = ""

    def render(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class ConfigError(OffloadError):
    """The configuration (file or flags) cannot be used; carries every issue found."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.issues)
        head = f"{self.source}: {count} error{'s' if count != 1 else ''}"
        return "\n".join([head, *("  " + issue.render().replace("\n", "\n  ") for issue in self.issues)])


class StartError(OffloadError):
    """offload could not start (an address in use, a port it may not bind): one line that
    names the key, the problem and the fix, for the terminal."""

    def __init__(self, source: str, issue: Issue) -> None:
        self.source = source
        self.issue = issue
        where = f"{issue.where}: " if issue.where else ""
        super().__init__(f"{source}: {where}{issue.what}; fix: {issue.fix}")


class CertificateError(OffloadError):
    """A certificate or key file cannot be served; the message names the file and the reason."""

    def __init__(self, path: str, reason: str, fix: str = "") -> None:
        self.path = path
        self.reason = reason
        self.fix = fix
        super().__init__(f"{path}: {reason}")


class ProtocolError(OffloadError):
    """A peer broke a protocol's rules; ``status`` is the HTTP status to answer with and
    ``reason`` a short, low-cardinality name for logs and counters."""

    def __init__(self, message: str, status: int = 400, reason: str = "protocol_error") -> None:
        self.status = status
        self.reason = reason
        self.before: list[object] = []
        """What a parser had decoded from the same input before the error (complete requests
        pipelined ahead of a bad one still deserve their answers)."""
        super().__init__(message)


class UpstreamError(OffloadError):
    """A backend could not be used; ``retryable`` says whether another server may be tried."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)


class BackendTlsError(UpstreamError):
    """The TLS handshake with a backend server failed. ``reason`` names the check that failed
    (``expired``, ``unknown_ca``, ``name_mismatch``, ``client_certificate_refused`` ..., see
    :func:`offload.tls.backend_tls.classify_failure`); ``detail`` is OpenSSL's own words, for
    the log only: a client is never told more than 502."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        self.client_named = False
        """The SNI came from the client (its Host, or its own SNI): the failure may be the
        client's doing, so it is not held against the server and no other server is tried."""
        super().__init__(f"{reason}: {detail}", retryable=True)
