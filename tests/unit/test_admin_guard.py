"""The admin listener's browser checks (observe/admin_guard.py) and its connection admission
(server/admin_server.py ``admission``), from the attacker's side: DNS rebinding Hosts, cross-site
POSTs as browsers send them, and idle connections."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.observe.admin_api import AdminApi, AdminRequest
from offload.observe.admin_guard import (
    AdminGuard,
    AllowedHost,
    Refusal,
    parse_allowed_host,
    split_authority,
)
from offload.server.admin_server import admission

PORT = 8404
OWN = f"127.0.0.1:{PORT}"
GUARD = AdminGuard(PORT)


def check(method: str = "GET", path: str = "/api/status", *, local: str = "127.0.0.1",
          guard: AdminGuard = GUARD, **headers: str) -> Refusal | None:
    """``headers`` by Python name: ``sec_fetch_site`` is ``Sec-Fetch-Site``."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    named.setdefault("host", OWN)
    return guard.check(method, path, named, local)


def post(path: str = "/api/drain", **headers: str) -> Refusal | None:
    """A change with the required header unless ``offload_admin`` says otherwise."""
    headers.setdefault("offload_admin", "1")
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    named.setdefault("host", OWN)
    return GUARD.check("POST", path, named, "127.0.0.1")


# ------------------------------------------------------------ Host: DNS rebinding


@pytest.mark.parametrize(("host", "local"), [
    (OWN, "127.0.0.1"),
    (f"localhost:{PORT}", "127.0.0.1"),
    (f"LocalHost:{PORT}", "127.0.0.1"),
    (f"localhost:{PORT}", "::1"),
    (f"[::1]:{PORT}", "::1"),
    (f"[0:0::1]:{PORT}", "::1"),                    # the same address, spelled longer
    (f"127.0.0.1:{PORT}", "::ffff:127.0.0.1"),      # a dual-stack socket's view of IPv4
    (f"192.0.2.7:{PORT}", "192.0.2.7"),             # bound to 0.0.0.0, reached over the LAN
    (f"127.0.0.2:{PORT}", "127.0.0.2"),
])
def test_own_address_and_localhost_are_answered(host: str, local: str) -> None:
    assert check(host=host, local=local) is None


@pytest.mark.parametrize(("host", "local"), [
    (f"evil.example:{PORT}", "127.0.0.1"),          # the rebinding page's own name
    (f"rebind.127.0.0.1.nip.io:{PORT}", "127.0.0.1"),
    ("127.0.0.1", "127.0.0.1"),                     # no port: port 80 is meant
    ("127.0.0.1:8405", "127.0.0.1"),                # another port
    (f"localhost:{PORT}", "192.0.2.7"),             # localhost is not this LAN address
    (f"localhost.:{PORT}", "127.0.0.1"),            # the trailing-dot spelling is refused
    (f"127.0.0.2:{PORT}", "127.0.0.1"),             # not the address it arrived on
    (f"[::1]:{PORT}", "127.0.0.1"),
    (f"127.1:{PORT}", "127.0.0.1"),                 # shorthand IPv4 is a name here, not ours
    (f"0x7f.0.0.1:{PORT}", "127.0.0.1"),
    (f"2130706433:{PORT}", "127.0.0.1"),
    (f"[::ffff:127.0.0.1]:{PORT}", "127.0.0.1"),
    (f"[fe80::1%25lo]:{PORT}", "fe80::1"),
    ("", "127.0.0.1"),                              # HTTP/1.0 without Host
    (f"127.0.0.1:{PORT}:{PORT}", "127.0.0.1"),
    ("127.0.0.1:0", "127.0.0.1"),
    ("127.0.0.1:65536", "127.0.0.1"),
    (f"user@127.0.0.1:{PORT}", "127.0.0.1"),
    (f"127.0.0.1:+{PORT}", "127.0.0.1"),
])
def test_foreign_hosts_get_421(host: str, local: str) -> None:
    for method in ("GET", "POST", "DELETE"):
        refusal = check(method, host=host, local=local, offload_admin="1")
        assert refusal is not None and refusal.status == 421, (method, host)
        assert "admin.hosts" in refusal.message


def test_port_80_may_be_left_out() -> None:
    guard = AdminGuard(80)
    assert check(host="127.0.0.1", guard=guard) is None
    assert check(host="127.0.0.1:80", guard=guard) is None
    assert check(host=f"127.0.0.1:{PORT}", guard=guard) is not None


def test_listed_hosts_are_answered_on_any_or_their_port() -> None:
    guard = AdminGuard(PORT, (parse_allowed_host("Admin.Example.com"),
                              parse_allowed_host("tunnel.example:9000"),
                              parse_allowed_host("127.0.0.1:9000"),
                              parse_allowed_host("[2001:DB8::7]")))
    for host in ("admin.example.com", "admin.example.com:443", "ADMIN.example.com:8404",
                 "tunnel.example:9000", "127.0.0.1:9000", "[2001:db8::7]:1234", OWN):
        assert check(host=host, guard=guard) is None, host
    for host in ("tunnel.example:9001", "tunnel.example", "127.0.0.1:9001",
                 "admin.example.com.evil.example", "evil-admin.example.com"):
        refusal = check(host=host, guard=guard)
        assert refusal is not None and refusal.status == 421, host


def test_health_endpoints_answer_any_host() -> None:
    for path in ("/healthz", "/readyz"):
        assert check(path=path, host="lb.internal") is None
        assert check(path=path, host="") is None
        assert check(path=path, host="evil.example", sec_fetch_site="cross-site") is None
        refusal = check("POST", path, host="evil.example")
        assert refusal is not None and refusal.status == 421


# ------------------------------------------------------------ reads from other sites


def test_other_sites_cannot_read_but_may_link() -> None:
    assert check(sec_fetch_site="same-origin", sec_fetch_mode="cors") is None
    assert check(sec_fetch_site="none", sec_fetch_mode="navigate") is None
    assert check(path="/", sec_fetch_site="cross-site", sec_fetch_mode="navigate") is None
    for site in ("cross-site", "same-site", "Cross-Site"):
        for mode in ("no-cors", "cors", "", "websocket"):
            refusal = check(sec_fetch_site=site, sec_fetch_mode=mode)
            assert refusal is not None and refusal.status == 403, (site, mode)


# ------------------------------------------------------------ changes from other sites


def test_curl_with_the_header_may_change() -> None:
    assert post() is None
    assert post(offload_admin="yes") is None
    assert check("DELETE", "/api/bans/192.0.2.1", offload_admin="1") is None


@pytest.mark.parametrize("value", ["", "  "])
def test_a_change_without_the_header_is_refused(value: str) -> None:
    refusal = post(offload_admin=value)
    assert refusal is not None and refusal.status == 403
    assert "Offload-Admin: 1" in refusal.message
    refusal = check("POST", "/api/drain")
    assert refusal is not None and refusal.status == 403


def test_the_status_page_may_change() -> None:
    """What Chromium sends for the page's own fetch(..., {method: "POST"})."""
    assert post(origin=f"http://{OWN}", sec_fetch_site="same-origin", sec_fetch_mode="cors",
                sec_fetch_dest="empty") is None
    assert post(origin="http://localhost:8404", host="localhost:8404",
                sec_fetch_site="same-origin") is None
    assert post(sec_fetch_site="same-origin") is None          # no Origin: still same-origin


def test_behind_a_tls_proxy_the_https_origin_is_own() -> None:
    guard = AdminGuard(PORT, (parse_allowed_host("admin.example.com"),))

    def change(host: str, origin: str) -> Refusal | None:
        return check("POST", host=host, origin=origin, offload_admin="1",
                     sec_fetch_site="same-origin", guard=guard)

    assert change("admin.example.com", "https://admin.example.com") is None
    assert change("admin.example.com:443", "https://admin.example.com:443") is None
    assert change("admin.example.com", "http://admin.example.com") is None
    assert change("admin.example.com:8443", "https://admin.example.com:8443") is None
    refusal = change("admin.example.com", "https://admin.example.com:8443")
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize("site", ["cross-site", "same-site", "none", "CROSS-SITE", "bogus"])
def test_fetch_metadata_of_another_site_refuses_a_change(site: str) -> None:
    refusal = post(sec_fetch_site=site, origin=f"http://{OWN}")
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize("origin", [
    "null",                                  # sandboxed iframe, file: page, opaque redirect
    "http://127.0.0.1:8000",                 # another port on the same machine: same-site
    "http://localhost:8404",                 # another origin, though the same listener
    "http://evil.example",
    f"http://{OWN}.evil.example",
    f"http://{OWN}/",                        # Origins never carry a path
    f"ftp://{OWN}",
    f"//{OWN}",
    OWN,
    "",
    f"http://{OWN}, http://evil.example",
])
def test_an_origin_not_our_own_refuses_a_change(origin: str) -> None:
    # Older browsers send no Fetch Metadata: the Origin alone must do.
    refusal = post(origin=origin)
    assert refusal is not None and refusal.status == 403, origin


def test_the_no_cors_post_chromium_sends_is_refused() -> None:
    """The headers of a page at http://127.0.0.1:8000 doing
    ``fetch("http://127.0.0.1:8404/api/drain", {method: "POST", mode: "no-cors"})``."""
    refusal = check("POST", "/api/drain", origin="http://127.0.0.1:8000",
                    sec_fetch_site="same-site", sec_fetch_mode="no-cors",
                    sec_fetch_dest="empty", content_type="text/plain;charset=UTF-8")
    assert refusal is not None and refusal.status == 403
    # and the preflight it would need to send the header instead
    refusal = check("OPTIONS", "/api/drain", origin="http://127.0.0.1:8000",
                    sec_fetch_site="same-site", sec_fetch_mode="cors",
                    access_control_request_headers="offload-admin")
    assert refusal is not None and refusal.status == 403


# ------------------------------------------------------------ properties

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_NAMES = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_PORTS = st.integers(1, 65535)


@given(_NAMES, _PORTS)
def test_no_name_but_localhost_is_own_without_admin_hosts(name: str, port: int) -> None:
    refusal = check(host=f"{name}:{port}")
    assert (refusal is None) == (name == "localhost" and port == PORT)


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20),
       st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS"]))
def test_arbitrary_headers_never_crash_and_changes_need_our_origin(
        host: str, origin: str, site: str, method: str) -> None:
    refusal = check(method, host=host, origin=origin, sec_fetch_site=site, offload_admin="1")
    if host != OWN:
        assert refusal is not None
    if method not in ("GET", "HEAD") and origin.strip() != f"http://{OWN}":
        assert refusal is not None


@given(_NAMES, st.one_of(st.none(), _PORTS))
def test_split_authority_reads_what_it_is_given(name: str, port: int | None) -> None:
    text = name if port is None else f"{name}:{port}"
    assert split_authority(text) == (name, port)
    assert split_authority(text.upper()) == (name, port)


@given(st.ip_addresses(), _PORTS)
def test_split_authority_canonicalises_ip_literals(address: Any, port: int) -> None:
    text = f"[{address.exploded}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert split_authority(text) == (str(address), port)


@pytest.mark.parametrize("value", ["", "a b", "http://x", "x:", "[::1", "::1", "-x.example",
                                   "x..example", "x:99999"])
def test_bad_admin_hosts_entries_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"admin\.example\.com"):
        parse_allowed_host(value)


def test_admin_hosts_entries_print_as_written() -> None:
    assert str(parse_allowed_host("[2001:db8::7]:8404")) == "[2001:db8::7]:8404"
    assert parse_allowed_host("Admin.Example.COM") == AllowedHost("admin.example.com")


# ------------------------------------------------------------ the API applies it first


class _NoHost:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a refused request reached the host: {name}")


def test_guard_refusals_come_before_the_token_and_are_audited(
        caplog: pytest.LogCaptureFixture) -> None:
    times = iter(float(i) / 1000 for i in range(10_000))
    api = AdminApi(_NoHost(), b"t" * 20, AdminGuard(PORT), clock=lambda: next(times))
    request = AdminRequest("POST", "/api/reload", {
        "host": OWN, "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-site",
        "authorization": "Basic YWRtaW46d3Jvbmc="}, client="127.0.0.1", local="127.0.0.1")
    with caplog.at_level(logging.WARNING, "offload.audit"):
        response = api.authorized(request)
        assert response is not None and response.status == 403
        assert not any(name.lower() == "www-authenticate" for name, _ in response.headers), \
            "no credentials prompt for another site's page"
        for _ in range(200):  # a page looping over fetch(): the audit log stays readable
            api.authorized(request)
    lines = [r for r in caplog.records if r.getMessage() == "admin request refused"]
    assert 10 <= len(lines) <= 30
    assert lines[0].fields["result"] == "refused: same-site POST"  # type: ignore[attr-defined]
    assert lines[0].fields["who"] == "127.0.0.1"  # type: ignore[attr-defined]


# ------------------------------------------------------------ admission


def test_admission_under_the_caps_takes_everyone() -> None:
    assert admission([("a", True)] * 7, "a") == (True, None)
    assert admission([("b", False)] * 63, "a") == (True, None)


def test_a_client_at_its_cap_replaces_its_own_oldest_idle_connection() -> None:
    others = [("b", True)]
    mine = [("a", False), ("a", True), *[("a", True)] * 6]
    assert admission([*others, *mine], "a") == (True, 2)
    assert admission([("a", False)] * 8, "a") == (False, None)


def test_a_full_listener_replaces_the_oldest_idle_connection_of_anyone() -> None:
    full = [("b", False)] * 10 + [(f"c{i}", True) for i in range(54)]
    assert admission(full, "a") == (True, 10)
    assert admission([("b", False)] * 64, "a") == (False, None)


@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.booleans()), max_size=80),
       st.sampled_from("abcdefghijk"))
def test_admission_keeps_both_caps(open_connections: list[tuple[str, bool]], client: str) -> None:
    admit, victim = admission(open_connections, client, per_client=8, total=64)
    after = list(open_connections)
    if victim is not None:
        assert after[victim][1], "only a connection without a request is closed"
        del after[victim]
    if admit:
        after.append((client, True))
    mine_before = sum(1 for who, _ in open_connections if who == client)
    if mine_before < 8 and len(open_connections) < 64:
        assert admit and victim is None
    assert sum(1 for who, _ in after if who == client) <= max(8, mine_before)
    assert len(after) <= max(64, len(open_connections))
