"""offload.tls.sslobject: the C object behind an SSLObject carries a real TLS exchange, and an
SSLObject without one is used as it is."""

from __future__ import annotations

import ssl
from pathlib import Path

from offload.demo.pki import Authority, write_private
from offload.tls.sslobject import record_calls, server_object


def _pair(tmp_path: Path) -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    authority = Authority("sslobject test CA")
    write_private(tmp_path / "server.pem", authority.issue(["localhost"]).bundle())
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "server.pem")
    client_context = ssl.create_default_context(cadata=authority.pem().decode())
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_context.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_context.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    for _ in range(10):
        for ssl_object, outgoing, peer_incoming in ((client, bios[3], bios[0]),
                                                    (server, bios[1], bios[2])):
            try:
                ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_incoming.write(outgoing.read())
    return server, client, bios


def test_records_pass_through_the_inner_object(tmp_path: Path) -> None:
    server, client, bios = _pair(tmp_path)
    sender, receiver = record_calls(client), record_calls(server)
    assert sender is not client, "the C object is used where the interpreter has one"
    assert sender.write(b"hello over the record layer") == 27
    bios[0].write(bios[3].read())
    assert receiver.read(16384) == b"hello over the record layer"
    assert receiver.pending() == 0


def test_handshake_facts_through_the_inner_object_are_the_sslobjects(tmp_path: Path) -> None:
    server, client, bios = _pair(tmp_path)
    calls = record_calls(server)
    assert calls.version() == server.version() == "TLSv1.3"
    assert calls.cipher() == server.cipher()
    assert calls.selected_alpn_protocol() == server.selected_alpn_protocol()
    assert calls.session_reused == server.session_reused
    calls.do_handshake()  # done already: nothing more, no error
    bios[2].write(bios[1].read())
    try:
        client.read(100)
        raise AssertionError("nothing to read before the server's close_notify")
    except ssl.SSLWantReadError:
        pass
    try:
        calls.shutdown()  # what SSLObject.unwrap() calls: our close_notify is written
    except ssl.SSLWantReadError:
        pass  # the client's close_notify has not come
    bios[2].write(bios[1].read())
    assert client.read(100) == b"", "the client reads the server's close_notify: a clean end"


def test_an_object_without_the_inner_one_is_used_as_it_is() -> None:
    class Wrapper:
        unwrapped = False
        session_reused = False

        def read(self, size: int) -> bytes:
            return b"read"

        def write(self, data: bytes) -> int:
            return len(data)

        def pending(self) -> int:
            return 0

        def version(self) -> str:
            return "TLSv1.3"

        def unwrap(self) -> None:
            self.unwrapped = True

    wrapper = Wrapper()
    calls = record_calls(wrapper)  # type: ignore[arg-type]
    assert calls.read(4) == b"read" and calls.write(b"abc") == 3 and calls.pending() == 0
    assert calls.version() == "TLSv1.3" and calls.session_reused is False
    calls.shutdown()
    assert wrapper.unwrapped, "shutdown() is SSLObject.unwrap() when there is no inner object"


def test_a_server_object_made_directly_handshakes_and_is_what_the_sni_callback_gets(
        tmp_path: Path) -> None:
    authority = Authority("sslobject test CA")
    write_private(tmp_path / "server.pem", authority.issue(["localhost"]).bundle())
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "server.pem")
    seen: list[object] = []
    server_context.sni_callback = lambda ssl_object, name, context: seen.append(
        (ssl_object, name))
    client_context = ssl.create_default_context(cadata=authority.pem().decode())
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_object(server_context, bios[0], bios[1])
    client = client_context.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    assert isinstance(server, ssl.SSLObject) and server.server_side
    for _ in range(10):
        for ssl_object, outgoing, peer_incoming in ((client, bios[3], bios[0]),
                                                    (server, bios[1], bios[2])):
            try:
                ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_incoming.write(outgoing.read())
    assert server.version() == "TLSv1.3" and client.version() == "TLSv1.3"
    assert seen == [(server, "localhost")], "the callback is handed the SSLObject itself"
    assert client.write(b"ping") == 4
    bios[0].write(bios[3].read())
    assert server.read(100) == b"ping"
