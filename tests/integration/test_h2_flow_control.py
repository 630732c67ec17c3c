"""HTTP/2 flow control and what it leaves in memory, on both engines: a client is held back
while its backend does not read and gets its window back once the exchange is over; what was
queued for a client that left is freed when it leaves."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from conftest import http_config
from h2_client import H2Client, request_headers
from harness import Recording, rss_kib
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame

WINDOW = 65_535


class Sender:
    """Sends request bodies as the server's windows allow (the raw client does not)."""

    def __init__(self, client: H2Client) -> None:
        self.client = client
        self.connection = WINDOW
        self.streams: dict[int, int] = {}
        self.answers: list[object] = []

    def _take(self, frame: object) -> None:
        if isinstance(frame, WindowUpdateFrame):
            if frame.stream_id == 0:
                self.connection += frame.window_increment
            elif frame.stream_id in self.streams:
                self.streams[frame.stream_id] += frame.window_increment
        elif not isinstance(frame, SettingsFrame):
            self.answers.append(frame)

    def send(self, stream: int, body: bytes, *, end: bool, stall: float) -> int:
        """Send what the windows allow; stop once they stay shut for ``stall`` seconds.
        Returns how much was sent."""
        self.streams.setdefault(stream, WINDOW)
        sent = 0
        while sent < len(body):
            room = min(self.connection, self.streams[stream], 16_384, len(body) - sent)
            if room <= 0:
                try:
                    self._take(self.client.frame(stall))
                except TimeoutError:
                    return sent
                continue
            piece = body[sent:sent + room]
            sent += room
            self.connection -= room
            self.streams[stream] -= room
            self.client.data(stream, piece, end_stream=end and sent == len(body))
        return sent


@pytest.mark.parametrize("engine", ["nghttp2", "h2"])
def test_an_upload_answered_early_gives_the_connection_window_back(
        pki, engine, backend, localhost_bundle, offload, port):
    """The backend stops reading an upload and answers 413 (as servers with a body limit do):
    the body offload held back meanwhile went nowhere, and its share of the connection's
    window was never given back, so after it every upload on the connection stalled."""
    stuck = threading.Event()

    def refusing_backend(conn, recording: Recording) -> None:
        conn.settimeout(20)
        while b"\r\n\r\n" not in recording.data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            recording.data += chunk
        if b"/upload" not in recording.data[:100]:  # the second upload: read and answer it
            head, _, body = bytes(recording.data).partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            digest = hashlib.sha256(body[:length]).hexdigest().encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
                         % (len(digest), digest))
            return
        stuck.wait(20)  # the client's windows are shut: offload stopped passing the body on
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        recording.closed.wait(20)

    server = backend(refusing_backend)
    offload(http_config(port, [localhost_bundle], [server.address], access_log="off",
                        frontend=f'http2 = {{ engine = "{engine}", stream_window = {WINDOW}, '
                        f'connection_window = {WINDOW} }}'))
    client = H2Client(port, pki.ca, timeout=20)
    sender = Sender(client)
    upload = client.new_stream()
    size = 64 * 1024 * 1024
    client.headers(upload, request_headers("/upload", "POST",
                                           extra=[("content-length", str(size))]),
                   end_stream=False)
    started = time.monotonic()
    sent = sender.send(upload, b"x" * size, end=True, stall=1.0)
    assert sent < size, "offload passed on a body the backend never read"
    assert time.monotonic() - started < 30
    stuck.set()
    answer = client.frames_until(lambda f: f.stream_id == upload and "END_STREAM" in f.flags)
    assert answer[-1].stream_id == upload
    for frame in answer:  # windows opened meanwhile count too
        sender._take(frame)

    body = bytes(range(256)) * 400  # 100 KiB: more than the connection's window
    second = client.new_stream()
    client.headers(second, request_headers("/sha", "POST",
                                           extra=[("content-length", str(len(body)))]),
                   end_stream=False)
    assert sender.send(second, body, end=True, stall=5.0) == len(body), \
        "the connection's window stayed shut after the early answer"
    frames = [f for f in sender.answers if getattr(f, "stream_id", 0) == second]
    if not any("END_STREAM" in f.flags for f in frames):
        frames += client.frames_until(lambda f: f.stream_id == second and "END_STREAM" in f.flags)
    data = b"".join(f.data for f in frames if isinstance(f, DataFrame))
    assert data == hashlib.sha256(body).hexdigest().encode()


@pytest.mark.parametrize("engine", ["nghttp2", "h2"])
def test_what_a_departed_client_had_queued_is_freed_when_it_leaves(
        pki, engine, localhost_bundle, http_backend, offload, port):
    """Connections that each leave 50 responses queued behind a shut window, one after the
    other: each stream's finished deadline kept its exchange, and with it the connection and
    every body queued for it, until server_timeout (60 s) after the client had left, about
    6 MiB a connection; a client reconnecting in a loop grew the worker without bound."""
    server = http_backend()
    instance = offload(http_config(port, [localhost_bundle], [server.address],
                                   access_log="off",
                                   frontend=f'http2 = {{ engine = "{engine}" }}'))
    pid = int(instance.wait_msg("worker started")["pid"])
    warm = H2Client(port, pki.ca)
    assert warm.response(warm.request("/bytes/10"))[0][":status"] == "200"
    base = rss_kib(pid)
    for _ in range(20):
        client = H2Client(port, pki.ca, settings={0x4: 0}, timeout=10)
        streams = {client.request(f"/stream/{1024 * 1024}") for _ in range(50)}
        heads: set[int] = set()

        def answered(frame, heads=heads, streams=streams) -> bool:
            if isinstance(frame, HeadersFrame) and frame.stream_id in streams:
                heads.add(frame.stream_id)
            return heads == streams

        client.frames_until(answered)  # every response is queued behind the shut window
        client.close()
    assert warm.response(warm.request("/bytes/10"))[0][":status"] == "200"
    previous, grown = base, rss_kib(pid)
    deadline = time.monotonic() + 10
    while grown != previous and time.monotonic() < deadline:
        time.sleep(0.5)
        previous, grown = grown, rss_kib(pid)
    assert grown - base < 40 * 1024, f"{(grown - base) / 1024:.1f} MiB held for clients gone"
