"""HTTP/2 attacks, each reproduced with a bounded loopback client: the connection is ended with
the right GOAWAY code, the backend sees no work for the streams the attacker reset, and other
clients go on being served."""

from __future__ import annotations

import time

import pytest
from conftest import http_config
from h2_client import H2Client, request_headers
from harness import rss_kib
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

ENHANCE_YOUR_CALM = 0xB


@pytest.fixture
def target(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(
        port, [localhost_bundle], [server.address], access_log="off",
        frontend='send_timeout = "2s"\nhttp2 = { early_resets = "20/s burst 100" }'))
    return server, instance


def still_serves(port, ca) -> None:
    other = H2Client(port, ca)
    stream = other.request("/bytes/10")
    headers, body, _ = other.response(stream)
    assert headers[":status"] == "200" and len(body) == 10
    other.close()


def limit_fired(instance, limit: str) -> None:
    instance.wait_for(lambda e: e.get("event") == "h2_flood" and e.get("cause") == limit)


def test_rapid_reset_ends_the_connection_and_reaches_no_backend(pki, target, port):
    server, instance = target
    before = len(server.requests)
    attacker = H2Client(port, pki.ca)
    frames = b""
    for _ in range(500):
        stream = attacker.new_stream()
        head = HeadersFrame(stream, attacker.encode(request_headers("/rapid")))
        head.flags.add("END_HEADERS")
        head.flags.add("END_STREAM")
        frames += head.serialize() + RstStreamFrame(stream, error_code=0x8).serialize()
    try:
        attacker.send_raw(frames)
    except OSError:
        pass  # the server may close before it has read everything
    assert attacker.goaway_or_close() in (ENHANCE_YOUR_CALM, None)
    limit_fired(instance, "early_resets")
    assert not any(r.target == "/rapid" for r in server.requests[before:])
    still_serves(port, pki.ca)
    attacker.close()


def test_made_you_reset_is_counted_like_rapid_reset(pki, target, port):
    """The client never sends RST_STREAM: it makes the server reset each stream (a request
    with an upper-case field name is malformed: a stream error)."""
    server, instance = target
    before = len(server.requests)
    attacker = H2Client(port, pki.ca)
    frames = b""
    for _ in range(300):
        stream = attacker.new_stream()
        head = HeadersFrame(stream, attacker.encode(
            request_headers("/made-you", extra=[("X-Upper", "1")])))
        head.flags.add("END_HEADERS")
        head.flags.add("END_STREAM")
        frames += head.serialize()
    try:
        attacker.send_raw(frames)
    except OSError:
        pass
    assert attacker.goaway_or_close() in (ENHANCE_YOUR_CALM, None)
    limit_fired(instance, "early_resets")
    assert not any(r.target == "/made-you" for r in server.requests[before:])
    still_serves(port, pki.ca)
    attacker.close()


def test_an_endless_header_block_is_cut_short(pki, target, port):
    _server, instance = target
    attacker = H2Client(port, pki.ca)
    head = HeadersFrame(1, attacker.encode(request_headers("/cont"))[:3])
    attacker.send(head)
    try:
        for _ in range(200):
            attacker.continuation(1, b"\x40\x01a\x01b")  # literal fields, never ending
    except OSError:
        pass
    assert attacker.goaway_or_close() in (ENHANCE_YOUR_CALM, None)
    limit_fired(instance, "continuation_frames")
    still_serves(port, pki.ca)
    attacker.close()


@pytest.mark.parametrize(("frame", "limit"), [
    (PingFrame(0, opaque_data=b"flooding"), "ping_frames"),
    (SettingsFrame(0, settings={0x3: 100}), "settings_frames"),
    (DataFrame(1, b""), "empty_frames"),
], ids=["ping", "settings", "empty-data"])
def test_control_frame_floods_end_the_connection(pki, target, port, frame, limit):
    _server, instance = target
    attacker = H2Client(port, pki.ca)
    if isinstance(frame, DataFrame):  # a stream for the empty frames to go on
        attacker.headers(1, request_headers("/slow/2", "POST"), end_stream=False)
    flood = frame.serialize() * 2000
    try:
        attacker.send_raw(flood)
    except OSError:
        pass
    assert attacker.goaway_or_close() in (ENHANCE_YOUR_CALM, None)
    limit_fired(instance, limit)
    still_serves(port, pki.ca)
    attacker.close()


def test_a_window_never_opened_is_timed_out(pki, target, port):
    """The client announces a zero stream window and never opens it: the stream is reset
    after send_timeout (2 s here), and the connection goes on serving other streams."""
    _server, _instance = target
    client = H2Client(port, pki.ca, settings={0x4: 0}, timeout=15)
    stuck = client.request(f"/bytes/{1024 * 1024}")
    started = time.monotonic()
    frames = client.frames_until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == stuck,
                                 timeout=15)
    waited = time.monotonic() - started
    assert frames[-1].error_code == 0x8  # CANCEL
    assert 1.5 <= waited <= 10
    follow = client.request("/bytes/5")  # the connection itself goes on (with a window)
    client.window_update(follow, 100)
    headers, body, _ = client.response(follow)
    assert headers[":status"] == "200" and len(body) == 5
    client.close()


def test_the_stream_budget_per_connection_ends_with_a_graceful_goaway(
        pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address], access_log="off",
                        frontend="http2 = { max_requests = 5 }"))
    client = H2Client(port, pki.ca)
    answered = 0
    for _ in range(5):
        stream = client.request("/bytes/3")
        headers, _, _ = client.response(stream)
        answered += headers[":status"] == "200"
    assert answered == 5
    goaway = client.last_goaway or client.goaway()
    assert goaway.error_code == 0 and goaway.last_stream_id == 9
    client.close()


def test_a_client_that_never_reads_does_not_grow_memory(pki, target, port):
    """Fifty 2 MiB responses requested, nothing read: each stream's backend is paused once the
    client's window is shut, so what offload holds stays bounded, and it goes on serving."""
    _, instance = target
    pid = int(instance.wait_msg("worker started")["pid"])
    still_serves(port, pki.ca)
    base = rss_kib(pid)
    client = H2Client(port, pki.ca, timeout=10)
    for _ in range(50):
        client.request(f"/bytes/{2 * 1024 * 1024}")
    previous, grown = base, rss_kib(pid)
    deadline = time.monotonic() + 10
    while grown != previous and time.monotonic() < deadline:
        time.sleep(0.5)
        previous, grown = grown, rss_kib(pid)
    assert grown - base < 16 * 1024, f"{(grown - base) / 1024:.1f} MiB for 100 MiB asked"
    still_serves(port, pki.ca)
    client.close()
