"""The keep-alive pool never hands out a connection on which the server has spoken unasked.

Real socket pairs stand in for backend connections: bytes (or an EOF) already waiting in the
socket, which the event loop has not delivered yet, are seen when the connection is taken.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from offload.http.upstream import BackendConnection, ConnectionPool
from offload.proto.http1 import HttpLimits


class Owner:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def protocol_error(self, connection: BackendConnection, reason: str, detail: str) -> None:
        self.errors.append(reason)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, server = socket.socketpair()
    yield ours, server
    ours.close()
    server.close()


def pooled(ours: socket.socket, owner: Owner) -> tuple[ConnectionPool, BackendConnection]:
    connection = BackendConnection(0, HttpLimits(), owner)
    connection.fd = ours.fileno()
    pool = ConnectionPool(4)
    assert pool.give(connection, 0.0)
    return pool, connection


def test_a_silent_idle_connection_is_reused(pair):
    owner = Owner()
    pool, connection = pooled(pair[0], owner)
    assert pool.take() is connection
    assert owner.errors == []


@pytest.mark.parametrize("late", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!",  # an answer nobody asked for
    b"the body that followed a HEAD answer",
    b"x",
])
def test_bytes_waiting_on_an_idle_connection_spoil_it(pair, late: bytes):
    owner = Owner()
    pool, connection = pooled(pair[0], owner)
    pair[1].sendall(late)
    assert pool.take() is None
    assert connection.closed and connection.spoiled
    assert owner.errors == ["unsolicited"]


def test_a_server_that_closed_an_idle_connection_is_not_an_error(pair):
    owner = Owner()
    pool, connection = pooled(pair[0], owner)
    pair[1].shutdown(socket.SHUT_WR)
    assert pool.take() is None
    assert connection.closed
    assert owner.errors == []


def test_the_next_silent_connection_is_taken_after_a_spoiled_one():
    owner = Owner()
    pool = ConnectionPool(4)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        connections = []
        for ours, _ in pairs:
            connection = BackendConnection(0, HttpLimits(), owner)
            connection.fd = ours.fileno()
            connections.append(connection)
            pool.give(connection, 0.0)
        pairs[1][1].sendall(b"HTTP/1.1 200 OK\r\n\r\n")  # the most recent one spoke
        assert pool.take() is connections[0]
        assert owner.errors == ["unsolicited"]
    finally:
        for ours, server in pairs:
            ours.close()
            server.close()


def test_a_connection_paused_for_a_slow_client_listens_again_when_pooled():
    """A response may end while its client is slow (the backend connection's reading paused);
    pooled like that, the next request's answer would never be read (a 504 a minute later)."""
    import asyncio

    from offload.config.model import BackendConfig
    from offload.http.upstream import HttpBackend
    from offload.observe.stats import Counters
    from offload.upstream.servers import resolve_backend

    async def scenario() -> bool:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            config = BackendConfig(name="app", servers=[f"127.0.0.1:{port}"])
            servers, _ = resolve_backend(config, "backends[0]")
            backend = HttpBackend(config, servers, Counters(), HttpLimits())
            connection = await backend.connect(0)
            accepted, _ = listener.accept()
            connection.pause_reading()
            backend.release(connection, True, 0.0)
            assert connection.transport is not None
            reading = connection.transport.is_reading()
            connection.close()
            await asyncio.sleep(0)
            accepted.close()
            return reading

    assert asyncio.run(scenario())
