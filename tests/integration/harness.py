"""Real processes, real sockets, real TLS for integration tests.

``Offload`` runs ``python -m offload`` as a child process and follows its JSON log; backends are
small threaded TCP servers on 127.0.0.1; ``TlsPipe`` is a TLS client on memory BIOs so tests can
do what ordinary clients cannot (half-close with close_notify or FIN and keep reading).
Everything is bounded in time and cleans up after itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

Event = dict[str, Any]
WAIT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need(tool: str, package: str) -> str:
    """Path of an external tool, or fail saying how to install it (never skip)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; install it with: apt-get install -y {package}")
    return path


class Offload:
    """An offload instance run from a TOML config, with its log parsed as it arrives."""

    def __init__(self, config: str | Path, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = Path(config) if args is None else None
        command = args if args is not None else ["run", "-c", str(config)]
        self.events: list[Event] = []
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "offload", *command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
        self._readers = [
            threading.Thread(target=self._follow, args=(stream,), daemon=True)
            for stream in (self.process.stderr, self.process.stdout)
        ]
        for reader in self._readers:
            reader.start()

    def _follow(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"raw": line}
            if not isinstance(event, dict):
                event = {"raw": line}
            with self._changed:
                self.lines.append(line)
                self.events.append(event)
                self._changed.notify_all()
        stream.close()

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = WAIT,
                 after: int = 0) -> Event:
        """The first log event (from index ``after``) matching ``predicate``; fails on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not any(
                        r.is_alive() for r in self._readers)):
                    log = "\n".join(self.lines[-40:])
                    pytest.fail(f"no matching log event within {timeout}s; last lines:\n{log}")
                self._changed.wait(min(remaining, 0.2))

    def wait_msg(self, msg: str, timeout: float = WAIT, after: int = 0, **fields: Any) -> Event:
        return self.wait_for(lambda e: e.get("msg") == msg and all(
            e.get(k) == v for k, v in fields.items()), timeout, after)

    def wait_ready(self, timeout: float = WAIT) -> Event:
        return self.wait_msg("offload ready", timeout)

    def messages(self, msg: str) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e.get("msg") == msg]

    def worker_pids(self) -> set[int]:
        """Workers started and not yet exited, according to the log."""
        started = {e["pid"] for e in self.messages("worker started")}
        exited = {e["pid"] for e in self.messages("worker exited")}
        exited |= {e["pid"] for e in self.messages("worker died; restarting it")}
        return started - exited

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill the whole process group (supervisor and workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)
        for reader in self._readers:
            reader.join(5)


# ------------------------------------------------------------------------ backends

@dataclass
class Recording:
    """What a backend connection received."""

    data: bytearray = field(default_factory=bytearray)
    closed: threading.Event = field(default_factory=threading.Event)


Handler = Callable[[socket.socket, Recording], None]


class TcpBackend:
    """A threaded TCP server on 127.0.0.1 that runs ``handler`` for every connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self.connections: list[Recording] = []
        self.accepted = threading.Semaphore(0)
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            recording = Recording()
            self.connections.append(recording)
            self.accepted.release()
            threading.Thread(target=self._serve, args=(conn, recording), daemon=True).start()

    def _serve(self, conn: socket.socket, recording: Recording) -> None:
        try:
            conn.settimeout(30)
            self._handler(conn, recording)
        except OSError:
            pass
        finally:
            conn.close()
            recording.closed.set()

    def wait_connections(self, count: int, timeout: float = WAIT) -> list[Recording]:
        for _ in range(count):
            if not self.accepted.acquire(timeout=timeout):
                pytest.fail(f"backend got {len(self.connections)} connections, expected {count}")
        return self.connections

    def close(self) -> None:
        self._stop = True
        self._listener.close()


def echo(conn: socket.socket, recording: Recording) -> None:
    """Send back everything; FIN after the client's FIN."""
    while chunk := conn.recv(65536):
        recording.data += chunk
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)


def record(conn: socket.socket, recording: Recording) -> None:
    """Read until EOF, answer nothing."""
    while chunk := conn.recv(65536):
        recording.data += chunk


# ------------------------------------------------------------------------ TLS clients

def client_context(ca: Path, *, minimum: ssl.TLSVersion | None = None,
                   maximum: ssl.TLSVersion | None = None, ciphers: str | None = None,
                   alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client context that trusts the test CA and checks the host name."""
    context = ssl.create_default_context(cafile=str(ca))
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@contextlib.contextmanager
def tls_connect(port: int, context: ssl.SSLContext, server_name: str = "localhost",
                session: ssl.SSLSession | None = None, timeout: float = 10) -> Iterator[ssl.SSLSocket]:
    """A blocking TLS client connection to 127.0.0.1:port."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        with context.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
            yield tls
    finally:
        raw.close()


def recv_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Read until the peer closes (close_notify or FIN)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class TlsPipe:
    """A TLS client on memory BIOs over a blocking socket: half-close any way, keep reading."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str = "localhost",
                 timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_hostname=server_name)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self) -> bytes:
        """Some plaintext; b"" once the server sent close_notify. Raises SSLEOFError on a FIN
        without close_notify (truncation)."""
        while True:
            try:
                data = self.tls.read(65536)
                self._flush()
                return data
            except ssl.SSLZeroReturnError:
                return b""  # close_notify after ours: Python raises instead of returning b""
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def recv_all(self) -> bytes:
        chunks = []
        while chunk := self.recv():
            chunks.append(chunk)
        return b"".join(chunks)

    def close_notify(self) -> None:
        """Send close_notify, keep the connection open for reading."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()

    def send_fin(self) -> None:
        """Close the TCP sending side without close_notify."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def assert_resumes_on_every_worker(instance: Offload, port: int, context: ssl.SSLContext,
                                   rounds: int = 24) -> None:
    """A ticket from one full handshake resumes on every worker of ``instance`` (echo backend)."""
    with tls_connect(port, context) as tls:
        tls.sendall(b"first")
        assert tls.recv(10) == b"first"  # reading lets the client take the ticket
        session = tls.session
        assert not tls.session_reused
    closed_before = len(instance.messages("connection closed"))
    for index in range(rounds):
        with tls_connect(port, context, session=session) as tls:
            tls.sendall(b"again %d" % index)
            assert tls.recv(20) == b"again %d" % index
            assert tls.session_reused, f"connection {index} did a full handshake"
    instance.wait_for(
        lambda e: len(instance.messages("connection closed")) > closed_before + rounds)
    resumed_by = {e["pid"] for e in instance.messages("connection closed") if e["resumed"]}
    assert resumed_by == instance.worker_pids(), "resumed connections must reach every worker"
