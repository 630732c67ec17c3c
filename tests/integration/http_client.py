"""HTTPS clients for the HTTP-mode tests: http.client for ordinary requests, raw reads for
pipelining."""

from __future__ import annotations

import http.client
import time

import pytest
from harness import TlsPipe, client_context

_OPEN: list[http.client.HTTPSConnection] = []


@pytest.fixture(autouse=True)
def close_http_clients():
    """Close every client :func:`https` made during the test."""
    yield
    while _OPEN:
        _OPEN.pop().close()


def https(port: int, ca, timeout: float = 20) -> http.client.HTTPSConnection:
    """An HTTPS client connection, closed after the test."""
    conn = http.client.HTTPSConnection("localhost", port,
                                       context=client_context(ca, alpn=["http/1.1"]),
                                       timeout=timeout)
    _OPEN.append(conn)
    return conn


def get(conn: http.client.HTTPSConnection, path: str, **headers: str
        ) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def read_responses(pipe: TlsPipe, count: int, deadline: float = 10) -> list[bytes]:
    """Read ``count`` Content-Length-framed responses off a raw connection."""
    data, responses = b"", []
    end = time.monotonic() + deadline
    while len(responses) < count and time.monotonic() < end:
        while b"\r\n\r\n" in data and len(responses) < count:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                break
            responses.append(head + b"\r\n\r\n" + rest[:length])
            data = rest[length:]
        if len(responses) < count:
            chunk = pipe.recv()
            if not chunk:
                break
            data += chunk
    return responses


