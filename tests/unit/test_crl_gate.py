"""The CRL GET client against a canned HTTP server on 127.0.0.1: what it accepts as a CRL body
and every way it refuses an answer."""

from __future__ import annotations

import asyncio

import pytest

from offload.tls.crl_gate import FetchError, http_get


async def _serve_once(answer: bytes) -> tuple[asyncio.Server, str, list[bytes]]:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/ca/crl.der?v=1", requests


def _get(answer: bytes, max_size: int = 100) -> tuple[bytes | str, list[bytes]]:
    async def run() -> tuple[bytes | str, list[bytes]]:
        server, url, requests = await _serve_once(answer)
        try:
            async with asyncio.timeout(5):
                return await http_get(url, max_size), requests
        except FetchError as error:
            return error.reason, requests
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nabcde",
])
def test_a_body_framed_any_way_is_read_whole(answer: bytes) -> None:
    body, requests = _get(answer)
    assert body == b"abcde"
    assert requests[0].startswith(b"GET /ca/crl.der?v=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nConnection: close\r\n" in requests[0]


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "http_404"),
    (b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
     "http_302"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, "too_large"),
    (b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 101, "too_large"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "bad_answer"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "bad_answer"),
    (b"", "bad_answer"),
])
def test_anything_but_a_whole_200_body_within_the_limit_is_refused(answer: bytes,
                                                                   reason: str) -> None:
    assert _get(answer)[0] == reason


@pytest.mark.parametrize("url", ["https://crl.example.test/ca.crl", "http://user@host/ca.crl",
                                 "http://host:99999/ca.crl", "http:///ca.crl"])
def test_only_plain_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(FetchError) as raised:
        asyncio.run(http_get(url, 100))
    assert raised.value.reason == "bad_url"
