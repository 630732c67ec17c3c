"""The admin listener against the operator's own browser, from the attacker's side: a page of
another origin posting without CORS, the same with the operator's Basic credentials cached, DNS
rebinding, and idle connections crowding out the load balancer's health checks."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from browser import Browser
from conftest import http_config
from harness import Offload, free_port, need
from test_admin import TOKEN, admin, api, with_admin

ATTACK = """<!doctype html><title>cute cats</title>
<iframe name="sink"></iframe>
<form id="form" method="POST" target="sink"></form>
<script>
// Everything a page of another origin can send without the admin listener's consent.
async function attack(admin) {
  const shots = [
    fetch(admin + "/api/drain", {method: "POST", mode: "no-cors", credentials: "include"}),
    fetch(admin + "/api/backends/app/servers/a/drain", {method: "POST", mode: "no-cors",
      credentials: "include", headers: {"Content-Type": "text/plain"}, body: "{}"}),
  ].map((shot) => shot.then(() => "sent", () => "blocked"));
  shots.push(
    // A custom header needs a CORS preflight, which is never approved: the POST is not sent.
    fetch(admin + "/api/backends/app/servers/b/disable", {method: "POST", credentials: "include",
      headers: {"Offload-Admin": "1"}}).then(() => "sent", () => "blocked"));
  navigator.sendBeacon(admin + "/api/reload", "x");
  const form = document.getElementById("form");
  form.action = admin + "/api/backends/app/servers/a/disable";
  const posted = new Promise((resolve) => { document.querySelector("iframe").onload = resolve; });
  form.submit();
  await posted;
  return Promise.all(shots);
}
</script>"""

REBOUND = """<!doctype html><title>rebound</title>
<script>
// After DNS rebinding this page's own origin is the admin listener: same-origin requests with
// any header they like, answers readable. Only the Host check stands in the way.
async function attack() {
  const read = await fetch("/api/status");
  const change = await fetch("/api/drain", {method: "POST", headers: {"Offload-Admin": "1"}});
  return [read.status, change.status, (await read.text()).slice(0, 200)];
}
</script>"""


WITHOUT_LOCAL_NETWORK_CHECKS = ("--disable-features=LocalNetworkAccessChecks,"
                                "BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights",)
"""Chromium's own defence against requests from public pages to local addresses, which
Firefox and Safari do not have: off, as in the browsers that do not have it."""


class _AttackerSite(ThreadingHTTPServer):
    daemon_threads = True


class _AttackerPage(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = ATTACK.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def attacker() -> Iterator[str]:
    """The URL of a page on another 127.0.0.1 port (another origin, the same site)."""
    server = _AttackerSite(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cats.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def two_servers(http_backend: Any) -> list[str]:
    a, b = http_backend("a"), http_backend("b")
    return [f'{{ name = "a", address = "{a.address}" }}',
            f'{{ name = "b", address = "{b.address}" }}']


def assert_nothing_changed(admin_port: int, instance: Offload, **options: Any) -> None:
    assert admin(admin_port, "/readyz", **options)[0] == 200, "taken out of rotation"
    servers = api(admin_port, "/api/backends", **options)["backends"][0]["servers"]
    assert [s["admin"] for s in servers] == ["enabled", "enabled"]
    assert not instance.messages("admin action") and not instance.messages("reload")


def refused(instance: Offload, what: str) -> dict[str, Any]:
    return instance.wait_msg("admin request refused", what=what)


def test_a_page_of_another_origin_cannot_change_anything(pki, localhost_bundle, http_backend,
                                                         offload, port, attacker):
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                                  admin_port))
    with Browser() as browser:
        browser.navigate(attacker)
        outcome = browser.evaluate(f'attack("http://127.0.0.1:{admin_port}")')
    assert outcome == ["sent", "sent", "blocked"]
    for what in ("POST /api/drain", "POST /api/backends/app/servers/a/drain",
                 "POST /api/backends/app/servers/a/disable", "POST /api/reload"):
        assert refused(instance, what)["result"] == "refused: same-site POST", what
    assert_nothing_changed(admin_port, instance)


def test_cached_credentials_do_not_ride_along(pki, localhost_bundle, http_backend, offload, port,
                                             attacker, tmp_path):
    """The operator signed in to the status page (Basic, the token as password), then opened
    the attacker's page in the same browser."""
    admin_port = free_port()
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    instance = offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                                  admin_port, f'token_file = "{token_file}"'))
    with Browser() as browser:
        browser.navigate(f"http://admin:{TOKEN}@127.0.0.1:{admin_port}/")
        browser.wait_until('document.getElementById("live").textContent.startsWith("live")')
        browser.navigate(attacker)
        outcome = browser.evaluate(f'attack("http://127.0.0.1:{admin_port}")')
    assert outcome == ["sent", "sent", "blocked"]
    assert refused(instance, "POST /api/drain")["result"] == "refused: same-site POST"
    assert_nothing_changed(admin_port, instance, token=TOKEN)


def test_dns_rebinding_reads_and_changes_nothing(pki, localhost_bundle, http_backend, offload,
                                                 port):
    """Chromium resolves the attacker's name to 127.0.0.1, as after a rebinding; the page
    itself came from the attacker's server (served here by the test)."""
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                                  admin_port))
    origin = f"http://rebind.test:{admin_port}"
    with Browser(resolve={"rebind.test": "127.0.0.1"}, flags=WITHOUT_LOCAL_NETWORK_CHECKS) as browser:
        browser.serve(f"{origin}/cats.html", REBOUND.encode())
        browser.navigate(f"{origin}/cats.html")
        read, change, body = browser.evaluate("attack()")
    assert (read, change) == (421, 421), body
    assert "version" not in body and "admin.hosts" in body
    line = refused(instance, "GET /api/status")
    assert line["result"] == f"refused: foreign Host rebind.test:{admin_port}"
    assert_nothing_changed(admin_port, instance)


def raw_request(port: int, head: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_a_foreign_host_gets_421_and_an_audit_line(pki, localhost_bundle, http_backend, offload,
                                                   port):
    admin_port = free_port()
    instance = offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                                  admin_port))
    status, body = raw_request(admin_port, "GET /api/status HTTP/1.1\r\n"
                               f"Host: evil.example:{admin_port}\r\nConnection: close\r\n\r\n")
    assert status == 421 and b"admin.hosts" in body
    line = refused(instance, "GET /api/status")
    assert line["who"] == "127.0.0.1"
    assert line["result"] == f"refused: foreign Host evil.example:{admin_port}"
    status, _ = raw_request(admin_port, "POST http://evil.example/api/drain HTTP/1.1\r\n"
                            f"Host: 127.0.0.1:{admin_port}\r\nOffload-Admin: 1\r\n"
                            "Content-Length: 0\r\n\r\n")
    assert status == 421, "the authority of an absolute-form target is the Host"
    # the health endpoints answer a load balancer whatever Host it sends, or none
    assert raw_request(admin_port, "GET /readyz HTTP/1.0\r\n\r\n")[0] == 200
    assert_nothing_changed(admin_port, instance)


def test_own_and_listed_hosts_are_answered(pki, localhost_bundle, http_backend, offload, port):
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                       admin_port, 'hosts = ["admin.example.com", "127.0.0.1:9000"]'))
    for host in (f"127.0.0.1:{admin_port}", f"localhost:{admin_port}", "admin.example.com",
                 "admin.example.com:443", "127.0.0.1:9000"):
        status, body = raw_request(admin_port, f"GET /api/status HTTP/1.1\r\nHost: {host}\r\n"
                                   "Connection: close\r\n\r\n")
        assert status == 200 and json.loads(body)["version"], host
    assert raw_request(admin_port, "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"
                       "Connection: close\r\n\r\n")[0] == 421


def test_curl_needs_one_more_header_for_a_change(pki, localhost_bundle, http_backend, offload,
                                                 port):
    curl = need("curl", "curl")
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                       admin_port))
    url = f"http://127.0.0.1:{admin_port}/api/backends/app/servers/a/drain"
    plain = subprocess.run([curl, "-s", "-X", "POST", url], capture_output=True, text=True,
                           timeout=30, check=True)
    assert "Offload-Admin: 1" in json.loads(plain.stdout)["error"]
    done = subprocess.run([curl, "-s", "-X", "POST", "-H", "Offload-Admin: 1", url],
                          capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout) == {"backend": "app", "server": "a", "admin": "drain"}


def test_the_status_page_itself_may_change(pki, localhost_bundle, http_backend, offload, port):
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                       admin_port))
    with Browser() as browser:
        browser.navigate(f"http://127.0.0.1:{admin_port}/")
        plain = browser.evaluate('fetch("api/drain", {method: "POST"}).then((r) => r.status)')
        assert plain == 403
        assert admin(admin_port, "/readyz")[0] == 200
        done = browser.evaluate('fetch("api/drain", {method: "POST", headers: '
                                '{"Offload-Admin": "1"}}).then((r) => r.status)')
        assert done == 200
    assert admin(admin_port, "/readyz")[0] == 503


def idle_connections(port: int, sources: list[str]) -> list[socket.socket]:
    """One connection per source address that sends nothing (or half a request head)."""
    out = []
    for index, source in enumerate(sources):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        if index % 2:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0")  # slowloris
        out.append(sock)
    return out


def timed_health(port: int) -> float:
    started = time.monotonic()
    conn = socket.create_connection(("127.0.0.1", port), timeout=2)
    with conn:
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 200"), "the health check was shut out"
    return time.monotonic() - started


@pytest.mark.parametrize("spread", ["one client", "many clients"])
def test_idle_connections_do_not_shut_out_health_checks(pki, localhost_bundle, http_backend,
                                                        offload, port, spread):
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                       admin_port))
    count = 100
    sources = (["127.0.0.1"] * count if spread == "one client"
               else [f"127.0.0.{2 + i % 50}" for i in range(count)])
    crowd = idle_connections(admin_port, sources)
    try:
        for _ in range(5):
            assert timed_health(admin_port) < 1.0
        assert admin(admin_port, "/readyz")[0] == 200
    finally:
        for sock in crowd:
            sock.close()


@pytest.mark.parametrize("start", [
    b"GET /metrics HTTP/1.1\r\n",                                      # slowloris
    b"POST /api/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123",  # slow body
], ids=["head", "body"])
def test_a_slow_request_is_cut_off(pki, localhost_bundle, http_backend, offload, port, start):
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], two_servers(http_backend)),
                       admin_port))
    with socket.create_connection(("127.0.0.1", admin_port), timeout=8) as sock:
        sock.sendall(start)
        started = time.monotonic()
        assert sock.recv(100) == b""
        waited = time.monotonic() - started
    assert 2.0 < waited < 5.0, waited
