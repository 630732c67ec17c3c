"""Listening sockets, bound by the supervisor and inherited by the workers.

With ``reuseport`` (the default) every worker slot gets its own ``SO_REUSEPORT`` socket per
address and the kernel spreads connections evenly; otherwise all workers share one socket. A
slot's socket outlives its worker: a restarted worker, or the next generation after a reload,
accepts on the very same socket, so connections waiting in its queue are never dropped.

Addresses: ``":443"`` (every address) is one IPv6 socket with ``IPV6_V6ONLY`` off, which takes
IPv4 clients too (as mapped addresses, reported as plain IPv4 by the listener); on a kernel
without IPv6 it falls back to an IPv4 socket on 0.0.0.0. ``"[::]:443"`` is IPv6 only, so that
it can sit beside ``"0.0.0.0:443"`` as nginx and HAProxy configurations write it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable

from offload.config.units import HostPort

TCP_FASTOPEN_QUEUE = 256


class ListenError(OSError):
    """An address could not be bound; ``address`` says which."""

    def __init__(self, address: HostPort, error: OSError) -> None:
        super().__init__(error.errno, f"cannot listen on {address}: {error.strerror}")
        self.address = address
        self.reason = error.strerror or str(error)

    def fix(self) -> str:
        """What to do about it, for the common causes."""
        port = self.address.port
        if self.errno == errno.EADDRINUSE:
            return (f"stop what holds port {port} (`ss -ltnp 'sport = :{port}'` shows it), or "
                    "choose another address")
        if self.errno == errno.EACCES:
            return ("ports below 1024 need root or CAP_NET_BIND_SERVICE: start offload as "
                    "root (global.user drops privileges in the workers), or use a port "
                    "above 1023")
        if self.errno == errno.EADDRNOTAVAIL:
            return (f"{self.address.host} is not an address of this machine: use one it has "
                    f"(`ip -brief address`), or \":{port}\" for every address")
        return "check the address, or choose another one"


def _open(family: socket.AddressFamily, host: str, address: HostPort, backlog: int, *,
          reuseport: bool, v6only: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, TCP_FASTOPEN_QUEUE)
        sock.bind((host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(address: HostPort, backlog: int, *, reuseport: bool) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY, and TCP Fast Open where the kernel offers it."""
    if address.all_addresses:
        try:
            return _open(socket.AF_INET6, "::", address, backlog, reuseport=reuseport,
                         v6only=False)
        except OSError as error:
            if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
        return _open(socket.AF_INET, "0.0.0.0", address, backlog, reuseport=reuseport,
                     v6only=False)
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return _open(family, address.host, address, backlog, reuseport=reuseport, v6only=True)


class SocketSet:
    """Every listening socket of the instance, by address and worker slot."""

    def __init__(self, *, reuseport: bool) -> None:
        self.reuseport = reuseport
        self._sockets: dict[tuple[HostPort, int], socket.socket] = {}

    def ensure(self, addresses: Iterable[tuple[HostPort, int]], slots: int) -> list[HostPort]:
        """Bind what is missing for ``slots`` workers; returns the addresses newly bound.

        On failure, closes what this call bound and raises :class:`ListenError`.
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
                            raise ListenError(address, error) from None
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
