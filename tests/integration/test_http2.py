"""HTTP/2 with real clients: curl, h2load, httpx, headless Chromium; large bodies both ways on
concurrent streams, and a slow stream beside fast ones."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import http_config
from h2_client import Closed, H2Client
from harness import Offload, need
from http_backend import pattern
from hyperframe.frame import Frame, GoAwayFrame, PingFrame


@pytest.fixture
def h2_offload(pki, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address]))
    return server, instance


def curl(port: int, ca: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [need("curl", "curl"), "-sS", "--http2", "--cacert", str(ca), "--resolve",
         f"localhost:{port}:127.0.0.1", *args], capture_output=True, timeout=60, check=False)


def test_curl_speaks_http2(pki, h2_offload, port):
    _server, instance = h2_offload
    done = curl(port, pki.ca, "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                f"https://localhost:{port}/bytes/1000")
    assert done.stdout == b"2 200", done.stderr
    done = curl(port, pki.ca, "--data-binary", "hello over h2", f"https://localhost:{port}/sha")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(b"hello over h2").hexdigest().encode()
    line = instance.wait_for(lambda e: e.get("path") == "/sha" and "status" in e)
    assert line["http"] == "2" and line["alpn"] == "h2" and line["status"] == 200


def test_curl_http11_still_works_beside_it(pki, h2_offload, port):
    done = curl(port, pki.ca, "--http1.1", "-o", "/dev/null", "-w", "%{http_version}",
                f"https://localhost:{port}/bytes/10")
    assert done.stdout == b"1.1"


def test_h2load_many_streams_all_succeed(pki, h2_offload, port):
    tool = need("h2load", "nghttp2-client")
    done = subprocess.run([tool, "-n", "2000", "-c", "4", "-m", "20",
                           f"https://localhost:{port}/bytes/100"],
                          capture_output=True, timeout=120, check=False,
                          env={**os.environ, "SSL_CERT_FILE": str(pki.ca)})
    out = done.stdout.decode()
    assert "Application protocol: h2" in out, out
    assert "2000 succeeded, 0 failed, 0 errored" in out, out


def test_httpx_http2_concurrent_requests(pki, h2_offload, port):
    try:
        import httpx
    except ImportError:
        pytest.fail("httpx is missing: pip install -e '.[test]' (or pip install 'httpx[http2]')")
    context = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(http2=True, verify=context) as client:
        responses = [client.get(f"https://localhost:{port}/bytes/{n}") for n in (1, 500, 70000)]
        assert all(r.http_version == "HTTP/2" for r in responses)
        assert [len(r.content) for r in responses] == [1, 500, 70000]
        assert responses[2].content == pattern(70000)


def test_large_bodies_both_ways_on_concurrent_streams(pki, h2_offload, port, tmp_path):
    """10 MiB down twice and 10 MiB up twice, as four concurrent streams of one connection
    (curl --parallel multiplexes them), each checked by sha256."""
    size = 10 * 1024 * 1024
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(size))
    base = f"https://localhost:{port}"
    common = ["--cacert", str(pki.ca), "--resolve", f"localhost:{port}:127.0.0.1", "--http2"]
    command = [need("curl", "curl"), "-sS", "--parallel", *common,
               "-o", str(tmp_path / "down1"), f"{base}/bytes/{size}",
               "-o", str(tmp_path / "down2"), f"{base}/bytes/{size}"]
    for name in ("up1", "up2"):
        command += ["--next", *common, "--data-binary", f"@{upload}",
                    "-o", str(tmp_path / name), f"{base}/sha"]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-500:]
    expected = hashlib.sha256(pattern(size)).digest()
    for name in ("down1", "down2"):
        assert hashlib.sha256((tmp_path / name).read_bytes()).digest() == expected
    for name in ("up1", "up2"):
        assert (tmp_path / name).read_bytes().strip() == hashlib.sha256(
            upload.read_bytes()).hexdigest().encode()
    _, instance = h2_offload
    instance.wait_for(lambda e: e.get("path") == "/sha" and e.get("status") == 200)
    lines = [e for e in instance.events if e.get("http") == "2" and "status" in e]
    assert len(lines) == 4 and len({e["client"] for e in lines}) == 1, "one connection"


def test_a_slow_stream_does_not_hold_up_the_others(pki, h2_offload, port):
    """One stream's window stays shut (the client reads nothing of it); the others on the same
    connection are answered in full."""
    client = H2Client(port, pki.ca, settings={0x4: 16384}, timeout=30)
    slow = client.request(f"/bytes/{4 * 1024 * 1024}")
    fast = [client.request(f"/bytes/{100000 + i}") for i in range(5)]
    for index, stream in enumerate(fast):
        headers, body, _ = client.response(stream)
        assert headers[":status"] == "200" and body == pattern(100000 + index)
    assert slow not in fast
    client.close()


def test_chromium_loads_a_page_and_its_resources_over_h2(pki, h2_offload, port):
    from browser import Browser

    with Browser(flags=("--ignore-certificate-errors",),
                 resolve={"localhost": "127.0.0.1"}) as browser:
        browser.navigate(f"https://localhost:{port}/page")
        browser.evaluate("""window.loaded = Promise.all([...Array(40).keys()].map(
            i => fetch('/bytes/' + (1000 + i)).then(r => r.arrayBuffer())))
            .then(bodies => bodies.map(b => b.byteLength))""")
        sizes = browser.evaluate("window.loaded")
        protocols = browser.evaluate(
            "JSON.stringify([performance.getEntriesByType('navigation')[0].nextHopProtocol,"
            " ...performance.getEntriesByType('resource').map(e => e.nextHopProtocol)])")
    assert sizes == [1000 + i for i in range(40)]
    assert set(json.loads(protocols)) == {"h2"}


def _reload_or_stop(instance: Offload, how: str) -> None:
    """Drain the workers: a reload with a changed configuration (so that the workers are
    replaced), or a stop."""
    if how == "reload":
        assert instance.config is not None
        text = instance.config.read_text()
        instance.config.write_text(text.replace('drain_timeout = "10s"', 'drain_timeout = "11s"'))
        instance.signal(signal.SIGHUP)
    else:
        instance.signal(signal.SIGTERM)


@pytest.mark.parametrize("how", ["reload", "stop"])
def test_streams_in_flight_finish_across_a_reload_or_stop(pki, h2_offload, port, how):
    """Graceful GOAWAY: the streams a client has open when the worker drains all finish; new
    streams go to a new connection (to the new workers, on a reload)."""
    _server, instance = h2_offload
    client = H2Client(port, pki.ca, timeout=20)
    streams = [client.request(f"/slow/{0.5 + i / 10}") for i in range(4)]
    mark = len(instance.events)
    _reload_or_stop(instance, how)
    instance.wait_msg("worker draining", after=mark)
    for stream in streams:
        headers, body, _ = client.response(stream)
        assert headers[":status"] == "200" and body == b"slow\n"
    goaway = client.last_goaway or client.goaway()
    assert goaway.error_code == 0 and goaway.last_stream_id >= streams[-1]
    if how == "reload":
        instance.wait_msg("reload complete", after=mark)
        still = H2Client(port, pki.ca)
        assert still.response(still.request("/bytes/3"))[0][":status"] == "200"
    else:
        assert instance.process.wait(15) == 0


@pytest.mark.parametrize("how", ["reload", "stop"])
def test_a_request_sent_before_the_shutdown_notice_arrived_is_served(pki, h2_offload, port, how):
    """RFC 9113 §6.8: a stop's first GOAWAY says 2^31-1 and carries a PING; a stream the client
    opened before it saw the notice is served as long as the PING has not come back. An idle
    connection used to be closed at once, losing such a request (seen on a loaded CI run)."""
    _server, instance = h2_offload
    client = H2Client(port, pki.ca, timeout=20)
    client.answer_pings = False  # the test answers the shutdown notice's PING itself
    assert client.response(client.request("/bytes/5"))[0][":status"] == "200"  # settled, idle
    mark = len(instance.events)
    _reload_or_stop(instance, how)
    seen: dict[str, Frame] = {}

    def notice_and_ping(frame: Frame) -> bool:
        if isinstance(frame, GoAwayFrame) or (isinstance(frame, PingFrame)
                                              and "ACK" not in frame.flags):
            seen[type(frame).__name__] = frame
        return len(seen) == 2

    client.frames_until(notice_and_ping)  # in either order
    notice, ping = seen["GoAwayFrame"], seen["PingFrame"]
    assert (notice.error_code, notice.last_stream_id) == (0, 2**31 - 1)  # type: ignore[attr-defined]
    late = client.request("/slow/0.3")  # crossed the notice on the wire
    client.ping(ping.opaque_data, ack=True)  # type: ignore[attr-defined]
    headers, body, _ = client.response(late)
    assert headers[":status"] == "200" and body == b"slow\n"
    final = client.last_goaway or client.goaway()
    assert final.error_code == 0 and final.last_stream_id == late
    with pytest.raises(Closed):
        client.frames_until(lambda f: False, timeout=5)
    if how == "reload":
        instance.wait_msg("reload complete", after=mark)
    else:
        assert instance.process.wait(15) == 0


def test_a_client_that_never_answers_the_shutdown_ping_does_not_hold_a_stop(pki, h2_offload,
                                                                            port):
    """A client that ignores the notice's PING is closed after a short wait, not kept until
    the drain deadline (10 s here): one silent client must not slow every stop."""
    _server, instance = h2_offload
    client = H2Client(port, pki.ca, timeout=20)
    client.answer_pings = False
    assert client.response(client.request("/bytes/5"))[0][":status"] == "200"
    started = time.monotonic()
    instance.signal(signal.SIGTERM)
    frames: list[Frame] = []
    with pytest.raises(Closed):
        client.frames_until(lambda f: frames.append(f) is not None, timeout=15)
    goaways = [(f.last_stream_id, f.error_code) for f in frames if isinstance(f, GoAwayFrame)]  # type: ignore[attr-defined]
    assert goaways == [(2**31 - 1, 0), (1, 0)], "the notice, then the real last stream"
    assert instance.process.wait(15) == 0
    assert time.monotonic() - started < 8, "the drain deadline was waited out"


def test_the_keepalive_goaway_names_the_last_stream_served(pki, localhost_bundle, http_backend,
                                                           offload, port):
    """An idle connection's GOAWAY names the last stream it took, not 0: a GOAWAY below a
    stream tells the client that stream was never processed, inviting a replay."""
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address],
                        frontend='keepalive_timeout = "1s"'))
    client = H2Client(port, pki.ca, timeout=10)
    for path in ("/bytes/1", "/bytes/2"):
        assert client.response(client.request(path))[0][":status"] == "200"
    goaway = client.goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (0, 3)


def test_a_stream_reset_by_the_client_cancels_its_backend_request(pki, backend, offload, port,
                                                                  localhost_bundle):
    """The backend connection of a reset stream is closed: the backend stops working for a
    client that left."""
    from harness import Recording

    closed = threading.Event()
    working = threading.Event()

    def slow_backend(conn, recording: Recording) -> None:
        while b"\r\n\r\n" not in recording.data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            recording.data += chunk
        working.set()
        conn.settimeout(10)
        try:
            if conn.recv(1) == b"":
                closed.set()  # offload let go of the request: the work can stop
        except OSError:
            closed.set()

    server = backend(slow_backend)
    offload(http_config(port, [localhost_bundle], [server.address]))
    client = H2Client(port, pki.ca)
    stream = client.request("/long-job")
    assert working.wait(5), "the request never reached the backend"
    client.reset(stream)
    assert closed.wait(5), "the backend connection stayed open for a reset stream"
