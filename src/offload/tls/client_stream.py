"""Client-side TLS to a backend server, on memory BIOs over a plain TCP transport.

Theory of operation. The mirror of :mod:`offload.tls.stream`: the TCP transport hands us
ciphertext, OpenSSL (an ``SSLObject`` on two ``MemoryBIO``) turns it into plaintext for the
application protocol (an HTTP-mode backend connection, or the backend side of a TCP relay),
and what the application writes is encrypted and written to the TCP transport at once.

Why not the event loop's TLS transport (``create_connection(ssl=...)``): it cannot offer a
saved session (no ``session=``, so no resumption to the backend), cannot send a PROXY protocol
header before the ClientHello, cannot half-close (TCP mode relays a client's close_notify as
ours and keeps reading), and reports a refused certificate only as an exception text.

    state       event                         action
    HANDSHAKE   connection made               write the preamble (PROXY header) in clear,
                                              then the ClientHello
    HANDSHAKE   bytes                         continue; on success check the name if
                                              OpenSSL did not, -> OPEN, tell the app, resolve
                                              ``ready``
    HANDSHAKE   error / EOF                   ``ready`` fails with :class:`BackendTlsError`
                                              (reason: expired, unknown_ca, name_mismatch, ..)
    OPEN        bytes                         decrypt and deliver; a NewSessionTicket yields
                                              no plaintext and is kept as the next session
    OPEN        close_notify                  app.eof_received(); falsy: close
    OPEN        FIN without close_notify      a truncation: app.connection_lost(SSLEOFError)
    OPEN        app.write_eof()               send close_notify, keep reading
    any         app.close()                   close_notify (if OPEN), flush, close TCP

An idle pooled connection is handled by its owner as any other: a ticket or KeyUpdate arriving
while idle yields no plaintext, so nothing reaches the owner; close_notify is an ordinary close.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import cast

from offload.errors import BackendTlsError
from offload.tls.backend_tls import Handshake, ServerTls, certificate_matches, classify_failure
from offload.tls.record_stream import CLOSED, CLOSING, HANDSHAKE, OPEN, TLSRecordStream
from offload.writes import WriteBatcher

LATE_REFUSALS = frozenset({"client_certificate_refused", "handshake_failure",
                           "protocol_version"})
"""Reasons an alert after the handshake is the server refusing it, not a broken stream."""
TICKET_LOOKS = 8
"""Reads after a TLS 1.3 handshake that look for the server's session ticket (it comes with
the first answer; a server that sends none is not asked about it on every read)."""
WAITING_READ = 64 * 1024


class TLSClientStream(TLSRecordStream, asyncio.Protocol):
    """A TLS client connection: a Protocol for the TCP transport, a Transport for the app
    (that side, and the records, in :class:`TLSRecordStream`)."""

    __slots__ = ("_app", "_app_started", "_error", "_plan", "_preamble", "_ready",
                 "_ticket_looks", "_tls")

    def __init__(self, app: asyncio.Protocol, tls: ServerTls, plan: Handshake,
                 ready: asyncio.Future[None], *, preamble: bytes = b"",
                 batcher: WriteBatcher | None = None) -> None:
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        session = tls.session(plan.key)
        try:
            ssl_object = plan.context.wrap_bio(incoming, outgoing, server_side=False,
                                               server_hostname=plan.server_hostname,
                                               session=session)
        except ValueError:  # a session of another context: not offered
            ssl_object = plan.context.wrap_bio(incoming, outgoing, server_side=False,
                                               server_hostname=plan.server_hostname)
        super().__init__(incoming, outgoing, ssl_object, batcher)
        self._app = app
        self._tls = tls
        self._plan = plan
        self._ready = ready
        self._preamble = preamble
        self._app_started = False
        self._ticket_looks = TICKET_LOOKS
        """Reads left in which to look for a TLS 1.3 ticket (0: kept, or given up)."""
        self._error: BaseException | None = None
        """Why the connection ends, told to the app instead of the TCP transport's reason."""

    # ----------------------------------------------------------------- TCP side (Protocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = cast(asyncio.Transport, transport)
        if self._preamble:
            self._tcp.write(self._preamble)  # before the ClientHello, in clear
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if self._state == OPEN:
            if not self._reading_paused:
                self._read()
        elif self._state == HANDSHAKE:
            self._handshake()

    def eof_received(self) -> bool:
        if self._state == HANDSHAKE:
            self._fail("closed_in_handshake", "the server closed the connection during the "
                       "handshake")
            return False
        if self._state != OPEN:
            return False
        if self._peer_eof:  # close_notify came earlier and the app kept writing
            return not self._write_eof
        self._incoming.write_eof()
        if not self._reading_paused:
            self._read()
        if self._peer_eof:  # close_notify came before the FIN: the app decided
            return not self._write_eof and self._state == OPEN
        return self._reading_paused  # paused: decrypted (or found truncated) on resume

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        if not self._ready.done():  # during the handshake, or closed before it ended
            self._ready.set_exception(BackendTlsError(
                "closed_in_handshake", f"connection lost during the handshake: {exc}"))
        if self._app_started:
            self._app_started = False
            self._app.connection_lost(cast(Exception | None, self._error) or exc)

    def pause_writing(self) -> None:
        if self._app_started:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app_started:
            self._app.resume_writing()

    # ----------------------------------------------------------------- TLS work

    def _handshake(self) -> None:
        try:
            self._records.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError, ValueError) as error:
            self._flush()  # our alert, so the server's log says why too
            self._fail(classify_failure(error), str(error))
            return
        self._flush()
        name = self._plan.check_after
        if name is not None and not self._records.session_reused:
            der = self._ssl.getpeercert(binary_form=True)
            if der is None or not certificate_matches(der, name):
                self._fail("name_mismatch", f"the certificate is not issued for {name}")
                return
        self._state = OPEN
        if self._records.version() != "TLSv1.3":
            self._keep_session()  # TLS 1.2: the session is complete with the handshake
        self._app_started = True
        self._app.connection_made(self)
        if not self._ready.done():
            self._ready.set_result(None)
        if self._state == OPEN and not self._reading_paused and (
                self._incoming.pending or self._records.pending()):
            self._read()

    def _keep_session(self) -> None:
        session = self._ssl.session
        if session is not None:
            self._ticket_looks = 0
            self._tls.keep_session(self._plan.key, session)

    def _fail(self, reason: str, detail: str) -> None:
        self._state = CLOSING
        if not self._ready.done():
            self._ready.set_exception(BackendTlsError(reason, detail))
        self._tcp_close(abort=True)

    def _read(self) -> None:
        try:
            data, eof = self._decrypt()
        except ssl.SSLError as error:
            self._flush()
            # a FIN without close_notify (SSLEOFError) or a broken record: the stream cannot
            # be trusted to be complete. An alert refusing the handshake arrives here in TLS
            # 1.3, after our Finished: a server that refuses our client certificate says so
            # only once it has read it.
            reason = classify_failure(error)
            self._error = (BackendTlsError(reason, str(error)) if reason in LATE_REFUSALS
                           else error)
            self._state = CLOSING
            self._tcp_close(abort=True)
            return
        if self._ticket_looks and self._state == OPEN:
            self._ticket_looks -= 1
            session = self._ssl.session
            if session is not None and session.has_ticket:  # TLS 1.3: the ticket came
                self._keep_session()
        app = self._app
        if data and self._app_started:
            app.data_received(data)
        if eof and not self._peer_eof and self._state == OPEN:
            self._peer_eof = True
            keep_open = app.eof_received() if self._app_started else False
            if not keep_open or self._write_eof:
                self.close()

    # ----------------------------------------------------------------- app side (Transport)

    def write_eof(self) -> None:
        """Send close_notify; reading goes on until the server closes too."""
        if self._state != OPEN or self._write_eof:
            return
        self._write_eof = True
        if self._incoming.pending and not self._reading_paused:
            self._read()  # complete records first: the shutdown call would discard them
        self._send_close_notify()
        if self._peer_eof:
            self._tcp_close()

    def close(self) -> None:
        if self._state >= CLOSING:
            return
        was_open = self._state == OPEN
        self._state = CLOSING
        if was_open and not self._write_eof:
            self._write_eof = True
            self._send_close_notify()
        self._tcp_close()

    def _unread(self) -> bool:
        """A FIN told to the incoming BIO waits too: reading it ends the stream."""
        return super()._unread() or self._incoming.eof

    def _resume_read(self) -> None:
        if self._state == OPEN and not self._reading_paused:
            self._read()
            if self._incoming.eof and not self._peer_eof and self._state == OPEN:
                self._tcp_close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the decrypted stream to another protocol (a WebSocket tunnel after 101)."""
        self._app = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def read_waiting(self) -> None:
        """Take now what the socket holds and the loop has not delivered yet, and handle it as
        if it had been (an idle pooled connection about to be reused): a ticket is absorbed,
        close_notify or a FIN closes, application data reaches the owner as unsolicited."""
        tcp = self._tcp
        sock = tcp.get_extra_info("socket") if tcp is not None else None
        if sock is None or self._state != OPEN:
            return
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
                data = duplicate.recv(WAITING_READ, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as error:
            self._error = error
            self.abort()
            return
        if data:
            self.data_received(data)
        else:
            self.abort()  # the server closed: an ordinary end of an idle connection

    # ----------------------------------------------------------------- connection facts

    @property
    def resumed(self) -> bool:
        return bool(self._records.session_reused)

    @property
    def tls_version(self) -> str | None:
        version: str | None = self._records.version()
        return version


async def open_tls(app: asyncio.Protocol, tls: ServerTls, plan: Handshake,
                   address: tuple[str, int], *, preamble: bytes = b"",
                   batcher: WriteBatcher | None = None) -> TLSClientStream:
    """Connect to ``address`` (host, port) and complete the TLS handshake; ``app`` gets
    ``connection_made`` once the server is verified. Raises OSError or
    :class:`BackendTlsError` (the caller bounds the time)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    stream = TLSClientStream(app, tls, plan, ready, preamble=preamble, batcher=batcher)
    transport, _ = await loop.create_connection(lambda: stream, *address)
    try:
        await ready
    except BaseException:
        transport.abort()
        if not ready.done():
            ready.cancel()  # cancelled: nobody will look at how the handshake ends
        raise
    return stream
