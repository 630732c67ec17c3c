"""A pooled TLS connection taken while the server's bytes wait unread in the socket.

The pool checks an idle connection for bytes the loop has not delivered yet before it reuses
it. Over TLS those bytes are records: a TLS 1.3 NewSessionTicket must be absorbed (the
connection stays usable), close_notify is an ordinary close, and application data is a server
speaking unasked. Driven in one coroutine so that the loop never gets to deliver the bytes
first: the server writes, the test waits until the client's socket is readable, and takes the
connection from the pool without yielding. Real sockets on 127.0.0.1, real OpenSSL on both
sides; the server is an ``SSLObject`` on memory BIOs so the test decides what it sends.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from pathlib import Path

import uvloop
from tls_backend import new_session_ticket

from offload.http.upstream import BackendConnection, ConnectionPool
from offload.proto.http1 import HttpLimits
from offload.tls.backend_tls import ServerTls, TlsClient, TlsSettings
from offload.tls.client_stream import open_tls


class Owner:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def protocol_error(self, connection: BackendConnection, reason: str, detail: str) -> None:
        self.errors.append(reason)

    def tls_failed(self, index: int, error: object) -> None:
        self.errors.append(f"tls {error}")


async def _server_handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                            tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                            outgoing: ssl.MemoryBIO) -> None:
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                await loop.sock_sendall(sock, outgoing.read())
            incoming.write(await loop.sock_recv(sock, 65536))
    await loop.sock_sendall(sock, outgoing.read())  # Finished's answer: the tickets


async def _pooled_then(what: str, bundle: Path, ca: Path) -> tuple[bool, list[str]]:
    """Open a TLS connection, pool it, have the server send ``what``, take it back: (whether
    the pool gave it back, what the owner was told)."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(bundle))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_tls = server_context.wrap_bio(incoming, outgoing, server_side=True)
    client = TlsClient(TlsSettings(ca=(str(ca),)), ("http/1.1",), ca.read_text())
    tls = ServerTls(client, "app.test")
    owner = Owner()
    connection = BackendConnection(0, HttpLimits(), owner)
    plan = tls.handshake("app.test")
    connection.key = plan.key
    accept = loop.create_task(loop.sock_accept(listener))
    opening = loop.create_task(open_tls(connection, tls, plan, ("127.0.0.1", port)))
    server_sock, _ = await accept
    await _server_handshake(loop, server_sock, server_tls, incoming, outgoing)
    await opening
    await asyncio.sleep(0.05)  # let the tickets of the handshake arrive: not what is tested
    pool = ConnectionPool(4)
    assert pool.give(connection, 0.0)
    if what == "ticket":
        new_session_ticket(server_tls)
    elif what == "close_notify":
        try:
            server_tls.unwrap()
        except ssl.SSLWantReadError:
            pass
    else:
        server_tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    server_sock.setblocking(True)
    server_sock.sendall(outgoing.read())
    readable, _, _ = select.select([connection.fd], [], [], 5)  # no yield to the loop
    assert readable, "the server's bytes wait in the client's socket"
    taken = pool.take(plan.key)
    given_back = taken is connection and not connection.closed
    connection.abort()
    server_sock.close()
    listener.close()
    await asyncio.sleep(0)
    return given_back, owner.errors


def _run(what: str, pki) -> tuple[bool, list[str]]:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(
            _pooled_then(what, pki.bundle(["app.test"]), pki.ca), 20))
    finally:
        loop.close()


def test_a_ticket_waiting_in_the_socket_is_absorbed_and_the_connection_reused(pki):
    assert _run("ticket", pki) == (True, [])


def test_close_notify_waiting_in_the_socket_is_an_ordinary_close(pki):
    assert _run("close_notify", pki) == (False, [])


def test_data_waiting_in_the_socket_is_a_server_speaking_unasked(pki):
    assert _run("data", pki) == (False, ["unsolicited"])

