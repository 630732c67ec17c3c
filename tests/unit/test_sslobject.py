"""offload.tls.sslobject: the C object behind an SSLObject carries a real TLS exchange, and an
SSLObject without one is used as it is."""

from __future__ import annotations

import ssl
from pathlib import Path

from offload.demo.pki import Authority, write_private
from offload.tls.sslobject import record_calls


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


def test_an_object_without_the_inner_one_is_used_as_it_is() -> None:
    class Wrapper:
        def read(self, size: int) -> bytes:
            return b""

        def write(self, data: bytes) -> int:
            return len(data)

        def pending(self) -> int:
            return 0

    wrapper = Wrapper()
    assert record_calls(wrapper) is wrapper  # type: ignore[arg-type]
