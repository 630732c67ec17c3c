"""A TLS backend server for the backend-TLS tests: it reports what offload sent it.

Every HTTP/1.1 request (keep-alive, no body) is answered with a JSON body naming the SNI the
connection carried, the Host of the request, whether the handshake was a resumed one, the
client certificate's subject, and the connection's number, so that a test sees exactly what
offload did. ``strict_sni`` answers 421 when the SNI differs from the Host, as Apache httpd
does since 2025. ``proxy_header`` reads a PROXY protocol v2 header in clear before the TLS
handshake. Threads, blocking sockets, 127.0.0.1 only, everything bounded in time.
"""

from __future__ import annotations

import ctypes
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass
class Handshake:
    """What one TLS connection to the backend was."""

    sni: str | None
    resumed: bool
    version: str | None
    client_subject: str | None
    alpn: str | None = None
    proxy_header: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)


class TlsBackend:
    """A threaded HTTPS (or, with ``echo``, TLS echo) server on 127.0.0.1."""

    def __init__(self, bundle: Path, *, client_ca: Path | None = None,
                 strict_sni: bool = False, proxy_header: bool = False, echo: bool = False,
                 tls13: bool = True) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(bundle))
        if not tls13:
            self.context.maximum_version = ssl.TLSVersion.TLSv1_2
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cafile=str(client_ca))
        self.context.sni_callback = self._sni
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.strict_sni = strict_sni
        self.proxy_header = proxy_header
        self.echo = echo
        self.handshakes: list[Handshake] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @staticmethod
    def _sni(tls: Any, name: str | None, context: ssl.SSLContext) -> None:
        tls.offload_sni = name

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(20)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            header = self._read_proxy_header(raw) if self.proxy_header else b""
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as error:
                with self._lock:
                    self.failures.append(str(error))
                return
            with tls:
                peer = tls.getpeercert()
                subject = None
                if peer:
                    subject = ",".join(f"{k}={v}" for rdn in peer["subject"] for k, v in rdn)
                shake = Handshake(getattr(tls, "offload_sni", None), tls.session_reused,
                                  tls.version(), subject, tls.selected_alpn_protocol(),
                                  header)
                with self._lock:
                    self.handshakes.append(shake)
                    number = len(self.handshakes)
                if self.echo:
                    self._echo(tls)
                else:
                    self._http(tls, shake, number)
        except OSError:
            pass
        finally:
            raw.close()

    @staticmethod
    def _read_proxy_header(raw: socket.socket) -> bytes:
        head = _read_exactly(raw, 16)
        if not head.startswith(PROXY_V2_SIGNATURE):
            return head  # not a PROXY header: the test sees it
        length = int.from_bytes(head[14:16], "big")
        return head + _read_exactly(raw, length)

    @staticmethod
    def _echo(tls: ssl.SSLSocket) -> None:
        while True:
            try:
                data = tls.recv(65536)
            except ssl.SSLZeroReturnError:
                break
            if not data:
                break
            tls.sendall(data)
        tls.unwrap()

    def _http(self, tls: ssl.SSLSocket, shake: Handshake, number: int) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLZeroReturnError:
                    chunk = b""
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            host = fields.get("host", "")
            request = {"sni": shake.sni, "host": host, "resumed": shake.resumed,
                       "version": shake.version, "client": shake.client_subject,
                       "connection": number, "target": lines[0].split(" ")[1]}
            shake.requests.append(request)
            status = "200 OK"
            if self.strict_sni and shake.sni != host.rsplit(":", 1)[0]:
                status = "421 Misdirected Request"
            body = json.dumps(request).encode()
            tls.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        self._stop = True
        self._listener.close()


def new_session_ticket(tls: ssl.SSLObject) -> None:
    """Make OpenSSL send another TLS 1.3 NewSessionTicket now (``SSL_new_session_ticket``,
    which Python does not expose: reached through ctypes, the ``SSL *`` read from CPython's
    ``PySSLSocket`` after ``PyObject_HEAD`` and the socket weakref, and checked)."""
    import _ssl

    library = ctypes.CDLL(_ssl.__file__)
    library.SSL_new_session_ticket.argtypes = [ctypes.c_void_p]
    library.SSL_is_server.argtypes = [ctypes.c_void_p]
    library.SSL_version.argtypes = [ctypes.c_void_p]
    library.SSL_do_handshake.argtypes = [ctypes.c_void_p]
    inner = tls._sslobj  # type: ignore[attr-defined]
    offset = 2 * ctypes.sizeof(ctypes.c_void_p) + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(inner) + offset).value
    assert library.SSL_is_server(pointer) == 1 and library.SSL_version(pointer) == 0x0304, \
        "the SSL * is not where this CPython keeps it"
    assert library.SSL_new_session_ticket(pointer) == 1
    assert library.SSL_do_handshake(pointer) == 1  # writes the ticket to the outgoing BIO


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed before the PROXY header was complete")
        data += chunk
    return data


class IdleSignalBackend:
    """A TLS backend on memory BIOs that, after its first answer on a connection, sends
    something while the connection sits idle in offload's pool: one more TLS 1.3 session
    ticket (``ticket``), or close_notify (``close_notify``). Every
    connection's requests are recorded, so a test sees whether the next request came on the
    same connection."""

    def __init__(self, bundle: Path, what: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(bundle))
        self.what = what
        self.connections: list[list[bytes]] = []
        self.idle_sent = threading.Event()
        self.release = threading.Event()
        """Set by the test once it has the first answer: the signal goes out then."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(20)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        requests: list[bytes] = []
        self.connections.append(requests)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        raw.sendall(outgoing.read())
                    data = raw.recv(65536)
                    if not data:
                        return
                    incoming.write(data)
            raw.sendall(outgoing.read())  # the session tickets of the handshake
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += tls.read(65536)
                        continue
                    except ssl.SSLWantReadError:
                        pass
                    except ssl.SSLZeroReturnError:
                        return
                    data = raw.recv(65536)
                    if not data:
                        return
                    incoming.write(data)
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                requests.append(head.split(b"\r\n", 1)[0])
                tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                raw.sendall(outgoing.read())
                if len(requests) == 1 and self.release.wait(10):
                    if self.what == "ticket":
                        new_session_ticket(tls)
                        raw.sendall(outgoing.read())
                    else:
                        try:
                            tls.unwrap()
                        except ssl.SSLWantReadError:
                            pass
                        raw.sendall(outgoing.read())
                    self.idle_sent.set()
        except OSError:
            pass
        finally:
            raw.close()

    def close(self) -> None:
        self._listener.close()
