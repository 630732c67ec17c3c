"""Listening sockets: ``":PORT"`` is one dual-stack socket, ``"[::]:PORT"`` IPv6 only, and a
failed bind says what to do (offload.server.sockets)."""

from __future__ import annotations

import errno
import socket

import pytest

from offload.config.units import ALL_ADDRESSES, HostPort
from offload.server.sockets import ListenError, SocketSet, bind_listener
from offload.tls.stream import unmapped


def _ipv6_available() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def test_every_address_is_one_dual_stack_socket_that_takes_ipv4_clients() -> None:
    sock = bind_listener(HostPort(ALL_ADDRESSES, 0), 8, reuseport=False)
    try:
        port = sock.getsockname()[1]
        if _ipv6_available():
            assert sock.family == socket.AF_INET6
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        else:
            assert (sock.family, sock.getsockname()[0]) == (socket.AF_INET, "0.0.0.0")
        sock.setblocking(True)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, peer = sock.accept()
            accepted.close()
            assert unmapped(peer) == ("127.0.0.1", client.getsockname()[1])
    finally:
        sock.close()


@pytest.mark.skipif(not _ipv6_available(), reason="needs an IPv6 socket (the kernel has none)")
def test_the_ipv6_wildcard_stays_ipv6_only() -> None:
    sock = bind_listener(HostPort("::", 0), 8, reuseport=False)
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        sock.close()


def test_unmapped_leaves_other_addresses_alone() -> None:
    assert unmapped(("::ffff:192.0.2.7", 443, 0, 0)) == ("192.0.2.7", 443)
    assert unmapped(("2001:db8::1", 443, 0, 0)) == ("2001:db8::1", 443, 0, 0)
    assert unmapped(("::ffff:0:1", 443, 0, 0)) == ("::ffff:0:1", 443, 0, 0)
    assert unmapped(("192.0.2.7", 443)) == ("192.0.2.7", 443)
    assert unmapped(None) is None


def test_an_address_in_use_is_a_listen_error_with_a_fix() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        sockets = SocketSet(reuseport=True)
        with pytest.raises(ListenError) as caught:
            sockets.ensure([(HostPort("127.0.0.1", port), 8)], 2)
    error = caught.value
    assert error.errno == errno.EADDRINUSE
    assert error.address == HostPort("127.0.0.1", port)
    assert error.strerror == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert error.fix().startswith(f"stop what holds port {port}")
    assert sockets.all() == []
