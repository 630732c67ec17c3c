"""ACME against a local pebble CA: issuance by TLS-ALPN-01 and HTTP-01, renewal, a failed
challenge, and the issued certificate served through a real handshake."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Pki, tcp_config
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import Offload, echo, free_port, need, recv_all, tls_connect

from offload.demo.pki import write_private

NAME = "site.offload.test"
OTHER = "www.offload.test"


@dataclass
class Pebble:
    directory: str
    ca_file: Path
    management: int
    http_port: int
    tls_port: int

    def roots(self, context: ssl.SSLContext) -> bytes:
        """The root that signs pebble's certificates (a new one every time pebble starts)."""
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            data: bytes = response.read()
            return data


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited: {process.stdout.read() if process.stdout else ''!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}")


@pytest.fixture
def pebble(pki: Pki, tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Start pebble (and pebble-challtestsrv as its DNS, answering 127.0.0.1 for every name)
    validating on the given ports."""
    need("pebble", "pebble")
    need("pebble-challtestsrv", "pebble")
    processes: list[subprocess.Popen[bytes]] = []

    def start(http_port: int, tls_port: int) -> Pebble:
        dns, listen, management, challtest = free_port(), free_port(), free_port(), free_port()
        processes.append(subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
             "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"127.0.0.1:{challtest}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        _wait_port(challtest, processes[-1], "pebble-challtestsrv")
        served = pki.authority.issue(["localhost", "127.0.0.1"])
        (tmp_path / "pebble-cert.pem").write_bytes(served.cert_chain())
        write_private(tmp_path / "pebble-key.pem", served.bundle()[len(served.cert_chain()):])
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(tmp_path / "pebble-cert.pem"),
            "privateKey": str(tmp_path / "pebble-key.pem"),
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        (tmp_path / "pebble.json").write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        processes.append(subprocess.Popen(
            ["pebble", "-config", str(tmp_path / "pebble.json"), "-dnsserver",
             f"127.0.0.1:{dns}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        _wait_port(listen, processes[-1], "pebble")
        _wait_port(management, processes[-1], "pebble")
        return Pebble(f"https://127.0.0.1:{listen}/dir", pki.ca, management, http_port, tls_port)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _acme(pebble: Pebble, storage: Path, challenges: list[str], names: list[str],
          retry_after: str = "60s") -> str:
    return f"""
[acme]
directory = "{pebble.directory}"
directory_ca = "{pebble.ca_file}"
email = "ops@offload.test"
agree_to_terms = true
storage = "{storage}"
challenges = {json.dumps(challenges)}
retry_after = "{retry_after}"

[[acme.certificates]]
names = {json.dumps(names)}
"""


def _issued_by_pebble(pebble: Pebble, pki: Pki, port: int, name: str) -> x509.Certificate:
    """Handshake for ``name`` verified against pebble's root; the served leaf."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    roots = pebble.roots(context)
    client = ssl.create_default_context(cadata=roots.decode("ascii"))
    with tls_connect(port, client, server_name=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
    return x509.load_der_x509_certificate(der)


def _names(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(san.value.get_values_for_type(x509.DNSName))


def _worker_updated(instance: Offload, mark: int) -> None:
    for pid in instance.worker_pids():
        instance.wait_msg("certificates updated", after=mark, pid=pid, timeout=60)


def test_tls_alpn_01_issues_a_certificate_for_a_frontend_without_one(
        pki, pebble, backend, offload, port, tmp_path):
    server = backend(echo)
    ca = pebble(http_port=free_port(), tls_port=port)
    storage = tmp_path / "acme"
    config = tcp_config(port, [], [server.address], workers=2) + _acme(
        ca, storage, ["tls-alpn-01"], [NAME, OTHER])
    instance = offload(config)
    assert any("no certificate yet" in str(e.get("msg")) for e in instance.events)
    obtained = instance.wait_msg("ACME certificate obtained", timeout=60)
    assert obtained["names"] == [NAME, OTHER]
    _worker_updated(instance, 0)
    answered = instance.messages("ACME challenge answered")
    assert {e["name"] for e in answered} == {NAME, OTHER}
    for name in (NAME, OTHER):
        leaf = _issued_by_pebble(ca, pki, port, name)
        assert _names(leaf) == {NAME, OTHER}
    account_key = storage / "account.key"
    assert stat.S_IMODE(account_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((storage / "certificates" / f"{NAME}.pem").stat().st_mode) == 0o600
    assert not list((storage / "challenges").rglob("*.pem")), "answers must be removed"
    assert "PRIVATE KEY" not in "\n".join(instance.lines)


def test_http_01_on_the_plain_http_listener_beside_a_configured_certificate(
        pki, pebble, backend, offload, port, tmp_path, localhost_bundle):
    server = backend(echo)
    plain = free_port()
    ca = pebble(http_port=plain, tls_port=free_port())
    config = tcp_config(port, [localhost_bundle], [server.address],
                        frontend=f'redirect_http = ["127.0.0.1:{plain}"]') + _acme(
        ca, tmp_path / "acme", ["http-01"], [NAME])
    instance = offload(config)
    instance.wait_msg("ACME certificate obtained", timeout=60)
    _worker_updated(instance, 0)
    assert _names(_issued_by_pebble(ca, pki, port, NAME)) == {NAME}
    with tls_connect(port, ssl.create_default_context(cafile=str(pki.ca))) as tls:
        tls.sendall(b"x")  # the configured certificate still answers its own name
        assert tls.recv(1) == b"x"
    with socket.create_connection(("127.0.0.1", plain)) as plain_client:
        plain_client.sendall(b"GET /.well-known/acme-challenge/unknown-token HTTP/1.1\r\n"
                             b"Host: site.offload.test\r\n\r\n")
        assert plain_client.recv(100).startswith(b"HTTP/1.1 404 ")


def test_a_certificate_due_for_renewal_is_renewed_and_swapped_in(
        pki, pebble, backend, offload, port, tmp_path):
    server = backend(echo)
    ca = pebble(http_port=free_port(), tls_port=port)
    storage = tmp_path / "acme"
    (storage / "certificates").mkdir(parents=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    old = pki.authority.issue([NAME], not_before=now - dt.timedelta(days=70),
                              not_after=now + dt.timedelta(days=20))  # a third of 90 days left
    write_private(storage / "certificates" / f"{NAME}.pem", old.bundle())
    config = tcp_config(port, [], [server.address]) + _acme(
        ca, storage, ["tls-alpn-01"], [NAME])
    instance = offload(config)
    with tls_connect(port, ssl.create_default_context(cafile=str(pki.ca)),
                     server_name=NAME) as tls:
        assert tls.getpeercert(binary_form=True) == old.certificate.public_bytes(Encoding.DER)
    requested = instance.wait_msg("ACME certificate requested", timeout=30)
    assert requested["names"] == [NAME]
    instance.wait_msg("ACME certificate obtained", timeout=60)
    _worker_updated(instance, 0)
    leaf = _issued_by_pebble(ca, pki, port, NAME)
    assert leaf.serial_number != old.certificate.serial_number


def test_a_failed_challenge_is_logged_and_retried_while_the_old_certificate_serves(
        pki, pebble, backend, offload, port, tmp_path):
    server = backend(echo)
    ca = pebble(http_port=free_port(), tls_port=free_port())  # nothing answers there
    storage = tmp_path / "acme"
    (storage / "certificates").mkdir(parents=True, mode=0o700)
    now = dt.datetime.now(dt.UTC)
    current = pki.authority.issue([NAME], not_before=now - dt.timedelta(days=80),
                                  not_after=now + dt.timedelta(days=10))
    write_private(storage / "certificates" / f"{NAME}.pem", current.bundle())
    config = tcp_config(port, [], [server.address]) + _acme(
        ca, storage, ["tls-alpn-01"], [NAME], retry_after="1s")
    instance = offload(config)
    first = instance.wait_msg(
        "ACME certificate request failed; the current certificate keeps serving", timeout=60)
    assert first["level"] == "error"
    assert NAME in first["reason"]
    assert first["retry_in"] == 1
    second = instance.wait_for(lambda e: e.get("msg") == first["msg"] and e is not first,
                               timeout=60)
    assert second["retry_in"] == 2, "the delay doubles after each failure"
    with tls_connect(port, ssl.create_default_context(cafile=str(pki.ca)),
                     server_name=NAME) as tls:
        tls.sendall(b"still")
        assert tls.recv(5) == b"still"
    assert not instance.messages("ACME certificate obtained")


@pytest.mark.parametrize("offered, validation", [
    (["acme-tls/1"], True),
    (["acme-tls/1", "http/1.1"], False),  # RFC 8737: only a client offering it alone
    (["http/1.1"], False),
    (None, False),
])
def test_only_an_acme_tls_1_client_sees_a_pending_validation_certificate(
        pki, backend, offload, port, tmp_path, localhost_bundle, offered, validation):
    from offload.acme.alpn import ID_PE_ACME_IDENTIFIER, validation_bundle
    from offload.acme.storage import AcmeStorage

    server = backend(echo)
    storage = AcmeStorage(tmp_path / "acme")
    storage.create()
    storage.put_tls_alpn01("localhost", validation_bundle("localhost", "token.thumbprint"))
    unreachable = Pebble(f"https://127.0.0.1:{free_port()}/dir", pki.ca, 0, 0, 0)
    instance = offload(tcp_config(port, [localhost_bundle], [server.address]) + _acme(
        unreachable, storage.root, ["tls-alpn-01"], [NAME]))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if offered is not None:
        client.set_alpn_protocols(offered)
    with tls_connect(port, client, server_name="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        served = x509.load_der_x509_certificate(der)
        extensions = [e.oid for e in served.extensions]
        assert (ID_PE_ACME_IDENTIFIER in extensions) is validation
        if validation:
            assert tls.selected_alpn_protocol() == "acme-tls/1"
            assert recv_all(tls) == b"", "a validation connection carries no data"
        else:
            tls.sendall(b"data")
            assert tls.recv(4) == b"data"
    if validation:
        instance.wait_msg("ACME challenge answered", name="localhost")


def test_the_acme_process_is_restarted_if_it_dies_and_replaced_on_reload(
        pki, backend, offload, port, tmp_path, localhost_bundle):
    import signal

    server = backend(echo)
    unreachable = Pebble(f"https://127.0.0.1:{free_port()}/dir", pki.ca, 0, 0, 0)
    base = tcp_config(port, [localhost_bundle], [server.address])
    instance = offload(base + _acme(unreachable, tmp_path / "acme", ["tls-alpn-01"], [NAME]))
    first = instance.wait_msg("ACME process started")["pid"]
    os.kill(first, signal.SIGKILL)
    died = instance.wait_msg("ACME process died; restarting it", pid=first)
    assert died["exit_code"] == -signal.SIGKILL
    second = instance.wait_for(lambda e: e.get("msg") == "ACME process started"
                               and e.get("pid") != first)["pid"]

    mark = len(instance.events)
    instance.config.write_text(base + _acme(unreachable, tmp_path / "acme", ["tls-alpn-01"],
                                            [NAME, OTHER]))
    instance.signal(signal.SIGHUP)
    instance.wait_msg("ACME process exited", pid=second, after=mark)
    third = instance.wait_msg("ACME process started", after=mark)["pid"]
    assert third not in (first, second)
    requested = instance.wait_for(lambda e: e.get("msg") == "ACME certificate requested"
                                  and e.get("pid") == third)
    assert requested["names"] == [NAME, OTHER], "the new process follows the new configuration"
