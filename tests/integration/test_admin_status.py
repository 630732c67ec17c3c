"""The status page on a real instance, in headless Chromium: the server buttons, the listeners
under Frontends, the recent history, and a server that accepts requests and never answers."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

from browser import Browser, png_summary
from conftest import http_config
from harness import client_context, free_port, record
from http_client import get, https
from test_admin import api, samples, value, with_admin

BUTTON = 'document.querySelector(\'tr[data-server="{}"] button[data-action="{}"]\')'


def servers_of(admin_port: int) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in api(admin_port, "/api/backends")["backends"][0]["servers"]}


def test_buttons_drain_and_disable_after_confirming_the_last_server(
        pki, localhost_bundle, http_backend, offload, port, tmp_path):
    a, b = http_backend("a"), http_backend("b")
    admin_port, redirect_port = free_port(), free_port()
    instance = offload(with_admin(http_config(
        port, [localhost_bundle], [f'{{ name = "a", address = "{a.address}" }}',
                                   f'{{ name = "b", address = "{b.address}" }}'],
        frontend=f'redirect_http = "127.0.0.1:{redirect_port}"'), admin_port))
    conn = https(port, pki.ca)
    for _ in range(4):
        assert get(conn, "/bytes/10")[0].status == 200
    with Browser() as browser:
        browser.navigate(f"http://127.0.0.1:{admin_port}/")
        browser.wait_until(BUTTON.format("app/a", "drain"))
        assert "redirect" in browser.wait_until(
            'document.querySelector(\'tr[data-frontend="redirect:web"]\')?.textContent')
        frontends = browser.evaluate('document.getElementById("frontends").textContent')
        assert f"127.0.0.1:{redirect_port}" in frontends and f"127.0.0.1:{admin_port}" in frontends

        browser.evaluate(BUTTON.format("app/a", "drain") + ".click()")
        assert browser.wait_until('document.getElementById("action-note").textContent') == \
            "a (app): drain."
        assert servers_of(admin_port)["a"]["admin"] == "drain"

        # b is now the last enabled server: the page asks, and nothing happens on Cancel
        browser.wait_until(BUTTON.format("app/b", "disable"))
        browser.evaluate(BUTTON.format("app/b", "disable") + ".click()")
        assert "last enabled server of backend app" in browser.wait_until(
            'document.getElementById("confirm").open && '
            'document.getElementById("confirm-text").textContent')
        browser.evaluate('document.getElementById("confirm-cancel").click()')
        assert servers_of(admin_port)["b"]["admin"] == "enabled"
        browser.evaluate(BUTTON.format("app/b", "disable") + ".click()")
        browser.wait_until('document.getElementById("confirm").open')
        browser.evaluate('document.getElementById("confirm-ok").click()')
        browser.wait_until('document.getElementById("action-note").textContent.startsWith("b ")')
        assert servers_of(admin_port)["b"]["admin"] == "disabled"
        browser.wait_until(BUTTON.format("app/b", "enable"))
        shot = browser.screenshot(tmp_path / "status-buttons.png")
    assert [line["what"] for line in instance.messages("admin action")] == [
        "drain server a of backend app", "disable server b of backend app"]
    summary = png_summary(shot)
    assert summary.width == 1280 and summary.colours > 8 and summary.dominant < 0.98


def test_history_fills_in_every_ten_seconds(pki, localhost_bundle, http_backend, offload, port):
    backend = http_backend()
    admin_port = free_port()
    offload(with_admin(http_config(port, [localhost_bundle], [backend.address]), admin_port))
    first = api(admin_port, "/api/history")
    assert first["interval_seconds"] == 10 and first["window_seconds"] == 600
    conn = https(port, pki.ca)
    deadline = time.monotonic() + 25
    history = first
    while not history["time"] and time.monotonic() < deadline:  # traffic until the first sample
        assert get(conn, "/slow/0.05")[0].status == 200
        history = api(admin_port, "/api/history")
    assert history["time"], "no sample within 25 s"
    assert history["total"]["rate"][-1] > 0
    assert 0.04 < history["backends"]["app"]["p50"][-1] < 0.25
    assert history["total"]["p99"][-1] >= history["total"]["p50"][-1]


def test_each_server_counts_its_answers_and_failures(pki, localhost_bundle, http_backend, offload,
                                                     port):
    good, failing = http_backend("good"), http_backend("failing")
    failing.fail_status = 503
    dead = f"127.0.0.1:{free_port()}"  # nobody listens: connections are refused
    admin_port = free_port()
    offload(with_admin(http_config(
        port, [localhost_bundle], [f'{{ name = "good", address = "{good.address}" }}',
                                   f'{{ name = "failing", address = "{failing.address}" }}',
                                   f'{{ name = "dead", address = "{dead}" }}']), admin_port))
    for _ in range(6):
        conn = https(port, pki.ca)
        get(conn, "/bytes/10")
        conn.close()
    metrics = samples(admin_port)
    answered = value(metrics, "offload_backend_server_responses_total", server="good",
                     status_class="2xx")
    failed = value(metrics, "offload_backend_server_responses_total", server="failing",
                   status_class="5xx")
    assert answered >= 2 and failed >= 1 and answered + failed >= 6
    assert value(metrics, "offload_backend_server_response_duration_seconds_count",
                 server="good") == answered
    assert value(metrics, "offload_backend_server_failures_total", server="dead",
                 reason="connect_failed") >= 1


def test_a_server_that_never_answers_shows_before_its_health_check_gives_up(
        pki, localhost_bundle, backend, offload, port, tmp_path):
    """The server accepts the connection, reads the request and says nothing; server_timeout
    is a minute away. The page must show the waiting request and its age long before."""
    frozen = backend(record)
    admin_port = free_port()
    offload(with_admin(http_config(
        port, [localhost_bundle], [f'{{ name = "frozen", address = "{frozen.address}" }}'],
        backend='server_timeout = "60s"'), admin_port))
    context = client_context(pki.ca, alpn=["http/1.1"])

    def ask() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /anything HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                tls.recv(100)
            except (OSError, ssl.SSLError):
                pass

    client = threading.Thread(target=ask, daemon=True)
    client.start()
    frozen.wait_connections(1)
    time.sleep(2.5)  # the age being measured: no event to wait for but time itself
    server = servers_of(admin_port)["frozen"]
    assert server["health"] == "up" and server["active"] == 1
    assert server["waiting"] == 1 and server["oldest_wait"] >= 2.0, server
    assert value(samples(admin_port), "offload_backend_server_oldest_wait_seconds",
                 server="frozen") >= 2.0
    with Browser() as browser:
        browser.navigate(f"http://127.0.0.1:{admin_port}/")
        waiting = browser.wait_until('document.querySelector(\'tr[data-server="app/frozen"]\')'
                                     '?.textContent.includes("oldest") && document.querySelector('
                                     '\'tr[data-server="app/frozen"]\').textContent')
        shot = browser.screenshot(tmp_path / "status-frozen.png")
    assert "1 · oldest" in waiting
    assert png_summary(shot).colours > 8
