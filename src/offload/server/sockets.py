"""Listening sockets, bound by the supervisor and inherited by the workers.

With ``reuseport`` (the default) every worker slot gets its own ``SO_REUSEPORT`` socket per
address and the kernel spreads connections evenly; otherwise all workers share one socket. A
slot's socket outlives its worker: a restarted worker, or the next generation after a reload,
accepts on the very same socket, so connections waiting in its queue are never dropped.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from offload.config.units import HostPort

TCP_FASTOPEN_QUEUE = 256


def bind_listener(address: HostPort, backlog: int, *, reuseport: bool) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY, and TCP Fast Open where the kernel offers it."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, TCP_FASTOPEN_QUEUE)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class SocketSet:
    """Every listening socket of the instance, by address and worker slot."""

    def __init__(self, *, reuseport: bool) -> None:
        self.reuseport = reuseport
        self._sockets: dict[tuple[HostPort, int], socket.socket] = {}

    def ensure(self, addresses: Iterable[tuple[HostPort, int]], slots: int) -> list[HostPort]:
        """Bind what is missing for ``slots`` workers; returns the addresses newly bound.

        On failure, closes what this call bound and raises OSError naming the address.
        """
        fresh: list[tuple[HostPort, int]] = []
        try:
            for address, backlog in addresses:
                for slot in range(slots if self.reuseport else 1):
                    if (address, slot) not in self._sockets:
                        try:
                            self._sockets[(address, slot)] = bind_listener(
                                address, backlog, reuseport=self.reuseport)
                        except OSError as error:
                            raise OSError(error.errno, f"cannot listen on {address}: "
                                          f"{error.strerror}") from None
                        fresh.append((address, slot))
        except OSError:
            for key in fresh:
                self._sockets.pop(key).close()
            raise
        return sorted({address for address, _ in fresh}, key=str)

    def for_slot(self, slot: int) -> dict[HostPort, socket.socket]:
        """The sockets a worker in ``slot`` accepts on, by address."""
        wanted = slot if self.reuseport else 0
        return {address: sock for (address, s), sock in self._sockets.items() if s == wanted}

    def all(self) -> list[socket.socket]:
        """Every socket (a new worker closes the ones that are not its own)."""
        return list(self._sockets.values())

    def retain(self, addresses: Iterable[HostPort], slots: int) -> None:
        """Close the sockets of addresses or slots no longer in use."""
        keep_addresses = set(addresses)
        keep_slots = slots if self.reuseport else 1
        for key in list(self._sockets):
            address, slot = key
            if address not in keep_addresses or slot >= keep_slots:
                self._sockets.pop(key).close()

    def close(self) -> None:
        """Close every socket."""
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
