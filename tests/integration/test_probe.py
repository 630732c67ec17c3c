"""Active health checks over real sockets on 127.0.0.1 and a Unix socket, on asyncio and uvloop.

The backends are asyncio servers in the test's own loop that answer with a scripted reply (or
nothing); every wait is bounded so a broken probe fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from harness import free_port

from offload.config.model import EjectionConfig, HealthCheckConfig
from offload.upstream.balancer import ServerState
from offload.upstream.health import HealthTracker
from offload.upstream.probe import HealthChecker, health_request, judge_status_line, probe
from offload.upstream.servers import Server

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
BOUND = 5.0

HTTP = HealthCheckConfig.model_validate({"path": "/healthz", "expect": "200-299",
                                         "timeout": "2s"})
TCP = HealthCheckConfig.model_validate({"kind": "tcp", "timeout": "2s"})
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def run(factory: LoopFactory, scenario: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are limited to about 100 bytes, so not pytest's long tmp_path.
    with tempfile.TemporaryDirectory(prefix="offload-", dir="/tmp") as directory:
        yield Path(directory)


class Stub:
    """A backend that reads each request head and answers ``reply`` (None: says nothing and
    waits for the client to leave), then closes. Records the heads it read."""

    def __init__(self, reply: bytes | None = OK) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0
        self.changed = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.server = Server("stub")

    async def start(self, unix_path: str = "") -> Stub:
        if unix_path:
            self._server = await asyncio.start_unix_server(self._handle, unix_path)
            self.server = Server("stub", unix_path=unix_path)
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            port = self._server.sockets[0].getsockname()[1]
            self.server = Server("stub", host="127.0.0.1", port=port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        self.changed.set()
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            self.changed.set()
            if self.reply is None:
                await reader.read()
            else:
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def wait(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        """Stop listening and wait for the connections to end (cancelling them if they do not,
        so that a failed test still closes everything)."""
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(BOUND):
                while self._handlers:
                    await asyncio.sleep(0.01)
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        async with asyncio.timeout(BOUND):
            await self._server.wait_closed()

    async def __aenter__(self) -> Stub:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# ------------------------------------------------------------------ probe, one result each


@pytest.mark.parametrize("factory", LOOPS)
@pytest.mark.parametrize(("reply", "expected"), [
    (OK, (True, "status 200")),
    (b"HTTP/1.0 204\r\n\r\n", (True, "status 204")),
    (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", (False, "status 503")),
    (b"HTTP/1.1 301 Moved Permanently\r\nLocation: /\r\n\r\n", (False, "status 301")),
    (b"SSH-2.0-OpenSSH_9.6\r\n", (False, "bad response")),
    (b"HTTP/2 200\r\n\r\n", (False, "bad response")),
    (b"HTTP/1.1 200 OK", (False, "bad response")),  # closed before the CRLF
    (b"A" * 20_000, (False, "bad response")),  # no CRLF within the limit
    (b"", (False, "connection closed")),
])
def test_http_probe_judges_the_status_line(factory: LoopFactory, reply: bytes,
                                           expected: tuple[bool, str]) -> None:
    async def scenario() -> None:
        async with await Stub(reply).start() as stub:
            assert await probe(stub.server, HTTP) == expected

    run(factory, scenario())


@pytest.mark.parametrize("factory", LOOPS)
def test_http_probe_sends_the_documented_request(factory: LoopFactory) -> None:
    async def scenario() -> None:
        named = HealthCheckConfig.model_validate({"path": "/status?full=1", "host": "app.test"})
        async with await Stub().start() as stub:
            assert await probe(stub.server, HTTP) == (True, "status 200")
            assert await probe(stub.server, named) == (True, "status 200")
        port = stub.server.port
        assert stub.requests == [
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"User-Agent: offload-health-check\r\nConnection: close\r\n\r\n" % port,
            b"GET /status?full=1 HTTP/1.1\r\nHost: app.test\r\n"
            b"User-Agent: offload-health-check\r\nConnection: close\r\n\r\n",
        ]

    run(factory, scenario())


@pytest.mark.parametrize("factory", LOOPS)
def test_silent_server_times_out_within_the_check_timeout(factory: LoopFactory) -> None:
    async def scenario() -> None:
        quick = HealthCheckConfig.model_validate({"timeout": "200ms"})
        async with await Stub(reply=None).start() as stub:
            started = time.monotonic()
            assert await probe(stub.server, quick) == (False, "timeout")
            # (uvloop's timers run on a millisecond clock, so allow a little early)
            assert 0.15 <= time.monotonic() - started < BOUND
            started = time.monotonic()
            assert await probe(stub.server, HTTP, timeout=0.1) == (False, "timeout")
            assert time.monotonic() - started < 1.5  # the override, not HTTP's 2 s
            await stub.wait(lambda: len(stub.requests) == 2)

    run(factory, scenario())


@pytest.mark.parametrize("factory", LOOPS)
@pytest.mark.parametrize("check", [HTTP, TCP], ids=["http", "tcp"])
def test_closed_port_is_refused(factory: LoopFactory, check: HealthCheckConfig) -> None:
    server = Server("gone", host="127.0.0.1", port=free_port())
    run(factory, _expect(probe(server, check), (False, "connect refused")))


@pytest.mark.parametrize("factory", LOOPS)
def test_tcp_probe_only_connects(factory: LoopFactory) -> None:
    async def scenario() -> None:
        async with await Stub(reply=None).start() as stub:
            assert await probe(stub.server, TCP) == (True, "connected")
            await stub.wait(lambda: stub.connections == 1)
        assert stub.requests == []

    run(factory, scenario())


@pytest.mark.parametrize("factory", LOOPS)
@pytest.mark.parametrize(("check", "expected"), [
    (HTTP, (True, "status 200")), (TCP, (True, "connected")),
], ids=["http", "tcp"])
def test_unix_socket_server(factory: LoopFactory, socket_dir: Path, check: HealthCheckConfig,
                            expected: tuple[bool, str]) -> None:
    async def scenario() -> None:
        async with await Stub().start(str(socket_dir / "app.sock")) as stub:
            assert await probe(stub.server, check) == expected
        if check is HTTP:
            assert stub.requests[0].startswith(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")

    run(factory, scenario())


@pytest.mark.parametrize("factory", LOOPS)
def test_missing_unix_socket(factory: LoopFactory, socket_dir: Path) -> None:
    server = Server("gone", unix_path=str(socket_dir / "missing.sock"))
    run(factory, _expect(probe(server, TCP), (False, "connect failed: no such file or directory")))


async def _expect(result: Coroutine[Any, Any, tuple[bool, str]],
                  expected: tuple[bool, str]) -> None:
    async with asyncio.timeout(BOUND):
        assert await result == expected


def test_request_and_status_line_helpers() -> None:
    v6 = Server("v6", host="::1", port=80)
    assert health_request(v6, HTTP).startswith(b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\n")
    assert judge_status_line(b"HTTP/1.1 200 OK\r\n", (200, 200)) == (True, "status 200")
    assert judge_status_line(b"HTTP/1.1 399 \r\n", (200, 399)) == (True, "status 399")
    assert judge_status_line(b"HTTP/1.1 400 Bad\r\n", (200, 399)) == (False, "status 400")
    assert judge_status_line(b"HTTP/1.1 200 OK\n", (200, 399)) == (False, "bad response")
    assert judge_status_line(b"HTTP/1.1  200 OK\r\n", (200, 399)) == (False, "bad response")
    assert judge_status_line(b"HTTP/1.1 2000\r\n", (200, 399)) == (False, "bad response")
    assert judge_status_line(b"HTTP/1.1 200 OK\r\nX", (200, 399)) == (False, "bad response")


# ------------------------------------------------------------------ HealthChecker


class Transitions:
    """Collects on_change calls and wakes whoever waits for a given one."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, index: int, transition: str) -> None:
        self.seen.append((index, transition))
        self.changed.set()

    async def wait_for(self, item: tuple[int, str]) -> None:
        async with asyncio.timeout(BOUND):
            while item not in self.seen:
                self.changed.clear()
                await self.changed.wait()


def trackers(check: HealthCheckConfig, count: int) -> list[HealthTracker]:
    return [HealthTracker(ServerState(index, 1), check, EjectionConfig()) for index in range(count)]


@pytest.mark.parametrize("factory", LOOPS)
def test_checker_marks_down_then_up(factory: LoopFactory) -> None:
    check = HealthCheckConfig.model_validate({"interval": "50ms", "timeout": "1s", "rise": 2,
                                              "fall": 2})

    async def scenario() -> None:
        seen = Transitions()
        [tracker] = trackers(check, 1)
        async with await Stub().start() as stub:
            checker = HealthChecker([stub.server], check, [tracker], seen)
            checker.start()
            try:
                await stub.wait(lambda: len(stub.requests) >= 3)
                assert seen.seen == []
                assert tracker.server.up
                assert checker.results[0] == (True, "status 200")

                stub.reply = b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
                await seen.wait_for((0, "down"))
                assert not tracker.server.up
                assert checker.results[0] == (False, "status 503")

                stub.reply = OK
                await seen.wait_for((0, "up"))
                assert tracker.server.up
                assert seen.seen == [(0, "down"), (0, "up")]
            finally:
                await checker.stop()
            probes = stub.connections
            await asyncio.sleep(4 * check.interval)
            assert stub.connections == probes  # stopped means stopped

    run(factory, scenario())


@pytest.mark.parametrize("factory", LOOPS)
def test_checker_reports_per_server_and_survives_a_failing_callback(
        factory: LoopFactory, caplog: pytest.LogCaptureFixture) -> None:
    check = HealthCheckConfig.model_validate({"kind": "tcp", "interval": "50ms", "timeout": "1s",
                                              "rise": 1, "fall": 1})

    async def scenario() -> None:
        stub = await Stub().start()  # closed in the middle of the test
        dead = Server("dead", host="127.0.0.1", port=free_port())
        seen = Transitions()
        calls = 0

        def on_change(index: int, transition: str) -> None:
            nonlocal calls
            calls += 1
            seen(index, transition)
            if calls == 1:
                raise RuntimeError("a broken callback")

        states = trackers(check, 2)
        checker = HealthChecker([stub.server, dead], check, states, on_change)
        checker.start()
        with pytest.raises(RuntimeError, match="already started"):
            checker.start()
        try:
            await seen.wait_for((1, "down"))  # unconfirmed: down at the first failure
            await stub.wait(lambda: stub.connections >= 3)
            assert checker.results[1] == (False, "connect refused")
            await stub.close()
            await seen.wait_for((0, "down"))  # the checker lived through the exception
        finally:
            await checker.stop()
            await stub.close()
        assert seen.seen == [(1, "down"), (0, "down")]
        assert [t.server.up for t in states] == [False, False]

    with caplog.at_level(logging.ERROR, logger="offload.upstream"):
        run(factory, scenario())
    assert "health check callback failed" in caplog.text


def test_checker_wants_one_tracker_per_server() -> None:
    with pytest.raises(ValueError, match="one tracker per server"):
        HealthChecker([Server("a", host="127.0.0.1", port=1)], TCP, [], lambda index, t: None)
