"""Automatic bans on a real instance: offences from every worker reach one jail, the ban
refuses the client's connections before the TLS handshake on every worker, the admin API lists
and lifts it, and the audit log records both."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest
from conftest import http_config
from harness import client_context, free_port, tls_connect
from http_client import get, https
from test_admin import admin, api, samples, value, with_admin

DENY_ATTACKS = '''
[[frontends.inspect.rules]]
name = "attack"
action = "deny"
path = "^/attack"
'''


def bans_section(threshold: int = 3, extra: str = "") -> str:
    return f'\n[bans]\nthreshold = {threshold}\nwindow = "1m"\nban_time = "10m"\n{extra}\n'


def handshake_works(port: int, pki) -> bool:
    try:
        with tls_connect(port, client_context(pki.ca, alpn=["http/1.1"]), timeout=5):
            return True
    except (ssl.SSLError, OSError):
        return False


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_rule_denials_ban_the_client_until_the_api_lifts_it(pki, localhost_bundle, http_backend,
                                                            offload, port, tmp_path):
    backend = http_backend()
    admin_port = free_port()
    audit = tmp_path / "audit.log"
    instance = offload(with_admin(
        http_config(port, [localhost_bundle], [backend.address], workers=2,
                    frontend=DENY_ATTACKS, global_=f'audit_log = "{audit}"'),
        admin_port) + bans_section())
    for _ in range(3):  # separate connections: the kernel spreads them over both workers
        conn = https(port, pki.ca)
        assert get(conn, "/attack")[0].status == 403
        conn.close()
    assert wait_until(lambda: not handshake_works(port, pki))
    # Refused before TLS: the connection is closed without a ServerHello.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            raw.sendall(b"\x16\x03\x01\x00\x05hello")
            assert raw.recv(100) == b""
        except ConnectionResetError:
            pass  # closed (or reset) without a byte of TLS either way
    bans = api(admin_port, "/api/bans")
    assert bans["enabled"] is True
    (ban,) = bans["bans"]
    assert ban["client"] == "127.0.0.1" and ban["reason"] == "rule_denied"
    assert ban["offences"] == 3 and 590 <= ban["seconds_left"] <= 600
    metrics = samples(admin_port)
    assert value(metrics, "offload_bans_total") == 1
    assert value(metrics, "offload_bans_active") == 1
    assert value(metrics, "offload_security_decisions_total", kind="connection_refused",
                 cause="banned") >= 2
    instance.wait_msg("client banned", client="127.0.0.1", reason="rule_denied")

    status, _, body = admin(admin_port, "/api/bans/127.0.0.1", method="DELETE")
    assert status == 200 and json.loads(body) == {"unbanned": "127.0.0.1"}
    assert admin(admin_port, "/api/bans/127.0.0.1", method="DELETE")[0] == 404
    assert wait_until(lambda: handshake_works(port, pki))
    assert api(admin_port, "/api/bans")["bans"] == []
    instance.stop()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["msg"], line["what"]) for line in lines if line["msg"] in ("ban", "unban")] \
        == [("ban", "ban 127.0.0.1"), ("unban", "unban 127.0.0.1")]


def test_handshake_failures_and_backend_401s_count_too(pki, localhost_bundle, http_backend,
                                                       offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address], workers=2),
                       admin_port) + bans_section(threshold=4))
    for _ in range(2):  # not TLS: failed handshakes
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.recv(100)
    conn = https(port, pki.ca)
    for _ in range(2):  # a login being guessed
        assert get(conn, "/status/401")[0].status == 401
    conn.close()
    assert wait_until(lambda: not handshake_works(port, pki))
    (ban,) = api(admin_port, "/api/bans")["bans"]
    assert ban["events"] == {"handshake_failure": 2, "backend_auth_failure": 2}


def test_allowed_networks_are_never_banned(pki, localhost_bundle, http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address],
                                   frontend=DENY_ATTACKS), admin_port)
            + bans_section(threshold=2, extra='allow = ["127.0.0.0/8"]'))
    for _ in range(5):
        conn = https(port, pki.ca)
        assert get(conn, "/attack")[0].status == 403
        conn.close()
    time.sleep(0.5)  # offences are reported every 100 ms
    assert handshake_works(port, pki)
    assert api(admin_port, "/api/bans")["bans"] == []


def test_behind_a_trusted_proxy_the_forwarded_client_is_banned(pki, localhost_bundle,
                                                               http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address],
                                   frontend='trusted_proxies = ["127.0.0.1/32"]\n'
                                   + DENY_ATTACKS),
                       admin_port) + bans_section(threshold=2))
    conn = https(port, pki.ca)
    for _ in range(2):
        response, _ = get(conn, "/attack", **{"X-Forwarded-For": "198.51.100.9"})
        assert response.status == 403
        conn.close()
        conn = https(port, pki.ca)
    assert wait_until(lambda: bool(api(admin_port, "/api/bans")["bans"]))
    # The proxy itself still connects; the banned client's requests are refused.
    response, _ = get(conn, "/fine", **{"X-Forwarded-For": "198.51.100.9"})
    assert response.status == 403
    response, _ = get(https(port, pki.ca), "/fine", **{"X-Forwarded-For": "198.51.100.10"})
    assert response.status == 200


def test_dry_run_rules_are_no_offence(pki, localhost_bundle, http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address],
                                   frontend="[frontends.inspect]\ndry_run = true\n"
                                   + DENY_ATTACKS), admin_port) + bans_section(threshold=2))
    for _ in range(4):
        conn = https(port, pki.ca)
        assert get(conn, "/attack")[0].status == 200  # only logged
        conn.close()
    time.sleep(0.5)  # offences are reported every 100 ms
    assert api(admin_port, "/api/bans")["bans"] == []
    assert handshake_works(port, pki)


def test_bans_off_by_default(pki, localhost_bundle, http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address],
                                   frontend=DENY_ATTACKS), admin_port))
    for _ in range(12):
        conn = https(port, pki.ca)
        assert get(conn, "/attack")[0].status == 403
        conn.close()
    assert api(admin_port, "/api/bans") == {"enabled": False, "bans": []}
    assert admin(admin_port, "/api/bans/127.0.0.1", method="DELETE")[0] == 404
    assert handshake_works(port, pki)


pytestmark = pytest.mark.timeout(60)
