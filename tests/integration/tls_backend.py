"""A TLS backend server for the backend-TLS tests: it reports what offload sent it.

Every HTTP/1.1 request (keep-alive, no body) is answered with a JSON body naming the SNI the
connection carried, the Host of the request, whether the handshake was a resumed one, the
client certificate's subject, and the connection's number, so that a test sees exactly what
offload did. ``strict_sni`` answers 421 when the SNI differs from the Host, as Apache httpd
does since 2025. ``proxy_header`` reads a PROXY protocol v2 header in clear before the TLS
handshake. Threads, blocking sockets, 127.0.0.1 only, everything bounded in time.
"""

from __future__ import annotations

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
                                  tls.version(), subject, header)
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


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed before the PROXY header was complete")
        data += chunk
    return data
