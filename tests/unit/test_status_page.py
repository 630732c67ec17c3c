"""The status page (observe/status_page.html): self-contained, valid, and rendering real figures.

Headless Chromium loads the page from a small local server that plays successive /api/status
snapshots, one per poll (then repeats the last), so the page has rates to compute; the figures
below follow from the fixture's deltas over its 2 s steps of server uptime. HTTP Basic auth is on,
with the credentials in the URL, as an operator's browser would send them.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import offload.observe

# The Chromium helper lives with the integration tests, which render a real instance's page too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from browser import Browser, dump_dom, png_summary, screenshot

PAGE = Path(offload.observe.__file__).with_name("status_page.html")


def snapshot(step: int, *, load: float | None = None) -> dict[str, Any]:
    """The counters ``step`` polls (2 s of uptime each) after the first, at ``load`` times the
    base rates so far (``step`` when not given: a steady rate)."""
    n = step if load is None else load
    full, resumed = 800 + round(20 * n), 150 + round(20 * n)
    return {
        "version": "0.1.0", "pid": 4242, "started": "2026-11-24T10:00:00Z",
        "uptime_seconds": 100.0 + 2 * step, "generation": 3, "draining": False,
        "workers": [{"pid": 4243, "slot": 0, "generation": 3, "state": "ready"},
                    {"pid": 4244, "slot": 1, "generation": 3, "state": "starting"}],
        "frontends": [{"name": "web", "mode": "http", "bind": ["0.0.0.0:443", "[::]:443"],
                       "connections": 12},
                      {"name": "web", "mode": "redirect", "bind": ["0.0.0.0:80"], "redirects": 31},
                      {"name": "admin", "mode": "admin", "bind": ["127.0.0.1:8404"],
                       "connections": 2}],
        "connections": {"active": 12, "accepted": 1000 + round(40 * n)},
        "tls": {"handshakes": {"full": full, "resumed": resumed},
                "failures": {"timeout": 3 + round(2 * n), "unknown_sni": 1},
                "versions": {"TLSv1.3": full + resumed - 50, "TLSv1.2": 50},
                "ciphers": {"TLS_AES_256_GCM_SHA384": full + resumed - 50,
                            "ECDHE-ECDSA-AES128-GCM-SHA256": 50}},
        "requests": {"total": 5000 + round(500 * n), "by_class": {
            "2xx": 4900 + round(480 * n), "4xx": 80 + round(10 * n), "5xx": 20 + round(10 * n)}},
        "http_errors": {"bad_request": 3},
        "security": {"rate_limited/per_ip_request_rate": 4},
        "bytes": {"in": 1_000_000 + round(200_000 * n), "out": 10_000_000 + round(4_000_000 * n)},
    }


# Every 2 s: +500 requests, +20 full and +20 resumed handshakes, +2 timeouts, +10 answers of class
# 5xx, +200 kB in and +4 MB out. After the third snapshot the server repeats it: a snapshot with
# the same uptime is not a new measurement, so the rates stay.
SNAPSHOTS = [snapshot(step) for step in range(3)]
# For the screenshot: a minute of load that swells and ebbs, so the sparklines have a shape.
WAVE = [snapshot(step, load=sum(1 + 0.6 * math.sin(i / 4) for i in range(step))) for step in range(32)]
HOSTILE = '<img src=x onerror="document.title=1">'
BACKENDS = {"backends": [{"name": "app", "balance": "roundrobin", "servers": [
    {"name": "s1", "address": "127.0.0.1:8080", "weight": 1, "backup": False, "admin": "enabled",
     "health": "up", "healthy_workers": 2, "workers": 2, "active": 3, "idle": 4, "waiting": 1,
     "oldest_wait": 0.1},
    {"name": "s2", "address": "127.0.0.1:8081", "weight": 2, "backup": False, "admin": "drain",
     "health": "down", "healthy_workers": 0, "workers": 2, "active": 0, "idle": 0, "waiting": 0,
     "oldest_wait": 0.0},
    {"name": HOSTILE, "address": "127.0.0.1:8082", "weight": 1, "backup": True, "admin": "enabled",
     "health": "partial", "healthy_workers": 1, "workers": 2, "active": 1, "idle": 0, "waiting": 0,
     "oldest_wait": 0.0},
    # accepts and never answers: four requests waiting, the oldest for 42 s; health checks pass
    {"name": "frozen", "address": "127.0.0.1:8083", "weight": 1, "backup": False, "admin": "enabled",
     "health": "up", "healthy_workers": 2, "workers": 2, "active": 4, "idle": 0, "waiting": 4,
     "oldest_wait": 42.0}]},
    {"name": "solo", "balance": "roundrobin", "servers": [
        {"name": "only", "address": "127.0.0.1:9090", "weight": 1, "backup": False, "admin": "enabled",
         "health": "up", "healthy_workers": 1, "workers": 1, "active": 0, "idle": 0, "waiting": 0,
         "oldest_wait": 0.0}]}]}


def history(samples: int = 30) -> dict[str, Any]:
    """Five minutes of 10 s samples: latency that swells and ebbs, one server that went silent."""
    end = 1_790_000_000.0
    wave = [0.02 + 0.015 * math.sin(i / 3) for i in range(samples)]
    quiet = [None] * 6 + [0.0] * (samples - 6)  # the frozen server was added by a reload

    def constant(value: float | None) -> list[float | None]:
        return [value] * samples

    return {
        "interval_seconds": 10, "window_seconds": 600,
        "time": [end - 10 * (samples - 1 - i) for i in range(samples)],
        "seconds": constant(10.0),
        "total": {"rate": constant(250.0), "p50": [w * 1.2 for w in wave],
                  "p99": [w * 8 for w in wave]},
        "backends": {"app": {"rate": constant(250.0), "p50": wave, "p99": [w * 6 for w in wave]},
                     "solo": {"rate": constant(0.0), "p50": constant(None), "p99": constant(None)}},
        "servers": [
            {"backend": "app", "server": "s1", "rate": constant(200.0), "p50": constant(0.012),
             "p99": [w * 5 for w in wave], "errors": [*constant(0.0)[1:], 1.5],
             "kinds": {"5xx": [*constant(0.0)[1:], 1.0], "timeout": [*constant(0.0)[1:], 0.5]},
             "waiting": constant(1), "oldest_wait": constant(0.1)},
            {"backend": "app", "server": "frozen", "rate": quiet, "p50": constant(None),
             "p99": constant(None), "errors": quiet, "kinds": {}, "waiting": [None] * 6 + [4] * 24,
             "oldest_wait": [None] * 6 + [float(10 * i) for i in range(24)]},
        ],
    }


HISTORY = history()


def certificate(names: list[str], days: int, not_after: str) -> dict[str, Any]:
    return {"frontend": "web", "names": names, "key": "ECDSA 256", "issuer": "R11",
            "not_before": "2026-11-01T00:00:00Z", "not_after": not_after, "days_left": days,
            "source": "/etc/offload/www.pem", "fingerprint_sha256": "ab12"}


CERTIFICATES = {"certificates": [
    certificate(["www.example.com"], 74, "2027-02-07T00:00:00Z"),
    certificate(["old.example.net"], -3, "2026-11-21T00:00:00Z"),
    certificate(["api.example.org", "api2.example.org"], 12, "2026-12-06T00:00:00Z"),
]}

FLEET = {"enabled": True, "name": "edge", "node": "edge-1", "ticket_sharing": "on",
         "store": {"up": True, "round_trips": {"heartbeat": 9}, "failures": 2, "outages": 1,
                   "latency_ms": 0.4, "last_error": None},
         "ticket_keys": {"keys": 3, "newest_age_s": 600, "rotations_made": 1, "sets_received": 3},
         "nodes": [
             {"node": "edge-1", "version": "0.1.0", "config_hash": "aaaa", "age": 2.0,
              "ticket_key_age": 600.0, "latency_ms": 0.4, "store_failures": 2,
              "config_differs": False, "this_node": True},
             {"node": "edge-2", "version": "0.1.0", "config_hash": "bbbb", "age": 4.0,
              "ticket_key_age": 601.0, "latency_ms": 0.7, "store_failures": 0,
              "config_differs": True, "this_node": False}]}


class AdminFixture(ThreadingHTTPServer):
    """Serves the page and canned API answers; optionally behind HTTP Basic auth."""

    daemon_threads = True

    def __init__(self, snapshots: list[dict[str, Any]], *, credentials: str | None, protect_page: bool,
                 challenge: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.credentials = credentials
        self.protect_page = protect_page
        self.challenge = challenge
        self.snapshots = snapshots
        self.requests: list[tuple[str, str | None]] = []
        self.posts: list[tuple[str, dict[str, str]]] = []
        self.status_polls = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    server: AdminFixture

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization")))
        expected = self.server.credentials
        needs_auth = expected is not None and (self.path.startswith("/api/") or self.server.protect_page)
        if needs_auth and self.headers.get("Authorization") != "Basic " + base64.b64encode(
                str(expected).encode()).decode():
            self.answer(401, "text/plain", b"credentials needed\n",
                        (("WWW-Authenticate", self.server.challenge),))
        elif self.path == "/":
            self.server.status_polls = 0  # every page load plays the snapshots from the first
            self.answer(200, "text/html; charset=utf-8", PAGE.read_bytes())
        elif self.path == "/api/status":
            snapshots = self.server.snapshots
            snap = snapshots[min(self.server.status_polls, len(snapshots) - 1)]
            self.server.status_polls += 1
            self.json(snap)
        elif self.path == "/api/backends":
            self.json(BACKENDS)
        elif self.path == "/api/certificates":
            self.json(CERTIFICATES)
        elif self.path == "/api/history":
            self.json(HISTORY)
        elif self.path == "/api/fleet":
            self.json(FLEET)
        else:
            self.answer(404, "text/plain", b"not found\n")

    def do_POST(self) -> None:
        """A server action: recorded with its headers, answered as offload does."""
        self.server.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.headers.get("Offload-Admin") is None:
            self.answer(403, "application/json", b'{"error": "a change needs the header"}')
            return
        parts = self.path.split("/")
        state = {"drain": "drain", "disable": "disabled", "enable": "enabled"}[parts[-1]]
        self.json({"backend": parts[3], "server": parts[5], "admin": state})

    def json(self, body: dict[str, Any]) -> None:
        self.answer(200, "application/json", json.dumps(body).encode())

    def answer(self, status: int, kind: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def serve(snapshots: list[dict[str, Any]], *, credentials: str | None = None, protect_page: bool = True,
          challenge: str = 'Basic realm="offload admin"') -> Iterator[AdminFixture]:
    server = AdminFixture(snapshots, credentials=credentials, protect_page=protect_page, challenge=challenge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def admin() -> Iterator[AdminFixture]:
    yield from serve(SNAPSHOTS, credentials="admin:s3cret")


@pytest.fixture
def busy_admin() -> Iterator[AdminFixture]:
    yield from serve(WAVE, credentials="admin:s3cret")


def restarted(uptime: float, requests: int) -> dict[str, Any]:
    """A snapshot after the server started again: fresh counters, a new start time."""
    snap = snapshot(0)
    snap.update(started="2026-11-24T11:00:00Z", uptime_seconds=uptime, workers=snap["workers"][:1])
    snap["requests"] = {"total": requests, "by_class": {"2xx": requests}}
    snap["tls"]["handshakes"] = {"full": 40, "resumed": 0}
    snap["tls"]["failures"] = {}
    return snap


# 2 s at the usual rates; a sum that drops by 100 requests (a worker's share gone); a restart 4 s ago.
DROP_AND_RESTART = [*SNAPSHOTS[:2], {**snapshot(2), "requests": {"total": 5400, "by_class": {}}},
                    restarted(4.0, 1000)]


@pytest.fixture
def restarting_admin() -> Iterator[AdminFixture]:
    yield from serve(DROP_AND_RESTART, credentials="admin:s3cret")


@pytest.fixture
def open_page_locked_api() -> Iterator[AdminFixture]:
    # A Basic challenge on fetch() would make Chromium wait for a login dialog that headless mode
    # never shows; a Bearer challenge hands the 401 to the page as any failed login finally does.
    yield from serve(SNAPSHOTS, credentials="admin:s3cret", protect_page=False,
                     challenge='Bearer realm="offload admin"')


class Dom(HTMLParser):
    """Text of every element with an id or a data-server/-cert/-series/-frontend/-reason key
    (words of separate elements apart, whitespace collapsed), plus every tag seen."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                      "track", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, str] = {}
        self.tags: list[str] = []
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._open: list[tuple[str, str | None]] = []
        self.source = html
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_data(" ")  # elements are laid out apart: keep their words apart
        self.tags.append(tag)
        values = dict(attrs)
        key = next((values[name] for name in ("id", "data-server", "data-cert", "data-series",
                                              "data-frontend", "data-reason") if values.get(name)), None)
        if key is not None:
            self.text.setdefault(key, "")
            self.attrs[key] = values
        if tag not in self.VOID:
            self._open.append((tag, key))

    def handle_endtag(self, tag: str) -> None:
        self.handle_data(" ")
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self._open:
            if key is not None:
                self.text[key] += data

    def __getitem__(self, key: str) -> str:
        return " ".join(self.text[key].split())


def test_page_is_self_contained() -> None:
    source = PAGE.read_text(encoding="utf-8")
    assert not re.search(r"(?i)https?://", source), "the page must not reference any other site"
    style = source[source.index("<style>"):source.index("</style>")]
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    page = Dom(source)
    assert page.tags.count("html") == 1 and "script" in page.tags and "style" in page.tags
    for tag in ("link", "img", "iframe", "object", "embed"):
        assert tag not in page.tags, f"<{tag}> would load something from elsewhere"
    for key, attrs in page.attrs.items():
        assert "src" not in attrs, key
    links = re.findall(r'(?i)\b(?:src|href)\s*=\s*"([^"]*)"', source)
    assert links and all(re.fullmatch(r"api/[a-z]+", link) for link in links), links
    assert "innerHTML" not in source and "outerHTML" not in source and "insertAdjacentHTML" not in source
    assert "document.write" not in source and "eval(" not in source


def test_page_parses_as_html() -> None:
    page = Dom(PAGE.read_text(encoding="utf-8"))
    assert not page._open, f"unclosed elements: {page._open}"
    for key in ("rate-requests", "rate-handshakes", "resumption", "backends", "certificates", "alert"):
        assert key in page.text, key


def test_rendered_page_shows_rates_backends_and_certificates(admin: AdminFixture) -> None:
    url = admin.url.replace("http://", "http://admin:s3cret@")
    page = Dom(dump_dom(url))
    assert admin.status_polls >= 3, "the page polls every 2 s"
    api_calls = [auth for path, auth in admin.requests if path.startswith("/api/")]
    assert api_calls and all(auth is not None for auth in api_calls), "fetch() sends the credentials"

    assert page["alert"] == ""
    assert page["version"] == "v0.1.0"
    assert page["state"] == "serving"
    assert page["workers"] == "1/2 ready"
    assert page["generation"] == "3"
    assert page["uptime"] == "1m 44s"
    assert page["active"] == "12"
    assert page["active-sub"] == "active · 1,080 accepted, 20/s"
    assert page["rate-requests"] == "250"
    assert page["requests-sub"] == "6,000 since start"
    assert page["rate-handshakes"] == "20"
    assert page["handshakes-sub"] == "full 10 · resumed 10"
    assert page["resumption"] == "50.0 %"
    assert page["resumption-sub"] == "last 2 s · 18.4 % since start (190 of 1,030)"
    assert page["rate-errors"] == "6.0"     # 1 timeout/s + 5 answers of class 5xx per second
    assert page["errors-sub"] == "5xx 2.0 % of responses · 1.0 TLS failures/s"
    assert page["rate-bytes"] == "2.1 MB/s"
    assert page["bytes-sub"] == "in 100 kB/s · out 2.0 MB/s"
    assert "peak 250" in str(page.attrs["spark-requests"]["aria-label"])

    assert "TLSv1.3 95.1 % · 980" in page["versions"]
    assert "TLS_AES_256_GCM_SHA384" in page["ciphers"]
    assert "5xx 0.7 % · 40 · 5.0/s" in page["classes"]
    errors = page["errors"]
    assert "TLS timeout 7 1.0" in errors and "Security rate_limited / per_ip_request_rate 4 0" in errors

    # server, address and weight, admin state with buttons for the other two, health, req/s,
    # errors/s, p50 / p99, (sparkline), waiting, active / idle
    assert page["app/s1"] == ("s1 127.0.0.1:8080 · weight 1 enabled Drain Disable up 200 1.5 12 ms / 82 ms "
                              "p99 response time of s1 over the last minutes 1 · oldest 100 ms 3 / 4")
    assert page["app/s2"] == "s2 127.0.0.1:8081 · weight 2 drain Disable Enable down — — — — — 0 / 0"
    assert page[f"app/{HOSTILE}"] == (f"{HOSTILE} backup 127.0.0.1:8082 · weight 1 enabled Drain Disable "
                                      "partial (1/2 workers) — — — — — 1 / 0")
    assert page["app/frozen"] == ("frozen 127.0.0.1:8083 · weight 1 enabled Drain Disable up no answer for "
                                  "42 s 0 0 — / — — 4 · oldest 42 s 4 / 0")
    assert page.tags.count("img") == 0, "names from config are text, never markup"
    assert page["backends-note"] == "5 servers: 3 up, 1 partial, 1 down, 1 not answering"
    errors_cell = re.search(r'<tr data-server="app/s1">(?:.*?<td){5}[^>]*title="([^"]*)"', page.source, re.S)
    assert errors_cell is not None
    assert errors_cell.group(1) == "1.0/s: the server answered 5xx\n0.5/s: no answer within server_timeout"

    assert page["total"].startswith("All requests p50 ")
    assert "250/s" in page["total"] and "peak p99" in page["total"]
    assert page["backend:app"].startswith("Backend app p50 ")
    assert "p50 — · p99 —" in page["backend:solo"]
    assert page["latency-note"] == "last 10 minutes, 10 s samples"

    assert page["http:web"] == "web http 0.0.0.0:443, [::]:443 12"
    assert page["redirect:web"] == "web redirect 0.0.0.0:80 31 redirected"
    assert page["admin:admin"] == "admin admin 127.0.0.1:8404 2"

    assert page["legend"].startswith("What these reasons mean")
    assert "timeout The client did not finish the TLS handshake in time" in page["legend"]
    assert "rate_limited A request answered 429" in page["legend"]
    timeout_cell = re.search(r'<tr data-reason="TLS:timeout"><td>TLS</td><td title="([^"]*)"', page.source)
    assert timeout_cell is not None and timeout_cell.group(1).startswith("The client did not finish")

    assert page["www.example.com"].startswith("74 days valid www.example.com web 2027-02-07")
    assert page["old.example.net"].startswith("3 days ago expired old.example.net")
    assert page["api.example.org"].startswith("12 days renew soon api.example.org, api2.example.org")
    order = [key for key in page.text if key in {"www.example.com", "old.example.net", "api.example.org"}]
    assert order == ["old.example.net", "api.example.org", "www.example.com"], "sorted by days left"
    assert page["live"].startswith("live · updated")

    assert page["fleet-note"] == ("edge · this node edge-1 · Redis up, 0.4 ms · 2 store failures · "
                                  "ticket keys on, newest 10m 00s old")
    assert page["fleet"].startswith("Node Version Configuration")
    assert "edge-1 (this node) 0.1.0 aaaa 2 s ago 10m 00s 0.4 ms 2" in page["fleet"]
    assert "edge-2 0.1.0 bbbb (differs) 4 s ago 10m 01s 0.7 ms 0" in page["fleet"]


def test_counter_drops_and_restarts_give_no_negative_rates(restarting_admin: AdminFixture) -> None:
    url = restarting_admin.url.replace("http://", "http://admin:s3cret@")
    page = Dom(dump_dom(url, budget_ms=7000))
    assert restarting_admin.status_polls >= 4
    assert page["uptime"] == "0m 04s"
    assert page["rate-requests"] == "250"       # 1,000 requests in the 4 s since the restart
    assert page["rate-handshakes"] == "10"
    assert page["workers"] == "1/1 ready"
    line = re.search(r'<svg[^>]*id="spark-requests".*?<polyline points="([^"]+)"', page.source, re.S)
    assert line is not None
    heights = [float(point.split(",")[1]) for point in line.group(1).split()]
    # 250/s, then 0 (the drop), then 250/s again: the baseline is y=30 and nothing goes below it.
    assert heights == [2.0, 30.0, 2.0], heights


def test_page_explains_missing_credentials(open_page_locked_api: AdminFixture) -> None:
    page = Dom(dump_dom(open_page_locked_api.url, budget_ms=2500, timeout=30))
    assert "HTTP 401" in page["alert"] and "sign in" in page["alert"]
    assert page["live"] == "offline"
    assert page["rate-requests"] == "—"


def test_screenshot_is_a_rendered_page(busy_admin: AdminFixture, tmp_path: Path) -> None:
    url = busy_admin.url.replace("http://", "http://admin:s3cret@")
    for name, dark in (("status-light.png", False), ("status-dark.png", True)):
        path = screenshot(url, tmp_path / name, dark=dark, budget_ms=2000 * len(WAVE))
        summary = png_summary(path)
        assert (summary.width, summary.height) == (1280, 1600)
        assert path.stat().st_size > 30_000, "a blank page compresses to a few kilobytes"
        assert summary.colours >= 32 and summary.dominant < 0.9, summary
        assert summary.dark == dark, f"prefers-color-scheme is honoured: {summary}"


def test_server_buttons_post_with_the_header_and_the_last_server_needs_confirming(
        admin: AdminFixture) -> None:
    button = 'document.querySelector(\'tr[data-server="{}"] button[data-action="{}"]\')'
    with Browser() as browser:
        browser.navigate(admin.url.replace("http://", "http://admin:s3cret@"))
        browser.wait_until(button.format("app/s1", "drain"))
        # s1 is not the last enabled server of app: no question asked
        browser.evaluate(button.format("app/s1", "drain") + ".click()")
        note = browser.wait_until('document.getElementById("action-note").textContent')
        assert note == "s1 (app): drain."
        assert not browser.evaluate('document.getElementById("confirm").open')
        # "only" is the last one of solo: the page asks first, and Cancel sends nothing
        browser.evaluate(button.format("solo/only", "disable") + ".click()")
        question = browser.wait_until('document.getElementById("confirm").open && '
                                      'document.getElementById("confirm-text").textContent')
        assert question.startswith("only is the last enabled server of backend solo.")
        assert browser.evaluate('document.getElementById("confirm-ok").textContent') == \
            "Disable anyway"
        browser.evaluate('document.getElementById("confirm-cancel").click()')
        assert not browser.evaluate('document.getElementById("confirm").open')
        assert len(admin.posts) == 1
        browser.evaluate(button.format("solo/only", "disable") + ".click()")
        browser.wait_until('document.getElementById("confirm").open')
        browser.evaluate('document.getElementById("confirm-ok").click()')
        browser.wait_until('document.getElementById("action-note").textContent.includes("only")')
        assert browser.evaluate('document.getElementById("action-note").textContent') == \
            "only (solo): disabled."
    assert [path for path, _ in admin.posts] == ["/api/backends/app/servers/s1/drain",
                                                 "/api/backends/solo/servers/only/disable"]
    for _, headers in admin.posts:
        assert headers["offload-admin"] == "1"
        assert headers["sec-fetch-site"] == "same-origin"
        assert headers["origin"] == admin.url.rstrip("/")
        assert headers["authorization"].startswith("Basic ")
