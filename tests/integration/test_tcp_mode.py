"""TCP mode over real sockets and real TLS: relay, half-close, failover, bad input, timeouts."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from conftest import tcp_config
from harness import (
    Recording,
    TcpBackend,
    TlsPipe,
    client_context,
    echo,
    free_port,
    record,
    recv_all,
    rss_kib,
    tls_connect,
)


def test_bytes_flow_both_ways_unchanged(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    offload(tcp_config(port, [localhost_bundle], [server.address]))
    payload = os.urandom(5 * 1024 * 1024)
    received = bytearray()
    pipe = TlsPipe(port, client_context(pki.ca))
    for offset in range(0, len(payload), 256 * 1024):
        block = payload[offset : offset + 256 * 1024]
        pipe.send(block)
        goal = offset + len(block)
        while len(received) < goal:
            received += pipe.recv()
    pipe.close_notify()
    assert pipe.recv_all() == b""
    pipe.close()
    assert pipe.tls.version() == "TLSv1.3"
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    recording = server.wait_connections(1)[0]
    assert recording.closed.wait(10)
    assert recording.data == payload


def _reply_after_eof(conn: socket.socket, recording: Recording) -> None:
    while chunk := conn.recv(65536):
        recording.data += chunk
    digest = hashlib.sha256(recording.data).hexdigest().encode()
    conn.sendall(digest + b"\n" + b"x" * 300_000)


@pytest.mark.parametrize("how", ["close_notify", "fin"])
def test_client_half_close_still_gets_the_answer(pki, localhost_bundle, backend, offload, port, how):
    server = backend(_reply_after_eof)
    offload(tcp_config(port, [localhost_bundle], [server.address]))
    body = os.urandom(1024 * 1024)
    pipe = TlsPipe(port, client_context(pki.ca))
    pipe.send(body)
    pipe.close_notify() if how == "close_notify" else pipe.send_fin()
    answer = pipe.recv_all()
    pipe.close()
    assert answer == hashlib.sha256(body).hexdigest().encode() + b"\n" + b"x" * 300_000


def _greet_then_half_close(conn: socket.socket, recording: Recording) -> None:
    conn.sendall(b"hello\n")
    conn.shutdown(socket.SHUT_WR)
    while chunk := conn.recv(65536):
        recording.data += chunk


def test_backend_half_close_lets_the_client_keep_sending(pki, localhost_bundle, backend,
                                                       offload, port):
    server = backend(_greet_then_half_close)
    offload(tcp_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    assert pipe.recv_all() == b"hello\n"  # then close_notify from offload
    pipe.send(b"still talking")
    pipe.close_notify()
    recording = server.wait_connections(1)[0]
    assert recording.closed.wait(10)
    pipe.close()
    assert recording.data == b"still talking"


def test_round_robin_with_failover(pki, localhost_bundle, backend, offload, port):
    first, second = backend(echo), backend(echo)
    dead = f"127.0.0.1:{free_port()}"
    instance = offload(tcp_config(port, [localhost_bundle], [first.address, dead, second.address]))
    context = client_context(pki.ca)
    for index in range(6):
        with tls_connect(port, context) as tls:
            tls.sendall(b"ping %d" % index)
            assert tls.recv(100) == b"ping %d" % index
    # the dead server's turns go to the next server in line
    assert (len(first.connections), len(second.connections)) == (2, 4)
    instance.wait_for(lambda e: e.get("msg") == "backend connect failed"
                      and e.get("server") == dead and e.get("reason"))


def test_no_backend_answers_closes_cleanly(pki, localhost_bundle, offload, port):
    instance = offload(tcp_config(port, [localhost_bundle], [f"127.0.0.1:{free_port()}"]))
    with tls_connect(port, client_context(pki.ca)) as tls:
        assert recv_all(tls) == b""
    instance.wait_for(lambda e: e.get("msg") == "connection closed"
                      and e.get("reason") == "backend_unavailable")


def test_backend_reset_midstream_truncates_visibly(pki, localhost_bundle, backend, offload, port):
    def reset_after_some(conn: socket.socket, recording: Recording) -> None:
        conn.sendall(b"partial answer")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = backend(reset_after_some)
    offload(tcp_config(port, [localhost_bundle], [server.address]))
    pipe = TlsPipe(port, client_context(pki.ca))
    assert pipe.recv() == b"partial answer"
    with pytest.raises(ssl.SSLEOFError):
        pipe.recv()  # FIN without close_notify: the client can tell the stream was cut
    pipe.close()


def _assert_still_serving(port, ca, server):
    with tls_connect(port, client_context(ca)) as tls:
        tls.sendall(b"alive?")
        assert tls.recv(100) == b"alive?"


@pytest.mark.parametrize(("garbage", "reasons"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", {"bad_client_hello"}),
    (b"\x16\x03\x01\x00\x05hello", {"bad_client_hello", "client_closed"}),
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", {"bad_client_hello", "tls_error"}),
    (bytes(range(256)) * 16, {"bad_client_hello", "tls_error"}),
])
def test_garbage_instead_of_client_hello(pki, localhost_bundle, backend, offload, port,
                                         garbage, reasons):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(garbage)
        raw.shutdown(socket.SHUT_WR)
        reply = recv_all(raw)
    assert not reply.startswith(b"HTTP")  # at most a TLS alert record
    if reply:
        assert reply[0] == 0x15  # alert
    event = instance.wait_msg("handshake failed")
    assert event["reason"] in reasons, event
    _assert_still_serving(port, pki.ca, server)
    assert len(server.connections) == 1  # garbage never reached the backend


def test_client_alert_is_counted(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]))
    untrusting = ssl.create_default_context()  # does not trust the test CA: sends an alert
    with pytest.raises(ssl.SSLCertVerificationError), tls_connect(port, untrusting):
        pass
    event = instance.wait_msg("handshake failed")
    assert event["reason"] == "client_alert"
    _assert_still_serving(port, pki.ca, server)


def test_handshake_timeout(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend='handshake_timeout = "500ms"'))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        started = time.monotonic()
        raw.sendall(b"\x16\x03\x01")  # a ClientHello that never finishes
        assert recv_all(raw) == b""
        waited = time.monotonic() - started
    assert 0.3 < waited < 5
    assert instance.wait_msg("handshake failed")["reason"] == "timeout"
    _assert_still_serving(port, pki.ca, server)


def test_idle_timeout_closes_silent_connections(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend='idle_timeout = "600ms"'))
    with tls_connect(port, client_context(pki.ca)) as tls:
        tls.sendall(b"x")
        assert tls.recv(10) == b"x"
        started = time.monotonic()
        assert recv_all(tls) == b""
        assert 0.4 < time.monotonic() - started < 5
    instance.wait_for(lambda e: e.get("reason") == "idle_timeout")


def test_upstream_timeout_bounds_idle_in_tcp_mode(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    offload(tcp_config(port, [localhost_bundle], [server.address],
                       backend='server_timeout = "500ms"'))
    with tls_connect(port, client_context(pki.ca)) as tls:
        started = time.monotonic()
        assert recv_all(tls) == b""
        assert time.monotonic() - started < 5


def test_max_connections_pauses_accepting(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    offload(tcp_config(port, [localhost_bundle], [server.address],
                       global_="max_connections = 3"))
    context = client_context(pki.ca)
    held = [TlsPipe(port, context) for _ in range(3)]
    hello_maker = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                   server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        hello_maker.do_handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as late:  # kernel queues it
        late.sendall(outgoing.read())
        late.settimeout(1.0)
        with pytest.raises(TimeoutError):
            late.recv(1)  # not accepted: no ServerHello
        held[0].close()
        late.settimeout(10)
        assert late.recv(1) == b"\x16"  # accepting resumed: a handshake record arrives
    for pipe in held[1:]:
        pipe.close()


def test_proxy_protocol_v1(pki, localhost_bundle, backend, offload, port):
    server = backend(record)
    offload(tcp_config(port, [localhost_bundle], [server.address], backend='proxy_protocol = "v1"'))
    pipe = TlsPipe(port, client_context(pki.ca))
    client_port = pipe.sock.getsockname()[1]
    pipe.send(b"payload")
    pipe.close_notify()
    assert pipe.recv_all() == b""
    pipe.close()
    recording = server.wait_connections(1)[0]
    assert recording.closed.wait(10)
    expected = f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n".encode()
    assert bytes(recording.data) == expected + b"payload"


def test_proxy_protocol_v2_carries_tls_facts(pki, localhost_bundle, backend, offload, port):
    from offload.proto import proxy_protocol as pp

    server = backend(record)
    offload(tcp_config(port, [localhost_bundle], [server.address],
                       frontend='alpn = ["x-test"]', backend='proxy_protocol = "v2"'))
    pipe = TlsPipe(port, client_context(pki.ca, alpn=["x-test"]))
    client_port = pipe.sock.getsockname()[1]
    cipher = pipe.tls.cipher()[0]
    assert pipe.tls.selected_alpn_protocol() == "x-test"
    pipe.send(b"after the header")
    pipe.close_notify()
    assert pipe.recv_all() == b""
    pipe.close()
    recording = server.wait_connections(1)[0]
    assert recording.closed.wait(10)
    data = bytes(recording.data)
    assert data.startswith(pp.V2_SIGNATURE)
    assert data[12] == 0x21 and data[13] == 0x11  # v2 PROXY, TCP over IPv4
    length = struct.unpack("!H", data[14:16])[0]
    assert data[16:20] == socket.inet_aton("127.0.0.1")
    assert struct.unpack("!HH", data[24:28]) == (client_port, port)
    assert data[16 + length :] == b"after the header"
    parsed, used = pp.parse(data)
    assert used == 16 + length
    assert parsed.tlvs[pp.PP2_TYPE_ALPN] == b"x-test"
    assert parsed.tlvs[pp.PP2_TYPE_AUTHORITY] == b"localhost"
    assert parsed.ssl_tlvs[pp.PP2_SUBTYPE_SSL_VERSION] == b"TLSv1.3"
    assert parsed.ssl_tlvs[pp.PP2_SUBTYPE_SSL_CIPHER] == cipher.encode()


def test_proxy_protocol_v2_with_a_name_idna_refuses(pki, localhost_bundle, backend, offload,
                                                   port):
    """OpenSSL passes any SNI bytes; the header must carry them, not fail the connection."""
    import subprocess

    from harness import need

    from offload.proto import proxy_protocol as pp

    def answer_once(conn: socket.socket, recording: Recording) -> None:
        while b"ping" not in recording.data:
            recording.data += conn.recv(4096)
        conn.sendall(b"pong\n")

    server = backend(answer_once)
    offload(tcp_config(port, [localhost_bundle], [server.address], backend='proxy_protocol = "v2"'))
    result = subprocess.run(
        [need("openssl", "openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
         "-servername", "a..b", "-quiet"],
        input="ping\n", capture_output=True, text=True, timeout=20, check=False)
    assert "pong" in result.stdout
    header, _ = pp.parse(bytes(server.wait_connections(1)[0].data))
    assert header.tlvs[pp.PP2_TYPE_AUTHORITY] == b"a..b"


def test_no_alpn_in_tcp_mode_unless_configured(pki, localhost_bundle, backend, offload, port):
    server = backend(echo)
    offload(tcp_config(port, [localhost_bundle], [server.address]))
    with tls_connect(port, client_context(pki.ca, alpn=["h2", "http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() is None


def test_slow_reader_does_not_grow_memory(pki, localhost_bundle, backend, offload, port):
    total = 256 * 1024 * 1024

    def flood(conn: socket.socket, recording: Recording) -> None:
        block = b"z" * 65536
        sent = 0
        while sent < total:
            conn.sendall(block)
            sent += len(block)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    server = backend(flood)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]))
    (worker,) = instance.worker_pids()
    with tls_connect(port, client_context(pki.ca), timeout=30) as tls:
        first = tls.recv(65536)
        assert first
        time.sleep(0.5)  # the backend pushes as fast as it can while we do not read
        before = rss_kib(worker)
        time.sleep(2.5)
        after = rss_kib(worker)
        assert after - before < 4096, f"memory grew by {after - before} KiB while not reading"
        received = len(first)
        while True:
            chunk = tls.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    assert received == total


def test_tcp_nodelay_and_fast_open_on_listeners():
    from offload.config.units import HostPort
    from offload.server.sockets import bind_listener

    sock = bind_listener(HostPort("127.0.0.1", 0), 16, reuseport=True)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        fastopen = Path("/proc/sys/net/ipv4/tcp_fastopen").read_text().strip()
        if int(fastopen) & 2:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) > 0
    finally:
        sock.close()


def test_unix_socket_backend(pki, localhost_bundle, offload, port, tmp_path):
    path = tmp_path / "app.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(conn.recv(100).upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    offload(tcp_config(port, [localhost_bundle], [f"unix:{path}"]))
    with tls_connect(port, client_context(pki.ca)) as tls:
        tls.sendall(b"over unix")
        assert tls.recv(100) == b"OVER UNIX"
    listener.close()


def test_backend_unused_until_handshake_done(pki, localhost_bundle, offload, port):
    server = TcpBackend(echo)
    try:
        offload(tcp_config(port, [localhost_bundle], [server.address]))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"\x16\x03\x01\x02\x00")
            time.sleep(0.3)
        assert server.connections == []
    finally:
        server.close()
