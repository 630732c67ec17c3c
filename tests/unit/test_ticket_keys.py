"""The ticket-key bridge on real OpenSSL handshakes in memory: tickets made under a ring's key
resume on another context holding the same ring, not on one without it, and keys retired from
the ring stop resuming."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from tls_helpers import client_context, issued, write_bundle

from offload.fleet.ticket_schedule import TicketKey
from offload.tls.policy import server_context
from offload.tls.ticket_keys import TicketBridge, TicketKeyRing

_ROUNDS = 50


def _server(tmp_path: Path, ring: TicketKeyRing | None, bridge: TicketBridge,
            version: ssl.TLSVersion) -> ssl.SSLContext:
    context = server_context("intermediate")
    context.minimum_version = context.maximum_version = version
    bundle = write_bundle(tmp_path, "leaf.pem", issued(("fleet.test",)))
    context.load_cert_chain(bundle)
    if ring is not None:
        bridge.install(context, ring)
    return context


def _connect(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
             session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None]:
    """A handshake and one byte each way (TLS 1.3 tickets come after the handshake); whether
    the session was resumed, and the session to resume next time."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="fleet.test", session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(_ROUNDS):
        for index, side in enumerate((client, server)):
            if not done[index]:
                try:
                    side.do_handshake()
                    done[index] = True
                except ssl.SSLWantReadError:
                    pass
            (s_in if side is client else c_in).write((c_out if side is client
                                                      else s_out).read())
        if all(done):
            break
    server.write(b"x")
    c_in.write(s_out.read())
    assert client.read(1) == b"x"
    return client.session_reused, client.session


@pytest.fixture(scope="module")
def bridge() -> TicketBridge:
    return TicketBridge.load()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_tickets_resume_across_contexts_sharing_keys(
        tmp_path: Path, bridge: TicketBridge, version: ssl.TLSVersion) -> None:
    counted: list[tuple[str, str]] = []
    keys = (TicketKey.fresh(1000.0),)
    first_ring, second_ring = TicketKeyRing(lambda *c: counted.append(c)), TicketKeyRing()
    first_ring.update(keys)
    second_ring.update(keys)
    first = _server(tmp_path, first_ring, bridge, version)
    second = _server(tmp_path, second_ring, bridge, version)
    stranger = _server(tmp_path, None, bridge, version)
    client = client_context()
    resumed, session = _connect(client, first, None)
    assert not resumed and session is not None
    assert ("issued", "") in counted
    resumed, _ = _connect(client, second, session)
    assert resumed, "a ticket from one context did not resume on another with the same keys"
    resumed, _ = _connect(client, stranger, session)
    assert not resumed, "a context without the fleet's keys resumed a fleet ticket"


def test_older_key_still_decrypts_and_retired_key_does_not(tmp_path: Path,
                                                           bridge: TicketBridge) -> None:
    counted: list[tuple[str, str]] = []
    old, new = TicketKey.fresh(1000.0), TicketKey.fresh(2000.0)
    ring = TicketKeyRing(lambda *c: counted.append(c))
    ring.update((old,))
    server = _server(tmp_path, ring, bridge, ssl.TLSVersion.TLSv1_3)
    client = client_context()
    _, session = _connect(client, server, None)
    ring.update((new, old))  # rotated: the old key only decrypts
    resumed, _ = _connect(client, server, session)
    assert resumed
    assert ("resumed", "previous") in counted
    ring.update((new,))  # retired
    resumed, _ = _connect(client, server, session)
    assert not resumed
    assert ("unknown", "") in counted


def test_bridge_refuses_an_object_that_is_not_a_context(bridge: TicketBridge) -> None:
    from offload.tls.ticket_keys import TicketBridgeError
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    bridge._offset += 8  # read the wrong field: the check must notice
    try:
        with pytest.raises(TicketBridgeError, match=r"SSL_CTX|layout"):
            bridge.install(context, TicketKeyRing())
    finally:
        bridge._offset -= 8
