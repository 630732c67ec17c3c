"""Messages from the supervisor to a worker over a pipe: certificate changes and the like.

Each message is a 4-byte length and a pickle (both ends are offload processes of the same
instance, so pickle is safe here and carries certificates as they are). The supervisor never
blocks: what the pipe cannot take now waits in :class:`Outbox` until the pipe is writable.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

from offload.tls.store import FileCertificates

_LENGTH = 4
MAX_MESSAGE = 1 << 30


@dataclass(frozen=True)
class CertificatesChanged:
    """A frontend's certificate files changed: the files now served, in order, and the new
    content of those added or replaced (None: removed)."""

    frontend: str
    order: tuple[str, ...]
    changed: dict[str, FileCertificates | None] = field(repr=False)


def encode(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


class Outbox:
    """The supervisor's end of one worker's control pipe (non-blocking)."""

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
    """The worker's end: bytes in, whole messages out."""

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
