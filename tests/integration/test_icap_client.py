"""The ICAP client against a real c-icap + ClamAV with a test signature, and against servers
that misbehave (silent, garbage, refusing connections), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
import uvloop
from harness import free_port
from icap_server import INFECTED_MARKER, SIGNATURE, IcapServer, running_icap_server

from offload.http.icap_client import IcapClient
from offload.proto.icap import parse_icap_url
from offload.timers import LoopClock

HTTP_REQUEST = b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Type: text/plain\r\n\r\n"
HTTP_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Length: 100\r\n\r\n")
CLEAN = b"an ordinary upload, nothing to see here\n"
INFECTED = b"prefix " + INFECTED_MARKER + b" suffix\n"


def run(scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    """On uvloop, as in a worker (its transports are no asyncio.Transport subclasses)."""
    async def main() -> None:
        await asyncio.wait_for(scenario(asyncio.get_running_loop()), 30)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def client_for(url: str, loop: asyncio.AbstractEventLoop, **kwargs: int) -> IcapClient:
    return IcapClient(parse_icap_url(url), LoopClock(loop), **kwargs)


@pytest.fixture(scope="module")
def icap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IcapServer]:
    with running_icap_server(tmp_path_factory.mktemp("icap")) as server:
        yield server


def test_clean_upload_is_clean_and_the_connection_is_kept(icap_server: IcapServer) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(icap_server.url, loop)
        for _ in range(3):
            verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=10)
            assert verdict.kind == "clean", verdict
        assert client.options is not None and client.options.preview == 1024
        assert {"REQMOD", "RESPMOD"} <= client.options.methods
        assert (client.connections, client.idle_connections) == (1, 1)  # OPTIONS + 3 scans
        client.close()
    run(scenario)


def test_infected_upload_is_named(icap_server: IcapServer) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(icap_server.url, loop)
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=INFECTED, time_limit=10)
        assert (verdict.kind, verdict.signature) == ("infected", SIGNATURE), icap_server.log()
        # the connection survives a detection (the answer was read to its end)
        assert (await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=10)).kind == "clean"
        assert client.connections == 1
        client.close()
    run(scenario)


def test_beyond_the_preview(icap_server: IcapServer) -> None:
    """Bodies larger than the service's Preview (1024) go out after 100 Continue."""
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(icap_server.url, loop)
        late = b"x" * 5000 + INFECTED_MARKER + b"y" * 3000
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=late, time_limit=10)
        assert (verdict.kind, verdict.signature) == ("infected", SIGNATURE)
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=b"z" * 200_000, time_limit=10)
        assert verdict.kind == "clean"
        assert client.connections == 1
        client.close()
    run(scenario)


def test_infected_download(icap_server: IcapServer) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(icap_server.url, loop)
        get = b"GET /file HTTP/1.1\r\nHost: example.test\r\n\r\n"
        verdict = await client.scan("RESPMOD", get, http_response=HTTP_RESPONSE, body=INFECTED,
                                   time_limit=10)
        assert (verdict.kind, verdict.signature) == ("infected", SIGNATURE)
        verdict = await client.scan("RESPMOD", get, http_response=HTTP_RESPONSE, body=CLEAN,
                                   time_limit=10)
        assert verdict.kind == "clean"
        client.close()
    run(scenario)


def test_pool_is_bounded(icap_server: IcapServer) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(icap_server.url, loop, max_connections=2)
        bodies = [INFECTED if i % 3 == 0 else CLEAN for i in range(12)]
        verdicts = await asyncio.gather(*(client.scan("REQMOD", HTTP_REQUEST, body=body, time_limit=15)
                                          for body in bodies))
        assert [v.kind for v in verdicts] == ["infected" if b is INFECTED else "clean"
                                              for b in bodies]
        assert client.connections <= 2
        client.close()
    run(scenario)


def test_server_down_is_an_error() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(f"icap://127.0.0.1:{free_port()}/avscan", loop)
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=5)
        assert (verdict.kind, verdict.reason) == ("error", "icap_refused")
        assert client.connections == 0
        client.close()
    run(scenario)


# ------------------------------------------------------------------ servers that misbehave


class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection with ``reply`` (or nothing)."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.connections.append(conn)
            threading.Thread(target=self.reply, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(reply: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


OPTIONS_ANSWER = (b"ICAP/1.0 200 OK\r\nMethods: REQMOD, RESPMOD\r\nPreview: 10\r\n"
                  b"Encapsulated: null-body=0\r\n\r\n")


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    return data


def options_then(answer: bytes | None) -> Callable[[socket.socket], None]:
    """Answer OPTIONS properly and every other request with ``answer`` (None: silence)."""
    def reply(conn: socket.socket) -> None:
        try:
            while True:
                head = read_head(conn)
                if not head:
                    return
                if head.startswith(b"OPTIONS "):
                    conn.sendall(OPTIONS_ANSWER)
                elif answer is not None:
                    conn.sendall(answer)
        except OSError:
            pass
    return reply


def test_silent_server_times_out_on_the_clock(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(options_then(None))

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(f"icap://127.0.0.1:{server.port}/avscan", loop)
        started = loop.time()
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=0.5)
        assert (verdict.kind, verdict.reason) == ("error", "icap_timeout")
        assert 0.45 <= loop.time() - started < 3
        assert client.connections == 0  # the connection in an unknown state was closed
        client.close()
    run(scenario)


def test_silent_options_time_out(raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(lambda conn: (read_head(conn), conn.recv(1)))  # type: ignore[func-returns-value]

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(f"icap://127.0.0.1:{server.port}/avscan", loop)
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=0.3)
        assert (verdict.kind, verdict.reason) == ("error", "icap_timeout")
        await asyncio.sleep(0)  # the OPTIONS request's own deadline fired at the same time
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=0.3)
        assert verdict.kind == "error"  # failed a moment ago: no new OPTIONS storm
        assert server.accepted == 1
        client.close()
    run(scenario)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=5\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"ICAP/1.0 204 No Content\r\nX: " + b"a" * 70_000,
])
def test_garbage_answers_are_errors(raw_server: Callable[..., RawServer], answer: bytes) -> None:
    server = raw_server(options_then(answer))

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(f"icap://127.0.0.1:{server.port}/avscan", loop)
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=5)
        assert verdict.kind == "error" and verdict.reason.startswith("icap_"), verdict
        assert client.connections == 0
        client.close()
    run(scenario)


def test_busy_pool_refuses_instead_of_queueing_without_end(
        raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(options_then(None))

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(f"icap://127.0.0.1:{server.port}/avscan", loop,
                            max_connections=1, max_waiting=1)
        verdicts = await asyncio.gather(*(client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=0.5)
                                          for _ in range(3)))
        reasons = sorted(v.reason for v in verdicts)
        assert reasons == ["icap_busy", "icap_timeout", "icap_timeout"]
        assert client.connections == 0
        client.close()
    run(scenario)


def test_a_connection_the_server_closed_is_retried_once(
        raw_server: Callable[..., RawServer]) -> None:
    """The service closes a kept-alive connection just as the next scan goes out on it (its
    keep-alive timeout): the scan goes again on a new connection, and only once."""
    def reply(conn: socket.socket) -> None:
        first = server.accepted == 1
        try:
            while head := read_head(conn):
                if head.startswith(b"OPTIONS "):
                    conn.sendall(OPTIONS_ANSWER)
                elif first:
                    conn.close()  # without a word
                    return
                else:
                    conn.sendall(b"ICAP/1.0 204 No Content\r\n\r\n")
        except OSError:
            pass

    server = raw_server(reply)

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = client_for(f"icap://127.0.0.1:{server.port}/avscan", loop)
        verdict = await client.scan("REQMOD", HTTP_REQUEST, body=CLEAN, time_limit=5)
        assert verdict.kind == "clean", verdict
        assert server.accepted == 2
        client.close()
    run(scenario)
