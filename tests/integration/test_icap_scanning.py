"""Malware scanning through ICAP, end to end: a real offload in front of a recording backend,
scanning with a real c-icap + ClamAV that knows one test signature (made in the test)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import http_config
from h2_client import H2Client
from harness import free_port
from http_client import get, https
from icap_server import INFECTED_MARKER, SIGNATURE, IcapServer, running_icap_server

CLEAN = b"name=report&content=" + b"quarterly numbers, nothing else " * 40
INFECTED = b"name=upload&content=" + b"a" * 3000 + INFECTED_MARKER + b"b" * 100


@pytest.fixture(scope="module")
def icap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IcapServer]:
    with running_icap_server(tmp_path_factory.mktemp("icap")) as server:
        yield server


def icap_line(url: str, **keys: str) -> str:
    keys = {"timeout": '"5s"', **keys}
    extra = "".join(f", {key} = {value}" for key, value in keys.items())
    return f'icap = {{ url = "{url}"{extra} }}'


def start(offload, pki, localhost_bundle, server, port, line: str):
    return offload(http_config(port, [localhost_bundle], [server.address], frontend=line))


def post(conn, path: str, body: bytes, *, chunked: bool = False):
    if chunked:
        conn.request("POST", path, body=iter([body[:1000], body[1000:]]),
                     headers={"Content-Type": "application/octet-stream"},
                     encode_chunked=True)
    else:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    return response, response.read()


def access(instance, path: str):
    return instance.wait_for(lambda e: e.get("path") == path and "status" in e)


def decision(instance, kind: str, path: str):
    return instance.wait_for(lambda e: e.get("event") == kind and e.get("path") == path)


def test_uploads_clean_pass_infected_refused(pki, localhost_bundle, http_backend, offload, port,
                                             icap_server):
    server = http_backend()
    instance = start(offload, pki, localhost_bundle, server, port, icap_line(icap_server.url))
    conn = https(port, pki.ca)
    response, body = post(conn, "/sha", CLEAN)
    assert response.status == 200, "\n".join(instance.lines[-10:])
    assert server.requests[-1].body == CLEAN  # the whole body went on, after the scan

    for chunked in (False, True):
        path = f"/upload-{'chunked' if chunked else 'length'}"
        conn = https(port, pki.ca)
        response, body = post(conn, path, INFECTED, chunked=chunked)
        assert response.status == 403, icap_server.log()
        rid = response.getheader("X-Request-ID")
        assert rid and f"request id: {rid}".encode() in body
        entry = access(instance, path)
        assert entry["status"] == 403 and entry["reason"] == f"icap_infected:{SIGNATURE}"
        assert entry["request_id"] == rid
        line = decision(instance, "icap_infected", path)
        assert line["cause"] == SIGNATURE and line["signature"] == SIGNATURE
        assert line["client"] == "127.0.0.1" and line["direction"] == "upload"
        assert line["request_id"] == rid
        assert all(r.target != path for r in server.requests)  # never reached the backend

    # a GET has nothing to scan and never waits for the service
    response, _ = get(https(port, pki.ca), "/page")
    assert response.status == 200


def test_infected_download_is_replaced(pki, localhost_bundle, http_backend, offload, port,
                                       icap_server):
    server = http_backend()
    instance = start(offload, pki, localhost_bundle, server, port, icap_line(
        icap_server.url, scan='["request-body", "response-body"]'))
    conn = https(port, pki.ca)
    response, body = get(conn, "/echo", **{"X-Note": "harmless"})
    assert response.status == 200 and json.loads(body)["target"] == "/echo"
    # /echo answers with the request's headers: the download now carries the signature
    response, body = get(https(port, pki.ca), "/echo?file",
                         **{"X-Note": INFECTED_MARKER.decode()})
    assert response.status == 403
    assert SIGNATURE.encode() in body and b"download was blocked" in body
    assert INFECTED_MARKER not in body
    rid = response.getheader("X-Request-ID")
    assert rid and rid.encode() in body
    assert server.requests[-1].target == "/echo?file"  # the backend answered; the client
    entry = access(instance, "/echo?file")              # got the page instead
    assert entry["status"] == 403 and entry["reason"] == f"icap_infected:{SIGNATURE}"
    line = decision(instance, "icap_infected", "/echo?file")
    assert line["direction"] == "download" and line["signature"] == SIGNATURE


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_service_down_follows_on_error(pki, localhost_bundle, http_backend, offload, port,
                                       policy):
    server = http_backend()
    down = f"icap://127.0.0.1:{free_port()}/avscan"
    instance = start(offload, pki, localhost_bundle, server, port,
                     icap_line(down, on_error=f'"{policy}"'))
    response, _ = post(https(port, pki.ca), "/sha", CLEAN)
    line = decision(instance, "icap_error", "/sha")
    assert line["cause"] == "icap_refused" and line["on_error"] == policy
    if policy == "allow":
        assert response.status == 200 and server.requests[-1].body == CLEAN
    else:
        assert response.status == 503
        assert access(instance, "/sha")["reason"] == "icap_error:icap_refused"
        assert not server.requests


def test_slow_service_times_out_and_is_denied(pki, localhost_bundle, http_backend, offload,
                                              port):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        server = http_backend()
        instance = start(offload, pki, localhost_bundle, server, port, icap_line(
            f"icap://127.0.0.1:{silent.getsockname()[1]}/avscan", timeout='"300ms"'))
        began = time.monotonic()
        response, _ = post(https(port, pki.ca), "/sha", CLEAN)
        assert response.status == 503 and time.monotonic() - began < 5
        assert access(instance, "/sha")["reason"] == "icap_error:icap_timeout"
        assert not server.requests
    finally:
        silent.close()


@pytest.mark.parametrize("policy", ["pass", "deny"])
def test_oversize_policy(pki, localhost_bundle, http_backend, offload, port, icap_server,
                         policy):
    server = http_backend()
    instance = start(offload, pki, localhost_bundle, server, port, icap_line(
        icap_server.url, max_size='"1KiB"', oversize=f'"{policy}"'))
    for chunked in (False, True):
        path = f"/big-{'chunked' if chunked else 'length'}"
        response, _ = post(https(port, pki.ca), path, INFECTED, chunked=chunked)
        if policy == "pass":  # larger than max_size: not scanned, forwarded whole
            assert response.status == 200
            assert server.requests[-1].target == path
            assert server.requests[-1].body == INFECTED
        else:
            assert response.status == 413
            assert access(instance, path)["reason"] == "icap_oversize"
            assert all(r.target != path for r in server.requests)
    # small enough bodies are still scanned
    response, _ = post(https(port, pki.ca), "/small", b"x" + INFECTED_MARKER)
    assert response.status == 403


def test_http2_streams_are_scanned_too(pki, localhost_bundle, http_backend, offload, port,
                                       icap_server):
    server = http_backend()
    instance = start(offload, pki, localhost_bundle, server, port, icap_line(
        icap_server.url, scan='["request-body", "response-body"]'))
    client = H2Client(port, pki.ca, timeout=20)
    infected = client.request("/h2-upload", method="POST", body=INFECTED)
    clean = client.request("/sha", method="POST", body=CLEAN)
    download = client.request("/echo", extra=[("x-note", INFECTED_MARKER.decode())])
    headers, body, _ = client.response(infected)
    assert headers[":status"] == "403" and b"request id: " in body
    headers, body, _ = client.response(clean)
    assert headers[":status"] == "200"
    headers, body, _ = client.response(download)
    assert headers[":status"] == "403" and SIGNATURE.encode() in body
    assert access(instance, "/h2-upload")["reason"] == f"icap_infected:{SIGNATURE}"
    assert all(r.target != "/h2-upload" for r in server.requests)
    assert [r.body for r in server.requests if r.target == "/sha"] == [CLEAN]
