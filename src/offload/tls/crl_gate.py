"""Revocation by fetched CRLs: the check between a finished handshake and the application.

OpenSSL has verified the client's certificate during the handshake. When the frontend fetches
CRLs (``client_crl_fetch``), :class:`RevocationGate` then decides with the worker's
:class:`~offload.tls.crl_cache.CrlCache`: a cached answer lets the connection through (or closes
it) at once; otherwise the stream is held, reading paused so its first bytes wait, still
encrypted, in the TLS stream, while :class:`CrlFetcher` fetches the CRL (one fetch per URL at a
time, whoever waits for it), for at most ``client_crl_timeout``. A revoked certificate closes
the connection; an unavailable CRL closes it under ``hard-fail`` and lets it in, logged, under
``soft-fail``. Only then is the application (HTTP or TCP relay) created.

The CRL is fetched with a minimal HTTP/1.1 GET (RFC 5280 §4.2.1.13: http URLs, DER body): no
redirects, no proxy, bounded in time and size, parsed by offload's own response parser. The
CRL's checks (signature, times: :func:`~offload.tls.crl_cache.check_crl`) run in a thread, so a
large CRL does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from cryptography import x509

from offload.config.model import FrontendConfig
from offload.errors import ProtocolError
from offload.observe.log import fields
from offload.observe.stats import Counters
from offload.proto.http1 import HttpLimits, ResponseParser
from offload.proto.http_types import Data, EndOfMessage, Response
from offload.security.events import SecurityEvents
from offload.tls.ca_bundle import CaBundle
from offload.tls.crl_cache import (
    FETCH,
    GOOD,
    REVOKED,
    UNAVAILABLE,
    UNCHECKED,
    CheckedCrl,
    ClientCert,
    CrlCache,
    CrlInvalid,
    Decision,
    FetchPolicy,
    check_crl,
    distribution_points,
)
from offload.tls.policy import ClientAuth
from offload.tls.stream import TLSServerStream

_log = logging.getLogger("offload.crl")

READ_SIZE = 64 * 1024
USER_AGENT = b"offload-crl-fetch"


class FetchError(Exception):
    """A CRL could not be fetched; ``reason`` is short, for counters and logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _request(url: str) -> tuple[str, int, bytes]:
    """(host, port, request bytes) for an http:// URL; FetchError("bad_url") otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError as error:
        raise FetchError("bad_url", str(error)) from None
    host = parts.hostname
    if parts.scheme.lower() != "http" or not host or "@" in parts.netloc:
        raise FetchError("bad_url", url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Accept: application/pkix-crl, */*\r\nConnection: close\r\n").encode("ascii")
    return host, port, head + b"User-Agent: " + USER_AGENT + b"\r\n\r\n"


async def http_get(url: str, max_size: int) -> bytes:
    """The body of a 200 answer to GET ``url``; the caller bounds the time."""
    host, port, request = _request(url)
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        raise FetchError("connect_failed", str(error)) from None
    try:
        writer.write(request)
        parser = ResponseParser(HttpLimits(max_body_size=max_size))
        parser.expect(b"GET")
        body = bytearray()
        status = 0
        while True:
            data = await reader.read(READ_SIZE)
            events = parser.feed(data) if data else parser.feed_eof()
            for event in events:
                if isinstance(event, Response):
                    status = event.status
                    if status != 200:
                        raise FetchError(f"http_{status}" if 100 <= status < 600 else "bad_answer")
                    if event.content_length is not None and event.content_length > max_size:
                        raise FetchError("too_large", f"{event.content_length} bytes")
                elif isinstance(event, Data):
                    body += event.data
                elif isinstance(event, EndOfMessage) and status == 200:
                    return bytes(body)
            if not data:
                raise FetchError("bad_answer", "connection closed early")
    except ProtocolError as error:
        reason = "too_large" if error.reason == "body_too_large" else "bad_answer"
        raise FetchError(reason, str(error)) from None
    except OSError as error:
        raise FetchError("connection_lost", str(error)) from None
    finally:
        writer.close()


class CrlFetcher:
    """The CRL fetches of one worker: one at a time per URL, results into the shared cache."""

    def __init__(self, counters: Counters, clock: Callable[[], float] = time.time) -> None:
        self.cache = CrlCache()
        self.clock = clock
        self._counters = counters
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def fetch(self, url: str, issuer: x509.Certificate, policy: FetchPolicy
              ) -> asyncio.Task[None]:
        """The fetch of ``url`` in flight, started now if there is none."""
        task = self._tasks.get(url)
        if task is None:
            self.cache.started(url)
            task = asyncio.get_running_loop().create_task(self._fetch(url, issuer, policy))
            self._tasks[url] = task
            task.add_done_callback(lambda _: self._tasks.pop(url, None))
        return task

    async def _fetch(self, url: str, issuer: x509.Certificate, policy: FetchPolicy) -> None:
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(policy.timeout):
                    body = await http_get(url, policy.max_size)
            except TimeoutError:
                raise FetchError("timeout", f"no answer within {policy.timeout:g}s") from None
            crl = await asyncio.to_thread(check_crl, body, url, issuer, self.clock())
        except (FetchError, CrlInvalid) as error:
            self._failed(url, error.reason, str(error))
            return
        except asyncio.CancelledError:
            self.cache.failed(url, "cancelled", self.clock())
            raise
        except Exception as error:  # a waiting connection must get an answer whatever broke
            _log.exception("CRL fetch broke", extra=fields(url=url))
            self._failed(url, "error", repr(error))
            return
        refused = self.cache.succeeded(url, crl, self.clock())
        if refused:
            self._failed(url, refused, "a CRL older than the one held")
            return
        self._counters.inc("crl_fetch", "ok")
        _log.info("CRL fetched", extra=fields(
            url=url, revoked=len(crl.revoked), seconds=round(time.monotonic() - started, 3),
            next_update=_when(crl)))

    def _failed(self, url: str, reason: str, detail: str) -> None:
        self.cache.failed(url, reason, self.clock())
        self._counters.inc("crl_fetch", reason)
        _log.warning("CRL fetch failed", extra=fields(url=url, reason=reason, detail=detail))

    async def stop(self) -> None:
        """Stop every fetch (the worker is stopping)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _when(crl: CheckedCrl) -> str | None:
    if crl.next_update is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(crl.next_update))


def fetch_policy(frontend: FrontendConfig) -> FetchPolicy:
    return FetchPolicy(hard_fail=frontend.client_crl_failure == "hard-fail",
                       timeout=frontend.client_crl_timeout,
                       max_size=frontend.client_crl_max_size,
                       refresh=frontend.client_crl_refresh, retry=frontend.client_crl_retry)


AppFactory = Callable[[TLSServerStream], asyncio.Protocol]


class RevocationGate:
    """One frontend's fetched-CRL check, run on each stream before its application exists."""

    def __init__(self, frontend: str, authorities: CaBundle, policy: FetchPolicy,
                 fetcher: CrlFetcher, events: SecurityEvents) -> None:
        self.frontend = frontend
        self.authorities = authorities
        self.policy = policy
        self.fetcher = fetcher
        self.events = events

    @classmethod
    def of(cls, frontend: FrontendConfig, client_auth: ClientAuth | None, fetcher: CrlFetcher,
           events: SecurityEvents) -> RevocationGate | None:
        """The gate of a frontend that fetches CRLs, else None."""
        if not frontend.client_crl_fetch or client_auth is None:
            return None
        return cls(frontend.name, client_auth.authorities, fetch_policy(frontend), fetcher, events)

    def open(self, stream: TLSServerStream, factory: AppFactory) -> asyncio.Protocol:
        """The protocol for a stream whose handshake just finished: the application itself
        when the answer is known now, else a holder that waits for the CRL."""
        der = stream.peer_certificate
        if der is None:
            return factory(stream)  # optional client_auth, no certificate
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:  # OpenSSL took it, cryptography's stricter parser did not
            return self.settle(Decision(UNAVAILABLE, "unreadable_certificate"), stream, factory)
        issuer = self.authorities.issuer_of(certificate, hashlib.sha256(der).digest())
        cert = ClientCert(
            certificate.serial_number, certificate.issuer.public_bytes(),
            None if issuer is None else self.authorities.signers[issuer],
            distribution_points(certificate))
        decision = self.decide(cert, issuer)
        if decision.verdict == FETCH:
            assert issuer is not None
            return _Held(self, stream, factory, cert, self.authorities.certificates[issuer])
        return self.settle(decision, stream, factory)

    def decide(self, cert: ClientCert, issuer: int | None) -> Decision:
        """Ask the cache; start a background refresh when it says so."""
        decision = self.fetcher.cache.decide(cert, self.policy, self.fetcher.clock())
        if decision.refresh and issuer is not None:
            self.fetcher.fetch(decision.url, self.authorities.certificates[issuer], self.policy)
        return decision

    def settle(self, decision: Decision, stream: TLSServerStream, factory: AppFactory
               ) -> asyncio.Protocol:
        """Act on a final decision: the application, or a protocol that closes the stream."""
        verdict = decision.verdict
        self.events.counters.inc("client_crl_check", self.frontend, verdict)
        if verdict in (GOOD, UNCHECKED):
            return factory(stream)
        peer = stream.get_extra_info("peername") or ("", 0)
        client = str(peer[0])
        if verdict == REVOKED:
            self.events.decision("client_certificate_refused", "revoked", self.frontend, client,
                                 offence="handshake_failure", crl=decision.url)
            return _Refused()
        if self.policy.hard_fail:
            self.events.decision("client_certificate_refused", "crl_unavailable", self.frontend,
                                 client, detail=decision.reason)
            return _Refused()
        self.events.decision("client_certificate_unchecked", "crl_unavailable", self.frontend,
                             client, detail=decision.reason)
        return factory(stream)


class _Refused(asyncio.Protocol):
    """Closes the stream as soon as it is handed over (close_notify, then FIN)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Held(asyncio.Protocol):
    """A stream waiting for a CRL: reading paused, nothing created behind it yet."""

    def __init__(self, gate: RevocationGate, stream: TLSServerStream, factory: AppFactory,
                 cert: ClientCert, issuer: x509.Certificate) -> None:
        self._gate = gate
        self._stream = stream
        self._factory = factory
        self._cert = cert
        self._issuer = issuer
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stream.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> None:
        gate = self._gate
        loop = asyncio.get_running_loop()
        deadline = loop.time() + gate.policy.timeout
        decision = Decision(FETCH)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    decision = gate.decide(self._cert, None)
                    if decision.verdict != FETCH:
                        break
                    await asyncio.shield(gate.fetcher.fetch(decision.url, self._issuer,
                                                            gate.policy))
        if decision.verdict == FETCH:
            decision = Decision(UNAVAILABLE, "timeout", decision.url)
        if not self._stream.is_closing():
            self._hand_over(gate.settle(decision, self._stream, self._factory))

    def _hand_over(self, app: asyncio.Protocol) -> None:
        stream = self._stream
        stream.resume_reading()  # what waits is delivered on the next loop turn, to ``app``
        stream.set_app(app)
        app.connection_made(stream)

    # Reading is paused while the stream is held, so neither comes in practice.
    def data_received(self, data: bytes) -> None:
        self._stream.close()

    def eof_received(self) -> bool:
        self._stream.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()
