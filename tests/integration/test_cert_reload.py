"""Certificate reload in place: file changes and SIGHUP reach every worker without a restart."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from conftest import tcp_config
from harness import (
    Offload,
    Recording,
    assert_resumes_on_every_worker,
    client_context,
    echo,
    recv_all,
    tls_connect,
)

from offload.demo.pki import Authority, Issued, key_pem, write_private

PAYLOAD = os.urandom(4 * 1024 * 1024)


def _slow_payload(conn: socket.socket, recording: Recording) -> None:
    """Send PAYLOAD over about a second and a half, so a reload happens in the middle."""
    for start in range(0, len(PAYLOAD), 64 * 1024):
        conn.sendall(PAYLOAD[start:start + 64 * 1024])
        time.sleep(0.02)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)


def _fingerprint(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _served(port: int, context: ssl.SSLContext, name: str = "localhost") -> str:
    with tls_connect(port, context, server_name=name) as tls:
        return _fingerprint(tls)


def _fingerprint_of(issued: Issued) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(issued.certificate.public_bytes(Encoding.DER)).hexdigest()


def _replace(path: Path, data: bytes, how: str) -> None:
    """Replace a file the way tools do: rename over it (certbot, cp --atomic) or rewrite it."""
    if how == "rename":
        fresh = path.with_suffix(".new")
        write_private(fresh, data)
        os.rename(fresh, path)
    else:
        write_private(path, data)


def _wait_workers_updated(instance: Offload, mark: int) -> None:
    for pid in instance.worker_pids():
        instance.wait_msg("certificates updated", after=mark, pid=pid)


@pytest.mark.parametrize("trigger", ["rename", "rewrite", "SIGHUP"])
def test_new_certificate_for_new_handshakes_while_a_long_transfer_completes(
        pki, backend, offload, port, tmp_path, trigger):
    bundle = tmp_path / "site.pem"
    write_private(bundle, pki.authority.issue(["localhost"]).bundle())
    server = backend(_slow_payload)
    instance = offload(tcp_config(port, [bundle], [server.address], workers=2))
    context = client_context(pki.ca)
    workers = instance.worker_pids()
    fresh = pki.authority.issue(["localhost"])
    with tls_connect(port, context) as old:
        old_cert = _fingerprint(old)
        received = bytearray(old.recv(65536))
        mark = len(instance.events)
        if trigger == "SIGHUP":
            write_private(bundle, fresh.bundle())
            instance.signal(signal.SIGHUP)
        else:
            _replace(bundle, fresh.bundle(), trigger)
        _wait_workers_updated(instance, mark)
        for _ in range(4):  # every worker: connections spread over both
            assert _served(port, context) == _fingerprint_of(fresh)
        assert len(received) < len(PAYLOAD), "the transfer must still be running"
        received += recv_all(old)
        assert _fingerprint(old) == old_cert
    assert hashlib.sha256(received).digest() == hashlib.sha256(PAYLOAD).digest()
    assert instance.worker_pids() == workers, "no worker may restart"
    assert not instance.messages("reload complete")


def _mismatched(authority: Authority) -> bytes:
    one, other = authority.issue(["localhost"]), authority.issue(["localhost"])
    return one.cert_chain() + key_pem(other.key)


def _expired(authority: Authority) -> bytes:
    now = dt.datetime.now(dt.UTC)
    return authority.issue(["localhost"], not_before=now - dt.timedelta(days=30),
                           not_after=now - dt.timedelta(days=1)).bundle()


@pytest.mark.parametrize("breakage, reason", [
    ("bad PEM", "not a valid PEM file"),
    ("mismatched key", "does not match"),
    ("expired", "expired"),
    ("readable key", "readable"),
])
def test_a_broken_replacement_is_rejected_and_the_old_certificate_keeps_serving(
        pki, backend, offload, port, tmp_path, breakage, reason):
    bundle = tmp_path / "site.pem"
    first = pki.authority.issue(["localhost"])
    write_private(bundle, first.bundle())
    server = backend(echo)
    instance = offload(tcp_config(port, [bundle], [server.address], workers=2))
    context = client_context(pki.ca)
    mark = len(instance.events)
    if breakage == "bad PEM":
        _replace(bundle, b"-----BEGIN CERTIFICATE-----\nnot base64\n", "rename")
    elif breakage == "mismatched key":
        _replace(bundle, _mismatched(pki.authority), "rename")
    elif breakage == "expired":
        _replace(bundle, _expired(pki.authority), "rename")
    else:
        _replace(bundle, pki.authority.issue(["localhost"]).bundle(), "rename")
        bundle.chmod(0o644)
    rejected = instance.wait_msg("certificate rejected, the previous one keeps serving",
                                 after=mark)
    assert rejected["level"] == "error"
    assert rejected["file"] == str(bundle)
    assert reason in rejected["reason"]
    assert "PRIVATE KEY" not in str(rejected)
    time.sleep(0.5)  # another look at the unchanged broken file must not log again
    assert len([e for e in instance.events[mark:] if e.get("msg") == rejected["msg"]]) == 1
    for _ in range(4):
        assert _served(port, context) == _fingerprint_of(first)

    fixed = pki.authority.issue(["localhost"])
    mark = len(instance.events)
    _replace(bundle, fixed.bundle(), "rename")
    _wait_workers_updated(instance, mark)
    assert _served(port, context) == _fingerprint_of(fixed)


def test_directory_changes_add_and_remove_names(pki, backend, offload, port, tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir(mode=0o700)
    default = pki.authority.issue(["localhost"])
    write_private(directory / "a-default.pem", default.bundle())
    server = backend(echo)
    instance = offload(tcp_config(port, [directory], [server.address], workers=2))
    context = client_context(pki.ca)
    context.check_hostname = False  # the default certificate answers unknown names

    shop = pki.authority.issue(["shop.test"])
    mark = len(instance.events)
    _replace(directory / "shop.pem", shop.bundle(), "rename")
    _wait_workers_updated(instance, mark)
    for _ in range(4):
        assert _served(port, context, "shop.test") == _fingerprint_of(shop)
        assert _served(port, context, "localhost") == _fingerprint_of(default)

    mark = len(instance.events)
    (directory / "shop.pem").unlink()
    _wait_workers_updated(instance, mark)
    for _ in range(4):
        assert _served(port, context, "shop.test") == _fingerprint_of(default)


def test_sessions_resume_on_every_worker_after_a_reload(pki, backend, offload, port, tmp_path):
    bundle = tmp_path / "site.pem"
    write_private(bundle, pki.authority.issue(["localhost"]).bundle())
    server = backend(echo)
    instance = offload(tcp_config(port, [bundle], [server.address], workers=2))
    context = client_context(pki.ca)
    mark = len(instance.events)
    _replace(bundle, pki.authority.issue(["localhost"]).bundle(), "rename")
    _wait_workers_updated(instance, mark)
    assert_resumes_on_every_worker(instance, port, context)


def test_a_pair_replaced_in_two_steps_names_the_file_that_changed(pki, backend, offload, port,
                                                                   tmp_path):
    """site.crt replaced, site.key not yet: the rejection is site.crt's (it used to name the
    key, which had not changed); once the key follows, the new pair serves."""
    directory = tmp_path / "certs"
    directory.mkdir(mode=0o700)
    first = pki.authority.issue(["localhost"])
    (directory / "site.crt").write_bytes(first.cert_chain())
    write_private(directory / "site.key", key_pem(first.key))
    server = backend(echo)
    instance = offload(tcp_config(port, [directory], [server.address], workers=2))
    context = client_context(pki.ca)

    fresh = pki.authority.issue(["localhost"])
    mark = len(instance.events)
    _replace(directory / "site.crt", fresh.cert_chain(), "rename")
    rejected = instance.wait_msg("certificate rejected, the previous one keeps serving",
                                 after=mark)
    assert rejected["file"] == str(directory / "site.crt")
    assert rejected["reason"] == (
        f"the private key does not match the certificate: {directory / 'site.crt'} changed and "
        f"{directory / 'site.key'} did not; replace both files of the pair")
    for _ in range(4):
        assert _served(port, context) == _fingerprint_of(first)

    mark = len(instance.events)
    _replace(directory / "site.key", key_pem(fresh.key), "rename")
    _wait_workers_updated(instance, mark)
    for _ in range(4):
        assert _served(port, context) == _fingerprint_of(fresh)
    assert not [e for e in instance.events[mark:] if e.get("msg") == rejected["msg"]]
