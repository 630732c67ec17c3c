"""HTTP/2 requests built to fool the HTTP/1.1 hop behind offload, on both engines: what the
backend receives must be exactly one well-framed request per stream, carrying nothing the
client may not say, and other clients go on being served."""

from __future__ import annotations

import signal
import socket
import threading

import pytest
from conftest import http_config
from h2_client import Closed, H2Client, request_headers
from harness import Recording
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

PROTOCOL_ERROR = 0x1


@pytest.fixture(params=["nghttp2", "h2"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def target(engine, localhost_bundle, http_backend, offload, port):
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address], access_log="off",
                        frontend=f'http2 = {{ engine = "{engine}" }}'))
    return server


def still_serves(port, ca) -> None:
    other = H2Client(port, ca)
    headers, body, _ = other.response(other.request("/bytes/10"))
    assert headers[":status"] == "200" and len(body) == 10
    other.close()


def send_trailers(client: H2Client, stream: int, trailers: list[tuple[str, str]]) -> None:
    block = HeadersFrame(stream, client.encode(trailers))
    block.flags.add("END_HEADERS")
    block.flags.add("END_STREAM")
    client.send(block)


SMUGGLED = "1\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize("trailers", [
    [("x-note", SMUGGLED)],
    [("x-note", "1\nGET /smuggled HTTP/1.1")],
    [(":path", "/smuggled")],
    [("X-Upper", "1")],
    [("x bad", "1")],
    [("transfer-encoding", "chunked")],
], ids=["crlf-in-value", "lf-in-value", "pseudo-header", "upper-case-name", "space-in-name",
        "connection-specific"])
def test_malformed_request_trailers_reset_the_stream_and_smuggle_nothing(
        pki, target, port, trailers):
    """RFC 9113 §8.1: a malformed trailer block is a stream error. The h2 engine runs without
    h2's own header checks, and a CR LF in a trailer value went into the chunked trailer section
    of the backend request, where it started a request of the attacker's own."""
    server = target
    client = H2Client(port, pki.ca)
    stream = client.new_stream()
    client.headers(stream, request_headers("/upload", "POST"), end_stream=False)
    client.data(stream, b"hello")
    send_trailers(client, stream, trailers)
    assert client.reset_of(stream) == PROTOCOL_ERROR
    still_serves(port, pki.ca)  # a request after the attack, on the backend's connections
    assert not any(r.target == "/smuggled" for r in server.requests)
    assert not any(r.target == "/upload" for r in server.requests
                   if r.body == b"hello" and r.header("x-note") is not None)


def test_request_trailers_cannot_stand_in_for_fields_offload_vouches_for(
        pki, engine, backend, localhost_bundle, offload, port):
    """The HTTP/1.1 parser drops trailers that frame, route or vouch for a request (Host,
    X-Forwarded-For, Authorization...); HTTP/2 trailers went to the backend
    as they came, so a client could forge X-Forwarded-For for a backend that merges trailers
    into the head."""
    received = threading.Event()

    def recording_backend(conn, recording: Recording) -> None:
        conn.settimeout(10)
        while True:  # one chunked request: the head, then up to the end of its trailers
            data = bytes(recording.data)
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and b"\r\n0\r\n" in data[head_end:] and data.endswith(b"\r\n\r\n"):
                break
            chunk = conn.recv(65536)
            if not chunk:
                return
            recording.data += chunk
        received.set()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = backend(recording_backend)
    offload(http_config(port, [localhost_bundle], [server.address], access_log="off",
                        frontend=f'http2 = {{ engine = "{engine}" }}'))
    client = H2Client(port, pki.ca)
    stream = client.new_stream()
    client.headers(stream, request_headers("/upload", "POST"), end_stream=False)
    client.data(stream, b"hello")
    send_trailers(client, stream, [
        ("x-forwarded-for", "6.6.6.6"), ("host", "evil.example"),
        ("authorization", "Basic Zm9yZ2Vk"), ("x-checksum", "abc")])
    headers, body, _ = client.response(stream)
    assert headers[":status"] == "200" and body == b"ok"
    assert received.wait(5)
    raw = bytes(server.connections[0].data)
    trailer_section = raw[raw.index(b"\r\n0\r\n", raw.index(b"\r\n\r\n")) + 5:]
    assert trailer_section == b"x-checksum: abc\r\n\r\n", raw
    for forged in (b"6.6.6.6", b"evil.example", b"Zm9yZ2Vk"):
        assert forged not in raw


def test_no_stream_beyond_the_final_goaway_reaches_a_backend(
        pki, engine, localhost_bundle, http_backend, offload, port):
    """RFC 9113 §6.8: streams above a GOAWAY's last stream id were not processed, and a
    client may send them again. Streams that arrived in the same read as the one that spent
    ``max_requests`` were served all the same: a POST there would run twice."""
    server = http_backend()
    offload(http_config(port, [localhost_bundle], [server.address], access_log="off",
                        frontend=f'http2 = {{ engine = "{engine}", max_requests = 3 }}'))
    client = H2Client(port, pki.ca)
    frames = b""
    streams = []
    for index in range(6):
        stream = client.new_stream()
        streams.append(stream)
        head = HeadersFrame(stream, client.encode(request_headers(f"/once/{index}")))
        head.flags.add("END_HEADERS")
        head.flags.add("END_STREAM")
        frames += head.serialize()
    client.send_raw(frames)  # one read on the server's side
    ended: dict[int, str] = {}
    goaway = None

    def all_seen(frame) -> bool:
        nonlocal goaway
        if isinstance(frame, GoAwayFrame):
            goaway = frame
        elif isinstance(frame, RstStreamFrame):
            ended[frame.stream_id] = "reset"
        elif frame.stream_id and "END_STREAM" in frame.flags:
            ended[frame.stream_id] = "answered"
        last = goaway.last_stream_id if goaway is not None else 0
        return goaway is not None and all(s in ended for s in streams if s <= last)

    try:
        client.frames_until(all_seen, timeout=10)
        client.frames_until(lambda f: False, timeout=1)  # anything else that comes
    except (Closed, TimeoutError):
        pass
    assert goaway is not None and goaway.error_code == 0
    last = goaway.last_stream_id
    assert last == streams[2]
    served = {r.target for r in server.requests}
    beyond = {f"/once/{i}" for i, s in enumerate(streams) if s > last}
    assert not served & beyond, f"streams above {last} were processed: {served & beyond}"
    assert all(ended.get(s) != "answered" for s in streams if s > last)
    still_serves(port, pki.ca)


def test_a_stream_after_the_drain_goaway_round_trip_is_refused(
        pki, engine, localhost_bundle, http_backend, offload, port):
    """The client answers the shutdown notice's PING and opens a stream in the same write:
    the final GOAWAY names the stream before it, so that one must not be processed."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   access_log="off",
                                   frontend=f'http2 = {{ engine = "{engine}" }}'))
    client = H2Client(port, pki.ca, timeout=10)
    client.answer_pings = False
    assert client.response(client.request("/bytes/5"))[0][":status"] == "200"
    instance.signal(signal.SIGTERM)
    ping = client.frames_until(lambda f: isinstance(f, PingFrame) and "ACK" not in f.flags)[-1]
    kept = client.request("/slow/0.3")  # crossed the notice: served
    ack = PingFrame(0, opaque_data=ping.opaque_data)
    ack.flags.add("ACK")
    late = client.new_stream()
    head = HeadersFrame(late, client.encode(request_headers("/after-the-goaway")))
    head.flags.add("END_HEADERS")
    head.flags.add("END_STREAM")
    client.send_raw(ack.serialize() + head.serialize())
    headers, _, _ = client.response(kept)
    assert headers[":status"] == "200"
    final = client.last_goaway or client.goaway()
    assert final.last_stream_id in (kept, late)  # h2 has parsed the whole read by then
    assert instance.process.wait(15) == 0
    if final.last_stream_id == kept:
        assert not any(r.target == "/after-the-goaway" for r in server.requests)


def test_offloads_own_answer_to_a_head_request_has_no_body(
        pki, engine, localhost_bundle, offload, port):
    """RFC 9110 §9.3.2: no content in an answer to HEAD. offload's own answers (here a 503: no
    server) went with their DATA, which an HTTP/2 client takes as a stream error."""
    dead = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: every request is answered 503 by offload
    offload(http_config(port, [localhost_bundle], [address], access_log="off",
                        frontend=f'http2 = {{ engine = "{engine}" }}'))
    client = H2Client(port, pki.ca)
    for method, refused in (("HEAD", False), ("HEAD", True), ("GET", False)):
        stream = client.new_stream()
        fields = request_headers("/", method)
        if refused:  # refused before it became an exchange: a :scheme other than https
            fields = [(name, "http" if name == ":scheme" else value) for name, value in fields]
        client.headers(stream, fields)
        frames = client.frames_until(lambda f, s=stream: f.stream_id == s
                                     and "END_STREAM" in f.flags)
        mine = [f for f in frames if f.stream_id == stream]
        head = mine[0]
        assert isinstance(head, HeadersFrame)
        status = head.decoded[":status"]  # type: ignore[attr-defined]
        assert status == ("400" if refused else "503")
        if method == "HEAD":
            assert mine == [head] and "END_STREAM" in head.flags, mine
            assert int(head.decoded["content-length"]) > 0  # type: ignore[attr-defined]
        else:
            assert isinstance(mine[-1], DataFrame) and mine[-1].data
