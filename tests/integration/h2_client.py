"""A raw HTTP/2 client for conformance and attack tests: frames built and read one by one with
``hyperframe`` and ``hpack``, over a blocking TLS socket that negotiated ALPN ``h2``.

It does exactly what a test says, including what no real client would: frames out of order,
wrong sizes, floods. Reads are bounded by a deadline; nothing waits forever.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ERRORS = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR",
          0x3: "FLOW_CONTROL_ERROR", 0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED",
          0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
          0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
          0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}


def request_headers(path: str = "/", method: str = "GET", authority: str = "localhost",
                    extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", authority),
            (":path", path), *extra]


_OPEN: list[H2Client] = []


@pytest.fixture(autouse=True)
def close_h2_clients() -> Iterator[None]:
    """Close every raw HTTP/2 client a test made, however it ended."""
    yield
    while _OPEN:
        _OPEN.pop().close()


class Closed(Exception):
    """The server closed the connection."""


class H2Client:
    """One TLS connection speaking raw HTTP/2 frames to 127.0.0.1:``port``."""

    def __init__(self, port: int, ca: Path, *, alpn: tuple[str, ...] = ("h2",),
                 preface: bool = True, settings: dict[int, int] | None = None,
                 timeout: float = 5.0) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.alpn = self.sock.selected_alpn_protocol()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.last_goaway: GoAwayFrame | None = None
        self.kept: dict[int, list[Frame]] = {}
        """Frames of streams nobody was waiting for when they came."""
        _OPEN.append(self)
        self.buffer = b""
        self.timeout = timeout
        self.closed = False
        self.next_stream = 1
        self.answer_pings = True
        """Acknowledge the server's PINGs as they come, as real clients do."""
        if preface:
            self.send_raw(PREFACE)
            self.send(SettingsFrame(0, settings=settings or {}))

    # ------------------------------------------------------------ sending

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        self.send_raw(b"".join(frame.serialize() for frame in frames))

    def new_stream(self) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        return stream_id

    def encode(self, headers: list[tuple[str, str]]) -> bytes:
        return self.encoder.encode(headers)

    def headers(self, stream_id: int, headers: list[tuple[str, str]], *,
                end_stream: bool = True) -> None:
        frame = HeadersFrame(stream_id, self.encode(headers))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def request(self, path: str = "/", *, method: str = "GET", body: bytes | None = None,
                extra: Iterable[tuple[str, str]] = ()) -> int:
        stream_id = self.new_stream()
        fields = request_headers(path, method, extra=extra)
        if body is not None:
            fields.append(("content-length", str(len(body))))
        self.headers(stream_id, fields, end_stream=body is None)
        if body is not None:
            data = DataFrame(stream_id, body)
            data.flags.add("END_STREAM")
            self.send(data)
        return stream_id

    def data(self, stream_id: int, payload: bytes, *, end_stream: bool = False) -> None:
        frame = DataFrame(stream_id, payload)
        if end_stream:
            frame.flags.add("END_STREAM")
        self.send(frame)

    def reset(self, stream_id: int, code: int = 0x8) -> None:
        self.send(RstStreamFrame(stream_id, error_code=code))

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send(WindowUpdateFrame(stream_id, window_increment=increment))

    def ping(self, payload: bytes = b"12345678", *, ack: bool = False) -> None:
        frame = PingFrame(0, opaque_data=payload)
        if ack:
            frame.flags.add("ACK")
        self.send(frame)

    def continuation(self, stream_id: int, block: bytes, *, end: bool = False) -> None:
        frame = ContinuationFrame(stream_id, block)
        if end:
            frame.flags.add("END_HEADERS")
        self.send(frame)

    # ------------------------------------------------------------ reading

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLZeroReturnError, ConnectionResetError, ssl.SSLEOFError):
            chunk = b""
        except TimeoutError:
            raise TimeoutError("no frame from the server in time") from None
        if not chunk:
            self.closed = True
            raise Closed()
        self.buffer += chunk

    def frame(self, timeout: float | None = None) -> Frame:
        """The next frame from the server (acknowledging its SETTINGS on the way)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            while len(self.buffer) < 9:
                self._fill(deadline)
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            while len(self.buffer) < 9 + length:
                self._fill(deadline)
            frame.parse_body(memoryview(self.buffer[9:9 + length]))
            self.buffer = self.buffer[9 + length:]
            if isinstance(frame, HeadersFrame):  # every block, or the HPACK table drifts
                frame.decoded = dict(  # type: ignore[attr-defined]
                    self.decoder.decode(frame.data, raw=False))
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                try:
                    self.send(ack)
                except OSError:
                    pass
            if (isinstance(frame, PingFrame) and "ACK" not in frame.flags
                    and self.answer_pings):
                try:
                    self.ping(frame.opaque_data, ack=True)
                except OSError:
                    pass
            return frame

    def frames_until(self, done: Callable[[Frame], bool], timeout: float | None = None
                     ) -> list[Frame]:
        """Frames up to and including the first for which ``done`` is true."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        seen: list[Frame] = []
        while True:
            frame = self.frame(max(0.0, deadline - time.monotonic()))
            seen.append(frame)
            if done(frame):
                return seen

    def goaway(self, timeout: float | None = None) -> GoAwayFrame:
        """Wait for GOAWAY (frames before it are dropped)."""
        frames = self.frames_until(lambda f: isinstance(f, GoAwayFrame), timeout)
        frame = frames[-1]
        assert isinstance(frame, GoAwayFrame)
        return frame

    def goaway_or_close(self, timeout: float | None = None) -> int | None:
        """The GOAWAY error code, or None if the server just closed."""
        try:
            return self.goaway(timeout).error_code
        except Closed:
            return None

    def response(self, stream_id: int, timeout: float | None = None
                 ) -> tuple[dict[str, str], bytes, list[Frame]]:
        """The response on ``stream_id``: (headers of the final response, body, all frames
        of the stream). Frames of other streams that come meanwhile are kept for them (their
        bytes open the connection's window, not their stream's, until they are asked for).
        Raises if the stream is reset or the connection goes away."""
        headers: dict[str, str] = {}
        body = b""
        frames: list[Frame] = []
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        kept = self.kept.pop(stream_id, [])
        taken = sum(f.flow_controlled_length for f in kept if isinstance(f, DataFrame))
        if taken:
            self._open_window(stream_id, taken)
        while True:
            if kept:
                frame = kept.pop(0)
            else:
                frame = self.frame(max(0.0, deadline - time.monotonic()))
                if isinstance(frame, GoAwayFrame):
                    self.last_goaway = frame
                    if frame.error_code or frame.last_stream_id < stream_id:
                        raise AssertionError(
                            f"GOAWAY {ERRORS.get(frame.error_code)} while waiting")
                    continue  # a graceful one: this stream still finishes
                if frame.stream_id != stream_id:
                    if frame.stream_id:
                        self.kept.setdefault(frame.stream_id, []).append(frame)
                        if isinstance(frame, DataFrame) and frame.flow_controlled_length:
                            self._open_window(0, frame.flow_controlled_length)
                    continue
                if isinstance(frame, DataFrame) and frame.flow_controlled_length \
                        and "END_STREAM" not in frame.flags:
                    self._open_window(0, frame.flow_controlled_length)
                    self._open_window(stream_id, frame.flow_controlled_length)
            frames.append(frame)
            if isinstance(frame, RstStreamFrame):
                raise AssertionError(f"stream reset: {ERRORS.get(frame.error_code)}")
            if isinstance(frame, HeadersFrame):
                decoded = frame.decoded  # type: ignore[attr-defined]
                if not decoded.get(":status", "200").startswith("1"):
                    headers = decoded
            elif isinstance(frame, DataFrame):
                body += frame.data
            if "END_STREAM" in frame.flags:
                return headers, body, frames

    def _open_window(self, stream_id: int, increment: int) -> None:
        try:
            self.window_update(stream_id, increment)
        except OSError:
            pass  # the server may have closed already (after a GOAWAY)

    def reset_of(self, stream_id: int, timeout: float | None = None) -> int:
        """The error code the server resets ``stream_id`` with (fails on anything else
        ending it)."""
        frames = self.frames_until(
            lambda f: (isinstance(f, RstStreamFrame) and f.stream_id == stream_id)
            or isinstance(f, GoAwayFrame)
            or (f.stream_id == stream_id and "END_STREAM" in f.flags), timeout)
        last = frames[-1]
        assert isinstance(last, RstStreamFrame), f"expected RST_STREAM, got {last}"
        return last.error_code

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
