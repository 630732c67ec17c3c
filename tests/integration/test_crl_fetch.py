"""Client certificates checked against CRLs fetched from their distribution points, over real
TLS: a CRL made in the test and served by a small HTTP server in the test."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Pki, http_config, tcp_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from harness import Offload, TlsPipe, client_context, echo, free_port
from http_client import read_responses

from offload.demo.pki import Authority, Issued, key_pem, new_key, write_private


class CrlServer:
    """Serves ``body`` at any path with ``status`` after ``delay`` seconds; counts requests."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.delay = 0.0
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                time.sleep(server.delay)
                body = server.body if server.status == 200 else b"no"
                self.send_response(server.status)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/clients.crl"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def crl_server() -> Iterator[CrlServer]:
    server = CrlServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def clients() -> Authority:
    return Authority("offload fetched-CRL client CA")


def make_crl(authority: Authority, revoked: list[Issued], *, next_update: dt.datetime | None = None,
             this_update: dt.datetime | None = None, key: object = None) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(authority.certificate.subject)
               .last_update(this_update or now - dt.timedelta(hours=1))
               .next_update(next_update or now + dt.timedelta(days=7)))
    for issued in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(issued.certificate.serial_number)
            .revocation_date(now - dt.timedelta(minutes=5)).build())
    crl = builder.sign(key or authority.key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(Encoding.DER)


def client_cert(authority: Authority, url: str) -> Issued:
    return authority.issue(["client.example.test"], client=True, crl_urls=(url,))


def frontend_lines(tmp_path: Path, cas: list[Authority], *, failure: str = "hard-fail",
                   extra: str = "") -> str:
    ca = tmp_path / "clients-ca.pem"
    ca.write_bytes(b"".join(authority.pem() for authority in cas))
    return (f'client_auth = "required"\nclient_ca = ["{ca}"]\nclient_crl_fetch = true\n'
            f'client_crl_failure = "{failure}"\nclient_crl_timeout = "2s"\n{extra}')


def context_for(pki: Pki, tmp_path: Path, client: Issued) -> ssl.SSLContext:
    context = client_context(pki.ca)
    tmp_path.mkdir(exist_ok=True)
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(client.cert_chain())
    write_private(key, key_pem(client.key))
    context.load_cert_chain(cert, key)
    return context


def get(port: int, context: ssl.SSLContext) -> bytes | None:
    """The response to one request, or None when the connection is closed without one."""
    try:
        pipe = TlsPipe(port, context, server_name="localhost")
    except (ssl.SSLError, ConnectionError):
        return None
    try:
        pipe.send(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        responses = read_responses(pipe, 1)
    except (ssl.SSLError, ConnectionError):
        return None
    finally:
        pipe.close()
    return responses[0] if responses else None


def received(pipe: TlsPipe, size: int) -> bytes:
    """Up to ``size`` bytes, fewer if the connection ends (closed or reset) first."""
    data = b""
    try:
        while len(data) < size and (chunk := pipe.recv()):
            data += chunk
    except (ssl.SSLError, ConnectionError):
        pass
    return data


Start = Callable[..., Offload]


def start_http(offload: Start, http_backend, port: int, bundle: Path, lines: str):
    server = http_backend()
    return offload(http_config(port, [bundle], [server.address], frontend=lines)), server


def refused_with(instance: Offload, cause: str) -> dict[str, object]:
    return instance.wait_for(lambda e: e.get("event") == "client_certificate_refused"
                             and e.get("cause") == cause)


def test_a_certificate_revoked_by_the_fetched_crl_is_refused(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server):
    revoked, good = client_cert(clients, crl_server.url), client_cert(clients, crl_server.url)
    crl_server.body = make_crl(clients, [revoked])
    instance, backend = start_http(offload, http_backend, port, localhost_bundle,
                                   frontend_lines(tmp_path, [clients]))
    assert get(port, context_for(pki, tmp_path, revoked)) is None
    event = refused_with(instance, "revoked")
    assert event["client"] == "127.0.0.1" and event["frontend"] == "web"
    assert not backend.requests
    response = get(port, context_for(pki, tmp_path, good))
    assert response is not None and response.startswith(b"HTTP/1.1 200 ")
    assert len(backend.requests) == 1
    assert get(port, context_for(pki, tmp_path, revoked)) is None, "refused from the cache"
    assert crl_server.requests == ["/clients.crl"], "fetched once, then cached"


@pytest.mark.parametrize("failure", ["hard-fail", "soft-fail"])
def test_an_unreachable_crl_refuses_or_lets_in_by_the_failure_policy(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, failure):
    nobody = f"http://127.0.0.1:{free_port()}/clients.crl"
    instance, backend = start_http(offload, http_backend, port, localhost_bundle,
                                   frontend_lines(tmp_path, [clients], failure=failure))
    response = get(port, context_for(pki, tmp_path, client_cert(clients, nobody)))
    instance.wait_msg("CRL fetch failed", url=nobody, reason="connect_failed")
    if failure == "hard-fail":
        assert response is None
        assert refused_with(instance, "crl_unavailable")["detail"] == "connect_failed"
        assert not backend.requests
    else:
        assert response is not None and response.startswith(b"HTTP/1.1 200 ")
        event = instance.wait_for(lambda e: e.get("event") == "client_certificate_unchecked")
        assert (event["cause"], event["client"]) == ("crl_unavailable", "127.0.0.1")
        assert backend.requests[-1].header("X-SSL-Client-Verify") == "SUCCESS"


@pytest.mark.parametrize("case", ["stale", "bad signature", "not found", "not a CRL"])
def test_a_crl_that_cannot_be_used_counts_as_unavailable(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server, case):
    now = dt.datetime.now(dt.UTC)
    if case == "stale":
        crl_server.body = make_crl(clients, [], this_update=now - dt.timedelta(days=8),
                                   next_update=now - dt.timedelta(days=1))
    elif case == "bad signature":
        crl_server.body = make_crl(clients, [], key=new_key("ecdsa"))
    elif case == "not found":
        crl_server.status = 404
    else:
        crl_server.body = b"<html>hello</html>"
    reason = {"stale": "stale_crl", "bad signature": "bad_signature", "not found": "http_404",
              "not a CRL": "not_a_crl"}[case]
    instance, backend = start_http(offload, http_backend, port, localhost_bundle,
                                   frontend_lines(tmp_path, [clients]))
    assert get(port, context_for(pki, tmp_path, client_cert(clients, crl_server.url))) is None
    assert refused_with(instance, "crl_unavailable")["detail"] == reason
    assert not backend.requests


def test_a_new_crl_is_fetched_once_the_old_one_reaches_its_next_update(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server):
    client = client_cert(clients, crl_server.url)
    next_update = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    crl_server.body = make_crl(clients, [], next_update=next_update)
    instance, _ = start_http(offload, http_backend, port, localhost_bundle,
                             frontend_lines(tmp_path, [clients]))
    context = context_for(pki, tmp_path, client)
    assert get(port, context) is not None
    crl_server.body = make_crl(clients, [client])  # published meanwhile: revokes the client
    response = get(port, context)
    assert response is not None and response.startswith(b"HTTP/1.1 200 "), "old CRL current"
    assert len(crl_server.requests) == 1
    time.sleep(max(0.0, next_update.timestamp() - time.time()) + 0.2)
    assert get(port, context) is None, "the connection waited for the new CRL"
    refused_with(instance, "revoked")
    assert len(crl_server.requests) == 2


def test_a_crl_older_than_refresh_is_fetched_again_in_the_background(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server):
    client = client_cert(clients, crl_server.url)
    crl_server.body = make_crl(clients, [])
    instance, _ = start_http(offload, http_backend, port, localhost_bundle, frontend_lines(
        tmp_path, [clients], extra='client_crl_refresh = "1s"\n'))
    context = context_for(pki, tmp_path, client)
    assert get(port, context) is not None
    crl_server.body = make_crl(clients, [client])
    deadline = time.monotonic() + 10
    while get(port, context) is not None:  # the old CRL answers until the refresh lands
        assert time.monotonic() < deadline, "the CRL was never fetched again"
        time.sleep(0.2)
    refused_with(instance, "revoked")
    assert len(crl_server.requests) >= 2


def test_tcp_mode_holds_the_stream_until_the_crl_is_known(
        pki, clients, backend, offload, port, tmp_path, localhost_bundle, crl_server):
    revoked, good = client_cert(clients, crl_server.url), client_cert(clients, crl_server.url)
    crl_server.body = make_crl(clients, [revoked])
    server = backend(echo)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address],
                                  frontend=frontend_lines(tmp_path, [clients])))
    pipe = TlsPipe(port, context_for(pki, tmp_path, good), server_name="localhost")
    pipe.send(b"sent before the CRL was fetched")
    assert received(pipe, 31) == b"sent before the CRL was fetched"
    pipe.close()
    refused = TlsPipe(port, context_for(pki, tmp_path, revoked), server_name="localhost")
    refused.send(b"never relayed")
    assert received(refused, 1) == b""
    refused.close()
    refused_with(instance, "revoked")
    assert len(server.connections) == 1


def test_a_certificate_without_a_distribution_point_is_not_fetched_for(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server):
    _, backend = start_http(offload, http_backend, port, localhost_bundle,
                            frontend_lines(tmp_path, [clients]))
    plain = clients.issue(["client.example.test"], client=True)
    response = get(port, context_for(pki, tmp_path, plain))
    assert response is not None and response.startswith(b"HTTP/1.1 200 ")
    assert backend.requests[-1].header("X-SSL-Client-Verify") == "SUCCESS"
    assert not crl_server.requests


def test_the_crl_of_an_intermediate_ca_is_checked_with_its_key(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server):
    middle = clients.intermediate("offload fetched-CRL intermediate")
    revoked = client_cert(middle, crl_server.url)
    crl_server.body = make_crl(middle, [revoked])
    instance, _ = start_http(offload, http_backend, port, localhost_bundle,
                             frontend_lines(tmp_path, [clients, middle]))
    assert get(port, context_for(pki, tmp_path, revoked)) is None
    refused_with(instance, "revoked")
    good = get(port, context_for(pki, tmp_path, client_cert(middle, crl_server.url)))
    assert good is not None and good.startswith(b"HTTP/1.1 200 ")


def test_connections_waiting_for_one_crl_share_one_fetch(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle, crl_server):
    crl_server.body = make_crl(clients, [])
    crl_server.delay = 0.5
    _, backend = start_http(offload, http_backend, port, localhost_bundle,
                            frontend_lines(tmp_path, [clients]))
    contexts = [context_for(pki, tmp_path / str(n), client_cert(clients, crl_server.url))
                for n in range(4)]
    results: list[bytes | None] = []
    threads = [threading.Thread(target=lambda c=c: results.append(get(port, c)))
               for c in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert len(results) == 4
    assert all(r is not None and r.startswith(b"HTTP/1.1 200 ") for r in results)
    assert crl_server.requests == ["/clients.crl"]
    assert len(backend.requests) == 4


def test_a_crl_server_that_never_answers_is_given_up_on_after_the_timeout(
        pki, clients, http_backend, offload, port, tmp_path, localhost_bundle):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/clients.crl"
        instance, backend = start_http(offload, http_backend, port, localhost_bundle,
                                       frontend_lines(tmp_path, [clients]))
        started = time.monotonic()
        assert get(port, context_for(pki, tmp_path, client_cert(clients, url))) is None
        assert time.monotonic() - started < 8, "held for the timeout (2s), not forever"
        assert refused_with(instance, "crl_unavailable")["detail"] == "timeout"
        assert not backend.requests
