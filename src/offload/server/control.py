"""Messages between the supervisor and a worker, one pipe each way.

Supervisor to worker (the control pipe): certificate changes, a backend server's admin state,
requests for statistics. Worker to supervisor (the status pipe): ready, stopped accepting,
statistics. Each message is a 4-byte length and a pickle (both ends are offload processes of the same
instance, so pickle is safe here and carries certificates as they are). The supervisor never
blocks: what the pipe cannot take now waits in :class:`Outbox` until the pipe is writable.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

from offload.observe.snapshot import WorkerStats
from offload.security.bans import BanEvent
from offload.tls.certs import LoadedCertificate
from offload.tls.store import FileCertificates
from offload.upstream.balancer import AdminState

_LENGTH = 4
MAX_MESSAGE = 1 << 30


@dataclass(frozen=True)
class CertificatesChanged:
    """A frontend's certificate files changed: the files now served, in order, and the new
    content of those added or replaced (None: removed)."""

    frontend: str
    order: tuple[str, ...]
    changed: dict[str, FileCertificates | None] = field(repr=False)


@dataclass(frozen=True)
class BackendCertificateChanged:
    """A client certificate for backend servers (``client_certificate``) was replaced."""

    path: str
    certificate: LoadedCertificate = field(repr=False)


@dataclass(frozen=True)
class ServerAdmin:
    """Set a backend server's admin state (drain, disable, enable) from the admin API."""

    backend: str
    server: str
    state: AdminState


@dataclass(frozen=True)
class StatsRequest:
    """Answer with a :class:`StatsReply` carrying the same ``request``."""

    request: int


@dataclass(frozen=True)
class BanList:
    """Clients banned until a ``time.monotonic()`` moment (the same clock in every process on
    Linux), and bans lifted early."""

    added: tuple[tuple[str, float], ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Offences:
    """A worker's offences since its last report: (client address, event, how many)."""

    reports: tuple[tuple[str, BanEvent, int], ...]
    dropped: int = 0
    """Offences left out because the batch was full."""


@dataclass(frozen=True)
class Ready:
    """The worker accepts on every listener."""


@dataclass(frozen=True)
class StoppedAccepting:
    """The drain has closed every listener of the worker."""


@dataclass(frozen=True)
class StatsReply:
    """A worker's statistics; ``request`` 0: sent unasked, as the worker exits."""

    request: int
    stats: WorkerStats = field(repr=False)


def encode(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


class Outbox:
    """The sending end of a pipe (non-blocking): what the pipe cannot take now waits here."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def send(self, message: object) -> bool:
        """Queue a message and write what the pipe takes; True when all of it is written."""
        self._buffer += encode(message)
        return self.flush()

    def flush(self) -> bool:
        while self._buffer:
            try:
                written = os.write(self.fd, self._buffer)
            except BlockingIOError:
                return False
            except BrokenPipeError:
                self._buffer.clear()  # the worker is gone; its exit is handled elsewhere
                return True
            del self._buffer[:written]
        return True


class Inbox:
    """The receiving end: bytes in, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        self._buffer += data
        messages: list[object] = []
        while len(self._buffer) >= _LENGTH:
            length = int.from_bytes(self._buffer[:_LENGTH], "big")
            if length > MAX_MESSAGE:
                raise ValueError("control message too large")
            if len(self._buffer) < _LENGTH + length:
                break
            payload = bytes(self._buffer[_LENGTH : _LENGTH + length])
            del self._buffer[: _LENGTH + length]
            messages.append(pickle.loads(payload))  # noqa: S301 - from our own supervisor
        return messages
