"""TLS to the backends on a real instance: verified by default, the reason of every refusal
counted, SNI from the Host, client certificates, resumption, a pool that never mixes SNIs,
TCP mode with a PROXY header before the ClientHello, and health checks over TLS.

The backends are :class:`tls_backend.TlsBackend` servers that report what they saw (the SNI,
whether the handshake was resumed, the client certificate), with certificates from the test
CA or from a CA offload does not know.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Pki, http_config, tcp_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from harness import Offload, TlsPipe, client_context, free_port, need
from http_client import get, https
from test_admin import api, samples, value, with_admin
from tls_backend import PROXY_V2_SIGNATURE, IdleSignalBackend, TlsBackend

from offload.demo.pki import Authority, cert_pem, write_private
from offload.tls.keys import key_pem, new_key


@pytest.fixture
def tls_backend() -> Iterator[Callable[..., TlsBackend]]:
    started: list[TlsBackend] = []

    def start(bundle: Path, **options: object) -> TlsBackend:
        server = TlsBackend(bundle, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def wait_metric(admin_port: int, metric: str, expected: float, timeout: float = 10,
                **labels: str) -> None:
    """Poll /metrics until ``metric`` (with ``labels``) reaches ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        found = value(samples(admin_port), metric, **labels)
        if found == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{metric}{labels} is {found}, expected {expected}")
        time.sleep(0.1)


def backend_lines(pki: Pki, extra: str = "") -> str:
    return f'tls = true\nca = "{pki.ca}"\n{extra}'


def answer(conn, path: str = "/", host: str = "app.test") -> tuple[int, dict]:
    response, body = get(conn, path, Host=host)
    return response.status, (json.loads(body) if response.status in (200, 421) else {})


def test_a_verified_backend_gets_the_host_as_sni_and_resumes_its_sessions(
        pki, localhost_bundle, offload, port, tls_backend):
    server = tls_backend(pki.bundle(["app.test", "other.test"]))
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   backend=backend_lines(pki, "pool_max_idle = 0")))
    for index in range(4):  # no pooling: every request opens a connection
        conn = https(port, pki.ca)
        status, seen = answer(conn, f"/{index}", host="app.test")
        conn.close()
        assert status == 200
        assert seen["sni"] == "app.test" and seen["host"] == "app.test"
    assert [shake.resumed for shake in server.handshakes] == [False, True, True, True], \
        "after the first handshake, every one resumes the server's session"
    assert {shake.version for shake in server.handshakes} == {"TLSv1.3"}
    assert {shake.alpn for shake in server.handshakes} == {"http/1.1"}, \
        "HTTP backends are offered http/1.1 only (offload speaks HTTP/1.1 to them)"
    conn = https(port, pki.ca)
    status, seen = answer(conn, host="other.test:8443")
    assert status == 200 and seen["sni"] == "other.test" and not seen["resumed"], \
        "another SNI, another session"
    instance.stop()


def test_a_chain_with_two_intermediates_verifies_against_the_root(
        pki, localhost_bundle, offload, port, tls_backend, tmp_path):
    # nginx's default proxy_ssl_verify_depth of 1 refuses such a chain (Let's Encrypt's
    # can have two intermediates); OpenSSL's default depth is kept
    first = _intermediate(pki.authority, "first intermediate")
    second = _intermediate(first, "second intermediate")
    bundle = tmp_path / "deep.pem"
    issued = second.issue(["app.test"])
    write_private(bundle, cert_pem(issued.certificate) + cert_pem(second.certificate)
                  + cert_pem(first.certificate) + key_pem(issued.key))
    server = tls_backend(bundle)
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   backend=backend_lines(pki)))
    conn = https(port, pki.ca)
    assert answer(conn)[0] == 200, instance.messages("backend TLS handshake failed: unknown_ca")


def _intermediate(parent: Authority, name: str) -> Authority:
    """A CA under ``parent`` that may itself sign CAs (no path length limit)."""
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(parent.certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(parent.key, hashes.SHA256()))
    return Authority(key=key, certificate=certificate)


def test_tls12_backends_resume_too(pki, localhost_bundle, offload, port, tls_backend):
    server = tls_backend(pki.bundle(["app.test"]), tls13=False)
    offload(http_config(port, [localhost_bundle], [server.address],
                        backend=backend_lines(pki, "pool_max_idle = 0")))
    for _ in range(3):
        conn = https(port, pki.ca)
        assert answer(conn)[0] == 200
        conn.close()
    assert [(s.version, s.resumed) for s in server.handshakes] == [
        ("TLSv1.2", False), ("TLSv1.2", True), ("TLSv1.2", True)]


def _expired(pki: Pki, path: Path) -> Path:
    now = dt.datetime.now(dt.UTC)
    issued = pki.authority.issue(["app.test"], not_before=now - dt.timedelta(days=30),
                                 not_after=now - dt.timedelta(days=1))
    write_private(path, issued.bundle())
    return path


@pytest.mark.parametrize("problem", ["unknown_ca", "expired", "name_mismatch"])
def test_a_certificate_that_does_not_verify_is_a_502_counted_by_reason(
        pki, localhost_bundle, offload, port, tls_backend, tmp_path, problem):
    if problem == "unknown_ca":
        bundle = tmp_path / "stranger.pem"
        write_private(bundle, Authority("a CA offload does not know").issue(
            ["app.test"]).bundle())
    elif problem == "expired":
        bundle = _expired(pki, tmp_path / "expired.pem")
    else:
        bundle = pki.bundle(["elsewhere.test"])
    server = tls_backend(bundle)
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], [server.address],
                                              backend=backend_lines(pki)), admin_port))
    conn = https(port, pki.ca)
    response, body = get(conn, "/", Host="app.test")
    assert response.status == 502
    assert problem.encode() not in body and b"certificate" not in body, \
        "the client learns nothing of the backend's certificate"
    event = instance.wait_msg(f"backend TLS handshake failed: {problem}")
    assert event["reason"] == problem and event["server"] == server.address
    assert server.handshakes == [], "no request reached the server"
    wait_metric(admin_port, "offload_backend_tls_errors_total", 1, backend="app",
                reason=problem)
    instance.wait_for(lambda e: e.get("status") == 502 and e.get("reason") == "backend_tls")


def test_verify_false_works_warns_and_shows(pki, localhost_bundle, offload, port, tls_backend,
                                            tmp_path):
    bundle = tmp_path / "stranger.pem"
    write_private(bundle, Authority("self-made").issue(["whatever.test"]).bundle())
    server = tls_backend(bundle)
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], [server.address],
                                              backend="tls = true\nverify = false"),
                                  admin_port))
    assert any("verify = false" in str(event.get("msg", "")) for event in instance.events), \
        "the start warns about it"
    conn = https(port, pki.ca)
    assert answer(conn)[0] == 200
    backends = api(admin_port, "/api/backends")["backends"]
    assert backends[0]["servers"][0]["tls"] == "unverified"
    assert value(samples(admin_port), "offload_backend_server_tls", backend="app",
                 verify="false") == 1


def test_sni_follows_the_host_so_a_strict_backend_answers_every_host(
        pki, localhost_bundle, offload, port, tls_backend):
    # Apache httpd (2025) answers 421 when the SNI differs from the Host
    server = tls_backend(pki.bundle(["a.test", "b.test"]), strict_sni=True)
    offload(http_config(port, [localhost_bundle], [server.address], backend=backend_lines(pki)))
    conn = https(port, pki.ca)
    for host in ["a.test", "b.test", "a.test", "b.test", "a.test"]:
        status, seen = answer(conn, host=host)
        assert status == 200, seen
        assert seen["sni"] == host


def test_the_pool_never_gives_a_connection_to_another_sni(
        pki, localhost_bundle, offload, port, tls_backend):
    server = tls_backend(pki.bundle(["a.test", "b.test"]))
    offload(http_config(port, [localhost_bundle], [server.address], backend=backend_lines(pki)))
    conns = [https(port, pki.ca) for _ in range(3)]
    for round_ in range(4):
        for index, conn in enumerate(conns):
            host = "a.test" if (index + round_) % 2 else "b.test"
            assert answer(conn, host=host)[0] == 200
    assert len(server.handshakes) >= 2
    for shake in server.handshakes:
        assert {request["host"] for request in shake.requests} <= {shake.sni}, \
            "every request on a connection has the Host of the connection's SNI"
    reused = [shake for shake in server.handshakes if len(shake.requests) > 1]
    assert reused, "connections are pooled and reused for their own SNI"


def test_a_fixed_sni_and_verify_name(pki, localhost_bundle, offload, port, tls_backend):
    server = tls_backend(pki.bundle(["internal.test"]))
    offload(http_config(port, [localhost_bundle], [
        f'{{ address = "{server.address}", sni = "none", verify_name = "internal.test" }}'],
        backend=backend_lines(pki)))
    conn = https(port, pki.ca)
    status, seen = answer(conn, host="public.test")
    assert status == 200 and seen["sni"] is None and seen["host"] == "public.test"


def test_a_backend_that_requires_a_client_certificate(
        pki, localhost_bundle, offload, port, tls_backend, tmp_path):
    server = tls_backend(pki.bundle(["app.test"]), client_ca=pki.ca)
    client = tmp_path / "client.pem"
    write_private(client, pki.authority.issue(["offload-proxy"], client=True).bundle())
    admin_port = free_port()
    without = offload(with_admin(http_config(port, [localhost_bundle], [server.address],
                                             backend=backend_lines(pki)), admin_port))
    conn = https(port, pki.ca)
    assert get(conn, "/", Host="app.test")[0].status == 502
    without.wait_msg("backend TLS handshake failed: client_certificate_refused")
    wait_metric(admin_port, "offload_backend_tls_errors_total", 1,
                reason="client_certificate_refused")
    without.stop()

    port2 = free_port()
    offload(http_config(port2, [localhost_bundle], [server.address],
                        backend=backend_lines(pki, f'client_certificate = "{client}"')))
    conn = https(port2, pki.ca)
    status, seen = answer(conn)
    assert status == 200 and seen["client"] == "commonName=offload-proxy"


def test_a_readable_client_key_is_refused_like_a_frontend_key(
        pki, localhost_bundle, tmp_path, port):
    client = tmp_path / "client.pem"
    client.write_bytes(pki.authority.issue(["offload-proxy"], client=True).bundle())
    client.chmod(0o644)
    config = tmp_path / "offload.toml"
    config.write_text(http_config(port, [localhost_bundle], ["127.0.0.1:9"],
                                  backend=backend_lines(pki, f'client_certificate = "{client}"')))
    instance = Offload(config, args=["check", "-c", str(config)])
    assert instance.process.wait(20) != 0
    text = "\n".join(instance.lines)
    assert "backends[0].client_certificate" in text and "readable by" in text
    instance.kill()


def test_offload_check_reports_what_each_server_verifies(pki, localhost_bundle, tmp_path, port):
    config = tmp_path / "offload.toml"
    config.write_text(http_config(port, [localhost_bundle], [
        "127.0.0.1:9", '{ address = "127.0.0.2:9", verify = false }',
        '{ address = "127.0.0.3:9", tls = false }'], backend=backend_lines(pki)))
    instance = Offload(config, args=["check", "-c", str(config)])
    assert instance.process.wait(20) == 0
    text = "\n".join(instance.lines)
    assert f"server 127.0.0.1:9: TLS (intermediate) verified against {pki.ca}" in text
    assert "server 127.0.0.2:9: TLS (intermediate) NOT VERIFIED (verify = false)" in text
    assert "server 127.0.0.3:9: plain TCP" in text
    assert "warning: backends[0] (app), server 127.0.0.2:9: TLS without verification" in text
    instance.kill()


def test_health_checks_fail_on_a_certificate_that_does_not_verify(
        pki, localhost_bundle, offload, port, tls_backend, tmp_path):
    bundle = tmp_path / "stranger.pem"
    write_private(bundle, Authority("unknown").issue(["app.test"]).bundle())
    bad = tls_backend(bundle)
    good = tls_backend(pki.bundle(["app.test"]))
    admin_port = free_port()
    instance = offload(with_admin(http_config(
        port, [localhost_bundle], [bad.address, good.address],
        backend=backend_lines(pki, '[backends.health_check]\nhost = "app.test"\n'
                                   'interval = "200ms"\nfall = 1\nrise = 1')), admin_port))
    event = instance.wait_msg("backend server down", server=bad.address)
    assert event["check"] == "failed: tls: unknown_ca"
    deadline = time.monotonic() + 10
    while True:  # the admin API shows the workers' last statistics: wait for both checks
        servers = {s["name"]: s
                   for s in api(admin_port, "/api/backends")["backends"][0]["servers"]}
        if all(s["check"] for s in servers.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert servers[bad.address]["check"] == "failed: tls: unknown_ca"
    assert servers[bad.address]["health"] == "down"
    assert servers[good.address]["check"] == "ok: status 200"
    assert servers[good.address]["tls"] == "verified"
    conn = https(port, pki.ca)
    for _ in range(4):
        assert answer(conn)[0] == 200, "only the good server gets requests"
    assert any(shake.sni == "app.test" for shake in good.handshakes), \
        "the check sends its Host as SNI"


def test_tcp_mode_sends_the_proxy_header_before_the_client_hello_and_the_clients_sni(
        pki, offload, port, tls_backend):
    server = tls_backend(pki.bundle(["app.test"]), proxy_header=True, echo=True)
    front = pki.bundle(["app.test"])
    offload(tcp_config(port, [front], [server.address],
                       backend=backend_lines(pki, 'proxy_protocol = "v2"')))
    pipe = TlsPipe(port, client_context(pki.ca), server_name="app.test")
    pipe.send(b"hello through two TLS hops")
    assert pipe.recv() == b"hello through two TLS hops"
    pipe.close_notify()
    assert pipe.recv_all() == b""
    pipe.close()
    shake = server.handshakes[0]
    assert shake.proxy_header.startswith(PROXY_V2_SIGNATURE), \
        "the PROXY header came in clear, before the ClientHello"
    assert shake.sni == "app.test", "the client's SNI goes on to the server"


def test_tcp_mode_refuses_a_backend_whose_certificate_does_not_verify(
        pki, offload, port, tls_backend, tmp_path):
    bundle = tmp_path / "stranger.pem"
    write_private(bundle, Authority("unknown").issue(["app.test"]).bundle())
    server = tls_backend(bundle, echo=True)
    front = pki.bundle(["app.test"])
    instance = offload(tcp_config(port, [front], [server.address], backend=backend_lines(pki)))
    pipe = TlsPipe(port, client_context(pki.ca), server_name="app.test")
    pipe.send(b"never relayed")
    with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout)):
        data = pipe.recv()
        assert data == b"", "nothing comes back"
        raise ConnectionError("closed")
    instance.wait_msg("backend TLS handshake failed: unknown_ca")
    pipe.close()


@pytest.mark.parametrize("what", ["ticket", "close_notify"])
def test_a_ticket_or_close_notify_on_an_idle_connection_is_not_a_protocol_error(
        pki, localhost_bundle, offload, port, what):
    # TLS 1.3 servers may send a NewSessionTicket at any time, and close an idle connection
    # with close_notify: neither is a server speaking unasked on an idle HTTP connection
    server = IdleSignalBackend(pki.bundle(["app.test"]), what)
    try:
        admin_port = free_port()
        instance = offload(with_admin(http_config(
            port, [localhost_bundle], [server.address], backend=backend_lines(pki)),
            admin_port))
        conn = https(port, pki.ca)
        assert get(conn, "/first", Host="app.test")[0].status == 200
        server.release.set()
        assert server.idle_sent.wait(10)
        assert get(conn, "/second", Host="app.test")[0].status == 200
        if what == "ticket":
            assert server.connections == [[b"GET /first HTTP/1.1", b"GET /second HTTP/1.1"]], \
                "the ticket was absorbed and the connection reused"
        else:
            assert server.connections == [[b"GET /first HTTP/1.1"], [b"GET /second HTTP/1.1"]]
        assert value(samples(admin_port), "offload_backend_protocol_errors_total") == 0
        assert not instance.messages("backend protocol error: unsolicited")
    finally:
        server.close()


def test_the_client_certificate_is_reloaded_when_its_file_changes(
        pki, localhost_bundle, offload, port, tls_backend, tmp_path):
    server = tls_backend(pki.bundle(["app.test"]), client_ca=pki.ca)
    client = tmp_path / "client.pem"
    write_private(client, pki.authority.issue(["proxy-one"], client=True).bundle())
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   backend=backend_lines(pki, f'client_certificate = "{client}"')))
    conn = https(port, pki.ca)
    assert answer(conn)[1]["client"] == "commonName=proxy-one"

    replacement = tmp_path / "client.pem.new"
    write_private(replacement, pki.authority.issue(["proxy-two"], client=True).bundle())
    replacement.rename(client)  # as certbot and friends do
    instance.wait_msg("backend client certificate updated", pid=next(iter(instance.worker_pids())))
    status, seen = answer(conn)
    assert status == 200 and seen["client"] == "commonName=proxy-two", \
        "a connection made with the old certificate is not reused"

    after = len(instance.events)
    broken = tmp_path / "client.pem.broken"
    write_private(broken, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    broken.rename(client)
    instance.wait_msg("backend client certificate rejected, the previous one stays in use",
                      after=after)
    assert answer(conn)[1]["client"] == "commonName=proxy-two"


def test_http_mode_sends_the_proxy_header_before_the_client_hello_per_client(
        pki, localhost_bundle, offload, port, tls_backend):
    server = tls_backend(pki.bundle(["app.test"]), proxy_header=True)
    offload(http_config(port, [localhost_bundle], [server.address],
                        backend=backend_lines(pki, 'proxy_protocol = "v2"')))
    first, second = https(port, pki.ca), https(port, pki.ca)
    for conn in (first, second, first, second):
        assert answer(conn)[0] == 200
    assert len(server.handshakes) == 4, "a connection with a PROXY header is never pooled"
    for shake in server.handshakes:
        assert shake.proxy_header.startswith(PROXY_V2_SIGNATURE)
        assert len(shake.requests) == 1
    assert [shake.resumed for shake in server.handshakes] == [False, True, True, True]


def _proxy_then_http(conn: socket.socket, recording) -> None:
    """A plain backend behind PROXY v2: the header, then keep-alive requests."""
    head = b""
    while len(head) < 16:
        head += conn.recv(16 - len(head))
    length = int.from_bytes(head[14:16], "big")
    while len(head) < 16 + length:
        head += conn.recv(16 + length - len(head))
    recording.data += head
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
        request, _, buffer = buffer.partition(b"\r\n\r\n")
        recording.data += request + b"\r\n\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_http_mode_sends_the_proxy_header_first_to_a_plain_backend(
        pki, localhost_bundle, offload, port, backend):
    # the header moved from the exchange into opening the connection: plain servers still
    # get it first, once per connection, and such a connection is never pooled
    server = backend(_proxy_then_http)
    offload(http_config(port, [localhost_bundle], [server.address],
                        backend='proxy_protocol = "v2"'))
    first, second = https(port, pki.ca), https(port, pki.ca)
    for conn in (first, second, first):
        response, body = get(conn, "/")
        assert response.status == 200 and body == b"ok"
    recordings = server.wait_connections(3)
    for recording in recordings:
        data = bytes(recording.data)
        assert data.startswith(PROXY_V2_SIGNATURE)
        assert data.count(PROXY_V2_SIGNATURE) == 1 and data.count(b"GET / HTTP/1.1") == 1


def test_an_http2_client_reaches_a_tls_backend_with_its_authority_as_sni(
        pki, offload, port, tls_backend):
    curl = need("curl", "curl")
    server = tls_backend(pki.bundle(["app.test"]))
    front = pki.bundle(["app.test"])
    offload(http_config(port, [front], [server.address], backend=backend_lines(pki),
                        frontend='alpn = ["h2", "http/1.1"]'))
    result = subprocess.run(
        [curl, "-s", "--http2", "--cacert", str(pki.ca), "--resolve",
         f"app.test:{port}:127.0.0.1", "-w", "\n%{http_version}", f"https://app.test:{port}/h2"],
        capture_output=True, text=True, timeout=30, check=False)
    body, _, version = result.stdout.rpartition("\n")
    assert version == "2", result.stdout + result.stderr
    seen = json.loads(body)
    assert seen["sni"] == "app.test" and seen["host"] == f"app.test:{port}"
