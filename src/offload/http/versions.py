"""The protocol serving a client's TLS connection: the HTTP version it chose by ALPN.

A class rather than a closure so that it is compiled with the rest of the per-connection path
(an interpreted call per handshake costs more than the choice itself)."""

from __future__ import annotations

import asyncio

from offload.http.h1_connection import Http1Connection
from offload.http.h2_connection import H2Connection
from offload.http.site import HttpSite
from offload.tls.stream import TLSServerStream


class HttpConnections:
    """Makes the application protocol of each handshaken stream of one HTTP site: HTTP/2 when
    the client chose ``h2``, HTTP/1.1 otherwise (no ALPN included)."""

    __slots__ = ("site",)

    def __init__(self, site: HttpSite) -> None:
        self.site = site

    def __call__(self, stream: TLSServerStream) -> asyncio.Protocol:
        if stream.alpn == "h2":
            return H2Connection(stream, self.site)
        return Http1Connection(stream, self.site)
