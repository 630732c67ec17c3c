"""Server-side TLS on memory BIOs over a plain TCP transport.

Theory of operation. The event loop's TCP transport hands us ciphertext (``data_received``);
we feed it to OpenSSL through a ``MemoryBIO`` and an ``SSLObject`` and pass the plaintext to an
application protocol (the frontend: TCP relay or HTTP). The application writes plaintext to us
as if we were its transport; we encrypt and write the records to the TCP transport at once, so
the only write buffer is the TCP transport's and its watermarks drive ``pause_writing``.

Why not the event loop's own TLS transport: it cannot half-close. Once the client sends
close_notify (or FIN), asyncio's and uvloop's SSL transports stop accepting writes, which would
drop the rest of a response; and they cannot send close_notify while still reading. They also
never tell the application why a handshake failed. Here:

    state       event                       action
    HANDSHAKE   bytes                       continue the handshake; on success -> OPEN and the
                                            owner creates the application protocol
    HANDSHAKE   error / EOF / timeout       count the reason, send OpenSSL's alert, close
    OPEN        bytes                       decrypt and deliver, unless the app paused reading
    OPEN        close_notify or FIN         app.eof_received(); we can still write
    OPEN        app.write_eof()             send close_notify; we can still read
    OPEN        both directions closed      close the TCP connection
    any         app.close()                 close_notify (if OPEN), flush, close
    any         writes paused send_timeout  the client stopped reading: abort

ALPN (RFC 7301 §3.2): with ``served`` protocols, a client offering ALPN but none of them is
refused with a fatal ``no_application_protocol`` alert before OpenSSL sees its hello (OpenSSL,
through Python, would carry on without ALPN). The first read is searched for a served name;
only when none is there is the ClientHello parsed (see :class:`ServedProtocols`).

PROXY protocol (``expect_proxy``): behind an L4 balancer, the balancer's header comes before
the ClientHello. It is read first (:class:`InboundHeader`, within the handshake timeout) and
never reaches OpenSSL; from then on ``peername``/``sockname`` are the addresses it names (the
socket's peer stays available as ``proxy_peer``), and the owner is told
(``stream_identified``) so that limits and bans, which key on the client, apply only then. A
malformed header closes the connection before any TLS byte is answered.

Fingerprints (``fingerprints``): the ClientHello's body is kept, unread, for its JA4 (and JA3),
which :class:`~offload.proto.fingerprint.Fingerprints` computes when first asked.

Flood limits: the owner may refuse a connection as soon as it is accepted (``refuse``: closed
before any TLS byte is read), and with ``count_handshakes`` it is asked about every full
handshake: before OpenSSL starts one when the ClientHello offers no session to resume (so a
refusal costs no signature), or after the handshake when an offered session was not resumed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from typing import Any, Protocol, cast

from offload.acme.alpn import ACME_TLS_ALPN, ChallengeLookup
from offload.errors import ProtocolError
from offload.proto.client_hello import (
    NO_APPLICATION_PROTOCOL,
    ClientHello,
    ClientHelloError,
    ServedProtocols,
    client_hello_body,
    fatal_alert,
    parse_client_hello_body,
)
from offload.proto.fingerprint import Fingerprints
from offload.proto.proxy_protocol import InboundHeader, ProxyHeader
from offload.timers import Deadline
from offload.tls.record_stream import CLOSED, CLOSING, HANDSHAKE, OPEN, TLSRecordStream
from offload.tls.sni import SNI_ATTRIBUTE, SNI_MATCHED_ATTRIBUTE
from offload.tls.sslobject import server_object
from offload.writes import WriteBatcher

READ_SIZE = 16 * 1024
"""The most one socket read takes (the event loop would take 256 KiB): what a stream holds
beyond the kernel's buffers while its application has paused reading is one such read."""


def read_buffer() -> bytearray:
    """A buffer for the socket reads of many streams (one event loop; each read is consumed
    before the next one starts)."""
    return bytearray(READ_SIZE)

_BAD_HELLO = frozenset({
    "WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "PACKET_LENGTH_TOO_LONG",
    "RECORD_LENGTH_MISMATCH", "UNEXPECTED_MESSAGE", "UNEXPECTED_RECORD", "BAD_PACKET_LENGTH",
    "LENGTH_MISMATCH", "BAD_EXTENSION", "PARSE_TLSEXT", "CLIENTHELLO_TLSEXT",
    "BAD_LENGTH", "WRONG_SSL_VERSION", "DECODE_ERROR",
})
_NO_SHARED = frozenset({
    "NO_SHARED_CIPHER", "NO_SHARED_GROUPS", "NO_SUITABLE_KEY_SHARE",
    "NO_SUITABLE_SIGNATURE_ALGORITHM",
    "NO_SHARED_SIGNATURE_ALGORITHMS", "NO_APPLICATION_PROTOCOL",
})
_VERSION = frozenset({
    "UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE",
    "INAPPROPRIATE_FALLBACK", "TLSV1_ALERT_PROTOCOL_VERSION",
})

_CLIENT_CERT = {  # OpenSSL's X509_V_ERR_* codes -> why a client certificate was refused
    9: "not_yet_valid", 10: "expired", 23: "revoked", 26: "wrong_purpose",
    2: "unknown_ca", 18: "unknown_ca", 19: "unknown_ca", 20: "unknown_ca", 21: "unknown_ca",
    3: "crl_unavailable", 11: "crl_unavailable", 12: "crl_unavailable",
}
CLIENT_CERT_PREFIX = "client_cert_"
"""Reasons starting with this are client certificates refused (the rest says why)."""


def classify_handshake_error(error: BaseException) -> str:
    """A short, low-cardinality reason for a failed handshake (for counters and logs)."""
    reason = getattr(error, "reason", None) or ""
    if isinstance(error, ssl.SSLCertVerificationError):  # only client certificates, here
        return CLIENT_CERT_PREFIX + _CLIENT_CERT.get(error.verify_code, "invalid")
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return CLIENT_CERT_PREFIX + "missing"
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "client_closed"
    if reason in _VERSION:
        return "protocol_version"
    if reason in _NO_SHARED:
        return "no_shared_cipher"
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
        return "client_alert"
    if reason in _BAD_HELLO:
        return "bad_client_hello"
    if reason == "CALLBACK_FAILED":  # our SNI callback refuses only names it has no cert for
        return "unknown_sni"
    return "tls_error"


class StreamOwner(Protocol):
    """What a listener provides to each stream: the application and the bookkeeping."""

    name: str
    def stream_accepted(self, stream: TLSServerStream) -> None: ...
    def stream_identified(self, stream: TLSServerStream) -> None: ...
    def stream_opened(self, stream: TLSServerStream) -> asyncio.Protocol: ...
    def stream_failed(self, stream: TLSServerStream, reason: str, detail: str) -> None: ...
    def stream_answered_challenge(self, stream: TLSServerStream) -> None: ...
    def stream_closed(self, stream: TLSServerStream) -> None: ...
    def stream_full_handshake(self, stream: TLSServerStream) -> bool: ...
    def stream_too_slow(self, stream: TLSServerStream, cause: str) -> None: ...


SEND_TIMEOUT = "send_timeout"
"""The cause a stream reports when the client stopped reading for ``send_timeout``."""


def unmapped(address: Any) -> Any:
    """An IPv4 client of a dual-stack listener (``":443"``) as the IPv4 address it is.

    The kernel reports it as ``::ffff:192.0.2.7``; rules, limits, bans, X-Forwarded-For and
    the PROXY header must all see ``192.0.2.7``, exactly as from an IPv4 socket (otherwise a
    rule for ``192.0.2.0/24`` would not match it)."""
    if (isinstance(address, tuple) and len(address) == 4 and isinstance(address[0], str)
            and address[0].startswith("::ffff:") and "." in address[0]):
        return address[0][7:], address[1]
    return address


def _proxied(address: tuple[str, int]) -> tuple[str, int]:
    """A client address from a PROXY header, as a socket would name it: an IPv4-mapped IPv6
    address (a v2 header from a dual-stack balancer) as the IPv4 address it is."""
    host, port = address
    if host.startswith("::ffff:"):
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        if mapped is not None:
            return str(mapped), port
    return host, port


class TLSServerStream(TLSRecordStream, asyncio.BufferedProtocol):
    """A TLS server connection: a Protocol for the TCP transport, a Transport for the app
    (that side, and the records, in :class:`TLSRecordStream`)."""

    __slots__ = (
        "_acme", "_alpn_pending", "_app", "_buffer", "_challenges", "_count_handshakes",
        "_fingerprinting", "_held", "_hello", "_owner", "_parse_hello", "_proxied", "_proxy",
        "_recheck_handshake", "_send_deadline", "_send_timeout", "_served", "_timer",
        "_with_ja3", "accepted_at", "bytes_in", "bytes_out", "client_key", "fingerprints",
        "handshake_seconds", "handshake_timeout",
    )

    def __init__(self, owner: StreamOwner, context: ssl.SSLContext,
                 handshake_timeout: float, batcher: WriteBatcher | None = None,
                 challenges: ChallengeLookup | None = None, *, send_timeout: float = 0.0,
                 count_handshakes: bool = False, served: ServedProtocols | None = None,
                 buffer: bytearray | None = None, expect_proxy: bool = False,
                 fingerprints: bool = False, ja3: bool = False) -> None:
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        super().__init__(incoming, outgoing, server_object(context, incoming, outgoing), batcher)
        self._buffer = memoryview(buffer if buffer is not None else read_buffer())
        """Where the socket reads land (shared by the listener's streams: :func:`read_buffer`)."""
        self._owner = owner
        self._app: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._held = b""
        self._challenges = challenges
        self._count_handshakes = count_handshakes
        self._recheck_handshake = False
        """The ClientHello offered a session: ask the owner after the handshake if not resumed."""
        self._parse_hello = challenges is not None or count_handshakes
        """Whether the ClientHello must be read before OpenSSL starts: for an ACME TLS-ALPN-01
        validation, whether a session is offered, or which ALPN protocols are."""
        self._fingerprinting = fingerprints
        self._with_ja3 = ja3
        self._hello: bytearray | None = (bytearray() if self._parse_hello or fingerprints
                                         else None)
        """The ClientHello so far, while it is to be read or kept (see :meth:`_peek`)."""
        self.fingerprints: Fingerprints | None = None
        """The handshake's JA4/JA3, computed when first asked (frontends with fingerprints)."""
        self._served = served
        self._alpn_pending = served is not None
        """The first read has yet to be searched for a served ALPN protocol."""
        self._acme = False
        self._proxy: InboundHeader | None = InboundHeader() if expect_proxy else None
        """Collects the balancer's PROXY header, until it is complete."""
        self._proxied: tuple[tuple[str, int], tuple[str, int]] | None = None
        """(client, destination) as the PROXY header named them; None: the socket's own."""
        self._send_timeout = send_timeout
        self._send_deadline: Deadline | None = None
        self.client_key = ""
        """The client's key for the owner's limits, set when they admitted it ("" otherwise)."""
        self.handshake_timeout = handshake_timeout
        self.accepted_at = 0.0
        self.handshake_seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        """TLS bytes received from and sent to the client (for the traffic counters)."""

    # ----------------------------------------------------------------- TCP side (Protocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = cast(asyncio.Transport, transport)
        self.accepted_at = time.monotonic()
        self._timer = self._loop.call_later(self.handshake_timeout, self._handshake_timed_out)
        self._owner.stream_accepted(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._state == OPEN:
            self.bytes_in += nbytes
            self._incoming.write(self._buffer[:nbytes])
            if not self._reading_paused:
                self._read()
        else:
            self.data_received(bytes(self._buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._proxy is not None:
            data = self._proxy_header(data)
            if not data:
                return
        self._incoming.write(data)
        if self._state == OPEN:
            if not self._reading_paused:
                self._read()
        elif self._state == HANDSHAKE:
            if self._alpn_pending:
                self._alpn_pending = False
                served = self._served
                if served is not None and not self._parse_hello \
                        and not served.surely_offered(data):
                    self._parse_hello = True  # parse it, to see whether to refuse
                    if self._hello is None:
                        self._hello = bytearray()
            if self._hello is not None and not self._peek(data):
                return  # the ClientHello is not complete yet
            self._handshake()

    def _proxy_header(self, data: bytes) -> bytes:
        """Read the balancer's PROXY header; returns the bytes after it (the TLS start)."""
        reader = self._proxy
        assert reader is not None
        if self._state != HANDSHAKE:
            self._proxy = None
            return b""
        try:
            result = reader.feed(data)
        except ProtocolError as error:
            self._proxy = None
            self._fail("bad_proxy_header", str(error))
            return b""
        if result is None:
            return b""
        self._proxy = None
        header, rest = result
        self._apply_proxy_header(header)
        self._owner.stream_identified(self)
        return rest if self._state == HANDSHAKE else b""

    def _apply_proxy_header(self, header: ProxyHeader) -> None:
        """LOCAL and UNKNOWN name no client: the balancer itself is talking (health checks)."""
        if header.source is not None and header.destination is not None:
            self._proxied = (_proxied(header.source), _proxied(header.destination))

    def _peek(self, data: bytes) -> bool:
        """Look at the ClientHello before OpenSSL does; True once it is complete (or broken).

        A ClientHello offering exactly ``acme-tls/1`` for a name with a pending challenge is
        answered with the validation certificate (RFC 8737 §3), never the site's. False too
        when the client offers only protocols we do not serve, or when the owner refused a full
        handshake (the stream is then closed). With fingerprints, the hello's body is kept for
        them, unread (:class:`Fingerprints` reads it when asked)."""
        hello = self._hello
        assert hello is not None
        hello += data
        parsed: ClientHello | None = None
        try:
            body = client_hello_body(hello)
            if body is None:
                return False
            if self._fingerprinting:
                self.fingerprints = Fingerprints(body, with_ja3=self._with_ja3)
            if self._parse_hello:
                parsed = parse_client_hello_body(body)
        except ClientHelloError:
            parsed = None  # OpenSSL will refuse it with the right alert
        self._hello = None
        if not self._parse_hello:
            return True
        if parsed is not None and parsed.alpn == (ACME_TLS_ALPN,) and self._challenges is not None:
            context = self._challenges(parsed.server_name)
            if context is not None:
                self._ssl.context = context
                self._acme = True
        served = self._served
        if served is not None and parsed is not None and not self._acme \
                and served.refuses(parsed):
            self._refuse_alpn(parsed)
            return False
        if self._count_handshakes and not self._acme:
            if parsed is not None and parsed.offers_resumption:
                self._recheck_handshake = True
            elif not self._owner.stream_full_handshake(self):
                self.refuse()  # before OpenSSL has seen a byte
                return False
        return True

    def _refuse_alpn(self, hello: ClientHello) -> None:
        """RFC 7301 §3.2: none of the client's protocols is served."""
        self._send(fatal_alert(NO_APPLICATION_PROTOCOL, hello))
        self._fail("no_application_protocol",
                   f"the client offers ALPN {', '.join(hello.alpn)}, none of them served")

    def eof_received(self) -> bool:
        if self._state == HANDSHAKE:
            self._fail("client_closed", "connection closed during the handshake")
            return False
        if self._state != OPEN:
            return False
        if not self._peer_eof:
            self._peer_eof = True
            if self._app is not None:
                self._app.eof_received()
        return not self._write_eof

    def connection_lost(self, exc: Exception | None) -> None:
        was = self._state
        self._state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._send_deadline is not None:
            self._send_deadline.cancel()
        if was == HANDSHAKE:
            self._owner.stream_failed(self, "client_closed",
                                      f"connection lost during the handshake: {exc}")
        if self._app is not None:
            app, self._app = self._app, None
            app.connection_lost(exc)
        self._owner.stream_closed(self)

    def pause_writing(self) -> None:
        if self._send_timeout > 0:
            deadline = self._send_deadline
            if deadline is None:
                deadline = self._send_deadline = Deadline(self._loop, self._send_timed_out)
            deadline.set(self._loop.time() + self._send_timeout)
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.clear()
        if self._app is not None:
            self._app.resume_writing()

    def _send_timed_out(self) -> None:
        """Our writes stayed paused for ``send_timeout``: the client stopped reading."""
        if self._state == CLOSED:
            return
        self._owner.stream_too_slow(self, SEND_TIMEOUT)
        self._state = CLOSING
        app, self._app = self._app, None
        self._tcp_close(abort=True)  # a graceful close would wait for the reader for ever
        if app is not None:
            app.connection_lost(TimeoutError(SEND_TIMEOUT))

    # ----------------------------------------------------------------- TLS work

    def _send(self, data: bytes) -> None:
        """Send ``data`` to the client, counted in ``bytes_out``."""
        if self._tcp is not None:
            self.bytes_out += len(data)
            super()._send(data)

    def _handshake(self) -> None:
        try:
            self._records.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as error:
            self._flush()
            self._fail(classify_handshake_error(error), str(error))
            return
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.handshake_seconds = time.monotonic() - self.accepted_at
        if self._recheck_handshake and not self.resumed \
                and not self._owner.stream_full_handshake(self):
            self._state = CLOSING  # an offered session did not resume: a full handshake
            self._send_close_notify()
            self._tcp_close()
            return
        if self._acme:  # the validation needs the handshake only (RFC 8737 §3)
            self._state = CLOSING
            self._owner.stream_answered_challenge(self)
            self._send_close_notify()
            self._tcp_close()
            return
        self._state = OPEN
        self._app = self._owner.stream_opened(self)
        self._app.connection_made(self)
        if self._state == OPEN and not self._reading_paused and (
                self._incoming.pending or self._records.pending()):
            self._read()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state == HANDSHAKE:
            self._fail("timeout", f"no handshake within {self.handshake_timeout:g}s", abort=True)

    def _fail(self, reason: str, detail: str, *, abort: bool = False) -> None:
        self._state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._owner.stream_failed(self, reason, detail)
        self._tcp_close(abort=abort)

    def _read(self) -> None:
        try:
            data, eof = self._decrypt()
        except ssl.SSLError as error:
            self._flush()
            self._protocol_error(error)
            return
        if self._held:
            data, self._held = self._held + data, b""
        app = self._app
        if data and app is not None:
            app.data_received(data)
        if eof and not self._peer_eof and self._state == OPEN:
            self._peer_eof = True
            if app is not None:
                app.eof_received()
            if self._write_eof:
                self._tcp_close()

    def _protocol_error(self, error: ssl.SSLError) -> None:
        """A broken record after the handshake: the stream cannot continue."""
        self._state = CLOSING
        self._tcp_close()

    # ----------------------------------------------------------------- app side (Transport)

    def write_eof(self) -> None:
        """Send close_notify; reading goes on until the peer closes too (TLS 1.3 half-close)."""
        if self._state != OPEN or self._write_eof:
            return
        if self._incoming.pending:
            # Decrypt complete records first: the shutdown call would discard them.
            try:
                data, eof = self._decrypt()
            except ssl.SSLError as error:
                self._protocol_error(error)
                return
            self._held += data
            if not self._reading_paused:
                self._loop.call_soon(self._deliver_held, eof)
            elif eof:
                self._peer_eof = True
        self._write_eof = True
        self._send_close_notify()
        if self._peer_eof:
            self._tcp_close()

    def _deliver_held(self, eof: bool) -> None:
        data, self._held = self._held, b""
        if self._app is not None and self._state == OPEN:
            if data:
                self._app.data_received(data)
            if eof and not self._peer_eof:
                self._peer_eof = True
                self._app.eof_received()
                self._tcp_close()

    def close(self, notify: bool = True) -> None:
        """Close after sending what is buffered; ``notify=False`` skips close_notify, so the
        client sees a truncated stream (used when the backend failed mid-stream)."""
        if self._state >= CLOSING:
            return
        was_open = self._state == OPEN
        self._state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if was_open and notify and not self._write_eof:
            self._write_eof = True
            self._send_close_notify()
        self._tcp_close()

    def refuse(self) -> None:
        """Close the connection at once, without a TLS answer (a flood limit refused it)."""
        self._state = max(self._state, CLOSING)
        self._hello = None
        self._proxy = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tcp_close()

    def _unread(self) -> bool:
        """Plaintext held back by :meth:`write_eof` waits too."""
        return bool(self._held) or super()._unread()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tcp = self._tcp
        if tcp is None or name not in ("peername", "sockname", "proxy_peer"):
            return super().get_extra_info(name, default)
        if name == "proxy_peer":  # the balancer, when a PROXY header named the client
            return unmapped(tcp.get_extra_info("peername", default))
        proxied = self._proxied
        if proxied is not None:
            return proxied[0] if name == "peername" else proxied[1]
        return unmapped(tcp.get_extra_info(name, default))

    @property
    def app(self) -> asyncio.Protocol | None:
        """The application protocol reading this stream (None during the handshake)."""
        return self._app

    def set_app(self, app: asyncio.Protocol) -> None:
        """Hand the decrypted stream to another protocol (HTTP becoming a WebSocket tunnel)."""
        self._app = app

    # ----------------------------------------------------------------- connection facts

    @property
    def proxied(self) -> bool:
        """Whether a PROXY header named the client (``peername`` is then its address)."""
        return self._proxied is not None

    @property
    def ja4(self) -> str | None:
        """The client's JA4 fingerprint (None without fingerprints, or for an unreadable
        hello); computed on first use."""
        fingerprints = self.fingerprints
        return fingerprints.ja4 if fingerprints is not None else None

    @property
    def ja3(self) -> str | None:
        fingerprints = self.fingerprints
        return fingerprints.ja3 if fingerprints is not None else None

    @property
    def peer_eof(self) -> bool:
        """Whether the client has closed its sending side (close_notify or FIN)."""
        return self._peer_eof

    @property
    def server_name(self) -> str | None:
        """The SNI the client sent, if any."""
        name: str | None = getattr(self._ssl, SNI_ATTRIBUTE, None)
        return name

    @property
    def server_name_matched(self) -> bool:
        """Whether a certificate matched the SNI (False: the default certificate was served)."""
        return bool(getattr(self._ssl, SNI_MATCHED_ATTRIBUTE, False))

    @property
    def tls_version(self) -> str | None:
        version: str | None = self._records.version()
        return version

    @property
    def cipher(self) -> str | None:
        cipher: tuple[str, str, int] | None = self._records.cipher()
        return cipher[0] if cipher else None

    @property
    def alpn(self) -> str | None:
        alpn: str | None = self._records.selected_alpn_protocol()
        return alpn

    @property
    def peer_certificate(self) -> bytes | None:
        """The client's certificate (DER) when it sent one; OpenSSL has verified it."""
        der: bytes | None = self._ssl.getpeercert(binary_form=True)
        return der

    @property
    def owner_name(self) -> str:
        """The name of the frontend this connection came in on."""
        return self._owner.name

    @property
    def resumed(self) -> bool:
        return bool(self._records.session_reused)
