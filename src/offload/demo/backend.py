"""The demo's built-in backend: a small plain-HTTP server that shows what offload told it.

It answers every request with a short page showing what offload added (X-Forwarded-For and
friends in HTTP mode; in TCP mode with PROXY protocol, the client address, TLS version, cipher
and SNI from the header offload sends first). It is a demonstration, not a web
server: request bodies are read and discarded, chunked uploads are refused.

Run as ``python -m offload.demo.backend --fd N`` on a listening socket the caller passes in.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import cast

import uvloop

from offload.errors import ProtocolError
from offload.proto import proxy_protocol

MAX_HEAD = 16 * 1024


class DemoHandler(asyncio.Protocol):
    """One backend connection: PROXY header, then HTTP/1.1 requests with keep-alive."""

    def __init__(self) -> None:
        self._buffer = b""
        self._proxy: proxy_protocol.ProxyHeader | None = None
        self._proxy_done = False
        self._discard = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._process()
        except ProtocolError:
            self._answer(400, b"bad request\n", close=True)

    def _process(self) -> None:
        if not self._proxy_done:
            if self._buffer[:1] in (b"P", b"\r"):
                parsed = proxy_protocol.parse(self._buffer)
                if parsed is None:
                    return
                self._proxy, used = parsed
                self._buffer = self._buffer[used:]
            self._proxy_done = True
        while self._transport is not None and not self._transport.is_closing():
            if self._discard:
                taken = min(self._discard, len(self._buffer))
                self._discard -= taken
                self._buffer = self._buffer[taken:]
                if self._discard:
                    return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    raise ProtocolError("request head too large")
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            self._request(head.decode("latin-1"))

    def _request(self, head: str) -> None:
        request_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            self._answer(411, b"this demo backend wants Content-Length\n", close=True)
            return
        length = headers.get("content-length", "0")
        self._discard = int(length) if length.isdigit() else 0
        close = headers.get("connection", "").lower() == "close" or request_line.endswith("1.0")
        self._answer(200, self._page(request_line, headers).encode(), close=close)

    def _page(self, request_line: str, headers: dict[str, str]) -> str:
        lines = [
            "Hello from the offload demo backend.",
            "",
            "offload terminated TLS and forwarded your request to this plain-HTTP server.",
            f"Your request: {request_line}",
        ]
        for label, name in (("Your address (X-Forwarded-For)", "x-forwarded-for"),
                            ("Protocol (X-Forwarded-Proto)", "x-forwarded-proto"),
                            ("Request id (X-Request-ID)", "x-request-id")):
            if name in headers:
                lines.append(f"{label}: {headers[name]}")
        proxy = self._proxy
        if proxy is not None and proxy.source is not None:
            lines.append(f"Your address (from the PROXY protocol header): "
                         f"{proxy.source[0]}:{proxy.source[1]}")
            ssl = proxy.ssl_tlvs
            for label, kind in (("TLS version", proxy_protocol.PP2_SUBTYPE_SSL_VERSION),
                                ("Cipher", proxy_protocol.PP2_SUBTYPE_SSL_CIPHER)):
                if kind in ssl:
                    lines.append(f"{label}: {ssl[kind].decode('ascii', 'replace')}")
            sni = proxy.tlvs.get(proxy_protocol.PP2_TYPE_AUTHORITY)
            if sni:
                lines.append(f"Server name (SNI): {sni.decode('ascii', 'replace')}")
        return "\n".join(lines) + "\n"

    def _answer(self, status: int, body: bytes, *, close: bool) -> None:
        if self._transport is None:
            return
        reason = {200: "OK", 400: "Bad Request", 411: "Length Required"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nServer: offload-demo-backend\r\n")
        if close:
            head += "Connection: close\r\n"
        self._transport.write(head.encode() + b"\r\n" + body)
        if close:
            self._transport.close()


async def serve(sock: socket.socket) -> None:
    """Serve on an already listening socket until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(DemoHandler, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="listening socket to serve on")
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    try:
        uvloop.run(serve(sock))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
