"""The admin listener on a real instance: metrics after known traffic, health, the JSON API,
server drain, reload, tokens and the audit log."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import http_config
from cryptography import x509
from harness import Offload, client_context, free_port, tls_connect
from http_client import get, https
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "s3cret-token-0123456789abcdef"


def admin(port: int, path: str, *, method: str = "GET", token: str | None = None,
          authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request as curl sends it; a change carries the header docs/admin.md asks for."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers: dict[str, str] = {} if method == "GET" else {"Offload-Admin": "1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        headers: dict[str, str] = {}
        for name, header in response.getheaders():  # repeated headers joined, as RFC 9110 allows
            key = name.lower()
            headers[key] = f"{headers[key]}, {header}" if key in headers else header
        return response.status, headers, body
    finally:
        conn.close()


def api(port: int, path: str, **options: Any) -> Any:
    status, _, body = admin(port, path, **options)
    assert status == 200, body
    return json.loads(body)


def samples(port: int, **options: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, parsed by prometheus_client, keyed by name and labels."""
    status, headers, body = admin(port, "/metrics", **options)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str,
          **labels: str) -> float:
    """The sum of the samples called ``metric`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in metrics.items() if n == metric and wanted <= have)


def with_admin(config: str, admin_port: int, extra: str = "") -> str:
    return config + f'\n[admin]\nbind = "127.0.0.1:{admin_port}"\n{extra}\n'


def test_metrics_count_known_traffic_over_all_workers(pki, localhost_bundle, http_backend,
                                                      offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address], workers=2),
                       admin_port))
    context = client_context(pki.ca, alpn=["http/1.1"])
    session = None
    for _ in range(6):  # six connections, one request each: full handshakes
        with tls_connect(port, context) as tls:
            tls.sendall(b"GET /bytes/100 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            session = tls.session
    with tls_connect(port, context, session=session) as tls:  # one resumed handshake
        assert tls.session_reused
        tls.sendall(b"GET /status/404 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while tls.recv(65536):
            pass
    conn = https(port, pki.ca)
    for _ in range(3):  # keep-alive: three requests, one connection
        response, _ = get(conn, "/bytes/10")
        assert response.status == 200
    conn.close()
    with socket.create_connection(("127.0.0.1", port)) as raw:  # not TLS at all
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        raw.recv(100)
    # The client refuses the certificate (wrong name): the server sees its alert.
    with pytest.raises(ssl.SSLCertVerificationError), tls_connect(
            port, context, server_name="nobody.invalid"):
        pass

    deadline = time.monotonic() + 5  # the server may not have seen the last close yet
    metrics = samples(admin_port)
    while value(metrics, "offload_connections_active") and time.monotonic() < deadline:
        time.sleep(0.05)
        metrics = samples(admin_port)
    assert value(metrics, "offload_workers") == 2
    assert value(metrics, "offload_connections_accepted_total", frontend="web") == 10
    assert value(metrics, "offload_tls_handshakes_total", resumed="false") == 7
    assert value(metrics, "offload_tls_handshakes_total", resumed="true") == 1
    assert value(metrics, "offload_tls_handshakes_total", version="TLSv1.3") == 8
    assert value(metrics, "offload_tls_handshake_failures_total",
                 reason="bad_client_hello") == 1
    assert value(metrics, "offload_tls_handshake_failures_total", reason="client_alert") == 1
    assert value(metrics, "offload_tls_handshake_duration_seconds_count", frontend="web") == 8
    assert value(metrics, "offload_http_requests_total", frontend="web", backend="app",
                 status_class="2xx") == 9
    assert value(metrics, "offload_http_requests_total", status_class="4xx") == 1
    assert value(metrics, "offload_http_request_duration_seconds_count") == 10
    assert value(metrics, "offload_backend_response_duration_seconds_count", backend="app") == 10
    assert value(metrics, "offload_http_request_duration_seconds_bucket", le="+Inf") == 10
    assert value(metrics, "offload_received_bytes_total") > 8 * 300
    assert value(metrics, "offload_sent_bytes_total") > 6 * 100
    assert value(metrics, "offload_connections_active", frontend="web") == 0
    assert value(metrics, "offload_backend_server_up", backend="app") == 1
    assert value(metrics, "offload_backend_server_admin_state", state="enabled") == 1
    leaf = x509.load_pem_x509_certificates(localhost_bundle.read_bytes())[0]
    assert value(metrics, "offload_certificate_expiry_timestamp_seconds", frontend="web",
                 name="localhost") == leaf.not_valid_after_utc.timestamp()


def test_counters_outlive_the_workers_that_counted_them(pki, localhost_bundle, http_backend,
                                                        offload, port, tmp_path):
    backend = http_backend()
    admin_port = free_port()
    config = with_admin(http_config(port, [localhost_bundle], [backend.address], workers=2),
                        admin_port)
    instance = offload(config)
    conn = https(port, pki.ca)
    for _ in range(5):
        assert get(conn, "/bytes/10")[0].status == 200
    conn.close()
    old_workers = instance.worker_pids()
    # A changed configuration: a new generation replaces both workers.
    assert instance.config is not None
    instance.config.write_text(config.replace('drain_timeout = "10s"', 'drain_timeout = "9s"'))
    instance.signal(signal.SIGHUP)
    instance.wait_msg("reload complete")
    for pid in old_workers:
        instance.wait_msg("worker exited", pid=pid)
    metrics = samples(admin_port)
    assert value(metrics, "offload_http_requests_total", status_class="2xx") == 5
    assert value(metrics, "offload_connections_accepted_total") == 1
    assert value(metrics, "offload_config_reloads_total", result="success") == 1
    assert value(metrics, "offload_workers") == 2
    # A worker killed outright is restarted and counted.
    victim = next(iter(instance.worker_pids() - old_workers))
    subprocess.run(["kill", "-9", str(victim)], check=True)
    instance.wait_msg("worker died; restarting it")
    instance.wait_msg("worker ready", after=len(instance.events) - 1)
    assert value(samples(admin_port), "offload_worker_restarts_total") == 1


def test_status_backends_and_certificates(pki, localhost_bundle, http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address], workers=2),
                       admin_port))
    conn = https(port, pki.ca)
    assert get(conn, "/bytes/10")[0].status == 200
    status = api(admin_port, "/api/status")
    assert status["version"]
    assert status["generation"] == 1 and status["draining"] is False
    assert [w["state"] for w in status["workers"]] == ["ready", "ready"]
    assert status["frontends"] == [{"name": "web", "mode": "http",
                                    "bind": [f"127.0.0.1:{port}"], "connections": 1},
                                   {"name": "admin", "mode": "admin",
                                    "bind": [f"127.0.0.1:{admin_port}"], "connections": 1}]
    assert status["connections"] == {"active": 1, "accepted": 1}
    assert status["tls"]["handshakes"] == {"full": 1, "resumed": 0}
    assert status["requests"] == {"total": 1, "by_class": {"2xx": 1}}
    backends = api(admin_port, "/api/backends")["backends"]
    assert len(backends) == 1 and backends[0]["name"] == "app"
    server = backends[0]["servers"][0]
    assert server["address"] == backend.address
    assert server["health"] == "up" and server["workers"] == 2 and server["admin"] == "enabled"
    assert server["idle"] == 1  # the pooled keep-alive connection of the request above
    assert server["waiting"] == 0 and server["oldest_wait"] == 0
    certificates = api(admin_port, "/api/certificates")["certificates"]
    assert [c["names"] for c in certificates] == [["localhost"]]
    assert certificates[0]["frontend"] == "web"
    assert certificates[0]["source"] == str(localhost_bundle)
    assert 80 <= certificates[0]["days_left"] <= 90
    status_code, headers, page = admin(admin_port, "/")
    assert status_code == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"<html" in page.lower()
    assert admin(admin_port, "/nothing")[0] == 404
    assert admin(admin_port, "/api/reload")[0] == 405


def test_drain_moves_traffic_off_a_server_and_is_audited(pki, localhost_bundle, http_backend,
                                                         offload, port):
    a, b = http_backend("a"), http_backend("b")
    admin_port = free_port()
    servers = [f'{{ name = "a", address = "{a.address}" }}',
               f'{{ name = "b", address = "{b.address}" }}']
    instance = offload(with_admin(http_config(port, [localhost_bundle], servers, workers=2),
                                  admin_port))
    status, _, body = admin(admin_port, "/api/backends/app/servers/a/drain", method="POST")
    assert status == 200 and json.loads(body)["admin"] == "drain"
    instance.wait_msg("admin action", what="drain server a of backend app", result="done")
    assert api(admin_port, "/api/backends")["backends"][0]["servers"][0]["admin"] == "drain"
    served: Counter[str] = Counter()
    for _ in range(8):
        conn = https(port, pki.ca)
        response, _ = get(conn, "/bytes/1")
        served[response.getheader("X-Backend")] += 1
        conn.close()
    assert served == {"b": 8}
    metrics = samples(admin_port)
    assert value(metrics, "offload_backend_server_admin_state", server="a", state="drain") == 1
    assert admin(admin_port, "/api/backends/app/servers/zzz/drain", method="POST")[0] == 404
    assert admin(admin_port, "/api/backends/app/servers/a/explode", method="POST")[0] == 404
    assert admin(admin_port, "/api/backends/app/servers/a/enable", method="POST")[0] == 200
    served.clear()
    for _ in range(8):
        conn = https(port, pki.ca)
        served[get(conn, "/bytes/1")[0].getheader("X-Backend")] += 1
        conn.close()
    assert served["a"] > 0


def test_readyz_turns_503_while_draining(pki, localhost_bundle, http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], [backend.address]),
                                  admin_port))
    assert admin(admin_port, "/healthz")[0] == 200
    assert admin(admin_port, "/readyz")[0] == 200
    # Out of the L4 balancer's rotation, by API: still serving.
    assert admin(admin_port, "/api/drain", method="POST")[0] == 200
    status, _, body = admin(admin_port, "/readyz")
    assert status == 503 and json.loads(body)["status"] == "draining"
    conn = https(port, pki.ca)
    assert get(conn, "/bytes/1")[0].status == 200
    assert admin(admin_port, "/api/ready", method="POST")[0] == 200
    assert admin(admin_port, "/readyz")[0] == 200
    # Stopping: a slow request keeps the instance draining; /readyz says so meanwhile.
    conn.request("GET", "/slow/3")
    time.sleep(0.3)
    instance.signal(signal.SIGTERM)
    instance.wait_msg("stopping: draining the workers")
    assert admin(admin_port, "/readyz")[0] == 503
    assert admin(admin_port, "/healthz")[0] == 200
    assert conn.getresponse().status == 200
    assert instance.process.wait(15) == 0


def test_token_is_required_and_refusals_are_audited(pki, localhost_bundle, http_backend, offload,
                                                    port, tmp_path):
    backend = http_backend()
    admin_port = free_port()
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    audit = tmp_path / "audit.log"
    instance = offload(with_admin(
        http_config(port, [localhost_bundle], [backend.address],
                    global_=f'audit_log = "{audit}"'),
        admin_port, f'token_file = "{token_file}"'))
    for path in ("/metrics", "/api/status", "/healthz", "/"):
        status, headers, _ = admin(admin_port, path)
        assert status == 401, path
        assert "Bearer" in headers["www-authenticate"]
    assert admin(admin_port, "/api/reload", method="POST", token="wrong" * 5)[0] == 401
    assert admin(admin_port, "/api/status", token=TOKEN)[0] == 200
    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    assert admin(admin_port, "/api/status", authorization=f"Basic {basic}")[0] == 200
    assert admin(admin_port, "/api/reload", method="POST", token=TOKEN)[0] == 202
    instance.stop()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    refused = [line for line in lines if line["msg"] == "admin request refused"]
    assert len(refused) == 5
    assert refused[-1]["what"] == "POST /api/reload"
    assert refused[-1]["result"] == "refused: wrong token"
    assert refused[0]["result"] == "refused: no token" and refused[0]["who"] == "127.0.0.1"
    reload = [line for line in lines if line["msg"] == "reload"]
    assert reload and reload[0]["who"] == "admin API from 127.0.0.1 (token)"
    assert reload[0]["result"].startswith("started")
    assert all(line["audit"] is True and line["time"] for line in lines)
    assert TOKEN not in audit.read_text()


def test_health_endpoints_may_go_without_the_token(pki, localhost_bundle, http_backend, offload,
                                                   port, tmp_path):
    backend = http_backend()
    admin_port = free_port()
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address]), admin_port,
                       f'token_file = "{token_file}"\nhealth_without_token = true'))
    assert admin(admin_port, "/healthz")[0] == 200
    assert admin(admin_port, "/readyz")[0] == 200
    assert admin(admin_port, "/api/status")[0] == 401
    assert admin(admin_port, "/metrics")[0] == 401


def test_reload_through_the_api_refuses_a_broken_config(pki, localhost_bundle, http_backend,
                                                        offload, port):
    backend = http_backend()
    admin_port = free_port()
    config = with_admin(http_config(port, [localhost_bundle], [backend.address]), admin_port)
    instance = offload(config)
    assert instance.config is not None
    instance.config.write_text(config.replace("[[backends]]", "[[backendz]]"))
    status, _, body = admin(admin_port, "/api/reload", method="POST")
    assert status == 409
    assert "backendz" in json.loads(body)["detail"]
    assert value(samples(admin_port), "offload_config_reloads_total", result="failure") == 1
    conn = https(port, pki.ca)
    assert get(conn, "/bytes/1")[0].status == 200


def test_admin_reachable_from_elsewhere_needs_a_token(tmp_path, localhost_bundle):
    config = tmp_path / "offload.toml"
    config.write_text(http_config(free_port(), [localhost_bundle], ["127.0.0.1:9"])
                      + '\n[admin]\nbind = "0.0.0.0:9100"\n')
    checked = subprocess.run([sys.executable, "-m", "offload", "check", "-c", str(config)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 1
    assert "admin.bind" in checked.stderr and "admin.token_file" in checked.stderr
    quick = subprocess.run(
        [sys.executable, "-m", "offload", "run", "--listen", f"127.0.0.1:{free_port()}",
         "--cert", str(localhost_bundle), "--backend", "127.0.0.1:9", "--admin",
         "0.0.0.0:9100"], capture_output=True, text=True, timeout=60, check=False)
    assert quick.returncode == 1
    assert "--admin" in quick.stderr and "token" in quick.stderr


def test_token_file_readable_by_others_is_refused(tmp_path, localhost_bundle):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    config = tmp_path / "offload.toml"
    config.write_text(http_config(free_port(), [localhost_bundle], ["127.0.0.1:9"])
                      + f'\n[admin]\nbind = "0.0.0.0:9100"\ntoken_file = "{token_file}"\n')
    checked = subprocess.run([sys.executable, "-m", "offload", "check", "-c", str(config)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 1
    assert "admin.token_file" in checked.stderr and "chmod 600" in checked.stderr
    assert "readable by group and others (mode 644)" in checked.stderr


def test_quick_mode_admin_flag(pki, localhost_bundle, http_backend, tmp_path):
    backend = http_backend()
    port, admin_port = free_port(), free_port()
    instance = Offload(tmp_path / "unused", args=[
        "run", "--listen", f"127.0.0.1:{port}", "--cert", str(localhost_bundle),
        "--backend", backend.address, "--workers", "1", "--admin", str(admin_port)])
    try:
        ready = instance.wait_ready()
        assert ready["admin"] == f"127.0.0.1:{admin_port}"
        with tls_connect(port, client_context(pki.ca, alpn=["http/1.1"])) as tls:
            assert isinstance(tls, ssl.SSLSocket)
        assert value(samples(admin_port), "offload_connections_accepted_total") == 1
    finally:
        instance.kill()


def test_refuses_to_start_when_the_admin_address_is_taken(localhost_bundle, tmp_path: Path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        admin_port = taken.getsockname()[1]
        config = tmp_path / "offload.toml"
        config.write_text(with_admin(http_config(free_port(), [localhost_bundle],
                                                 ["127.0.0.1:9"]), admin_port))
        run = subprocess.run([sys.executable, "-m", "offload", "run", "-c", str(config)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert "cannot serve the admin API" in run.stderr


def test_status_page_renders_a_live_instance(pki, localhost_bundle, http_backend, offload, port,
                                             tmp_path):
    from browser import dump_dom, png_summary, screenshot

    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle],
                                   [f'{{ name = "web-1", address = "{backend.address}" }}']),
                       admin_port))
    conn = https(port, pki.ca)
    for _ in range(3):
        assert get(conn, "/bytes/10")[0].status == 200
    url = f"http://127.0.0.1:{admin_port}/"
    dom = dump_dom(url, budget_ms=5000)
    assert "web-1" in dom and backend.address in dom      # the backend table
    assert "localhost" in dom                              # the certificate list
    assert "TLSv1.3" in dom                                # versions in use
    shot = tmp_path / "status.png"
    screenshot(url, shot)
    summary = png_summary(shot)
    assert summary.width == 1280 and summary.colours > 8 and summary.dominant < 0.98
