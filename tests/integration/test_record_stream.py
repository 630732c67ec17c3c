"""The transport side both TLS streams share (offload.tls.record_stream), with one stream at
each end: a TLSClientStream (offload's connection to a backend) talking to a TLSServerStream
(offload's side of a client's connection), real sockets on 127.0.0.1, real OpenSSL.

Both ends write, pause and resume reading, half-close with close_notify and report buffer and
closing state through the shared class; each calls back into its own subclass (sending,
reading). On the compiled build a call through the shared class's vtable crashed when
``BaseTransport.__init__`` had overwritten the vtable with its ``_extra`` slot.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import uvloop

from offload.tls.backend_tls import ServerTls, TlsClient, TlsSettings
from offload.tls.client_stream import TLSClientStream, open_tls
from offload.tls.stream import TLSServerStream


class Recorder(asyncio.Protocol):
    """An application protocol that keeps what it is told."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True  # keep writing after the peer's close_notify

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Owner:
    """What a listener gives a server stream: here, one Recorder per stream."""

    name = "record-stream test"

    def __init__(self) -> None:
        self.opened: asyncio.Future[tuple[TLSServerStream, Recorder]] = \
            asyncio.get_running_loop().create_future()
        self.failures: list[str] = []

    def stream_accepted(self, stream: TLSServerStream) -> None:
        pass

    def stream_identified(self, stream: TLSServerStream) -> None:
        pass

    def stream_opened(self, stream: TLSServerStream) -> asyncio.Protocol:
        app = Recorder()
        self.opened.set_result((stream, app))
        return app

    def stream_failed(self, stream: TLSServerStream, reason: str, detail: str) -> None:
        self.failures.append(f"{reason}: {detail}")

    def stream_answered_challenge(self, stream: TLSServerStream) -> None:
        pass

    def stream_closed(self, stream: TLSServerStream) -> None:
        pass

    def stream_full_handshake(self, stream: TLSServerStream) -> bool:
        return True

    def stream_too_slow(self, stream: TLSServerStream, cause: str) -> None:
        pass


async def _receive(app: Recorder, size: int) -> bytes:
    while len(app.data) < size:
        app.arrived.clear()
        await asyncio.wait_for(app.arrived.wait(), 5)
    data = bytes(app.data)
    app.data.clear()
    return data


async def _exchange(bundle: Path, ca: Path) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(bundle))
    owner = Owner()
    server = await loop.create_server(lambda: TLSServerStream(owner, context, 5.0),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tls = ServerTls(TlsClient(TlsSettings(ca=(str(ca),)), ("http/1.1",), ca.read_text()),
                    "app.test")
    client_app = Recorder()
    client = await asyncio.wait_for(
        open_tls(client_app, tls, tls.handshake("app.test"), ("127.0.0.1", port)), 5)
    server_stream, server_app = await asyncio.wait_for(owner.opened, 5)
    ends: tuple[tuple[str, TLSClientStream | TLSServerStream, Recorder, Recorder], ...] = (
        ("client", client, client_app, server_app), ("server", server_stream, server_app,
                                                      client_app))
    for name, stream, _, _ in ends:
        seen[f"{name} ssl_object"] = isinstance(stream.get_extra_info("ssl_object"),
                                                ssl.SSLObject)
        seen[f"{name} peername"] = stream.get_extra_info("peername") is not None
        seen[f"{name} can_write_eof"] = stream.can_write_eof()
        stream.set_write_buffer_limits(high=64 * 1024)
        seen[f"{name} buffer"] = stream.get_write_buffer_size()
    for name, stream, _, peer_app in ends:
        stream.write(b"hello from the " + name.encode())
        stream.writelines([b" in ", b"two parts"])
        seen[f"{name} sent"] = await _receive(peer_app, len(name) + 28)
    # Paused: records arrive but are not delivered until reading resumes.
    for name, stream, _, _ in ends:
        stream.pause_reading()
        seen[f"{name} reading while paused"] = stream.is_reading()
    for name, stream, app, _ in ends:
        other = server_stream if stream is client else client
        other.write(b"x" * 40_000)  # several records
        await asyncio.sleep(0.1)  # no event says "nothing was delivered": give it the time
        seen[f"{name} delivered while paused"] = len(app.data)
        stream.resume_reading()
        seen[f"{name} after resume"] = len(await _receive(app, 40_000))
    # Half-close: the client sends close_notify and still reads the server's answer.
    client.write_eof()
    await asyncio.wait_for(server_app.eof, 5)
    seen["client closing after write_eof"] = client.is_closing()
    server_stream.write(b"answer after close_notify")
    seen["answer after close_notify"] = await _receive(client_app, 25)
    server_stream.close()
    await asyncio.wait_for(client_app.lost, 5)
    seen["server closing"] = server_stream.is_closing()
    seen["failures"] = owner.failures
    client.abort()
    seen["client closing after abort"] = client.is_closing()
    server.close()
    await server.wait_closed()
    return seen


def test_both_streams_carry_records_both_ways(pki) -> None:
    loop = uvloop.new_event_loop()
    try:
        seen = loop.run_until_complete(asyncio.wait_for(
            _exchange(pki.bundle(["app.test"]), pki.ca), 30))
    finally:
        loop.close()
    for name in ("client", "server"):
        assert seen[f"{name} ssl_object"]
        assert seen[f"{name} peername"]
        assert seen[f"{name} can_write_eof"]
        assert seen[f"{name} buffer"] == 0
        assert seen[f"{name} sent"] == f"hello from the {name} in two parts".encode()
        assert seen[f"{name} reading while paused"] is False
        assert seen[f"{name} delivered while paused"] == 0
        assert seen[f"{name} after resume"] == 40_000
    assert seen["client closing after write_eof"] is False, "a half-close still reads"
    assert seen["answer after close_notify"] == b"answer after close_notify"
    assert seen["server closing"]
    assert seen["client closing after abort"]
    assert seen["failures"] == []
