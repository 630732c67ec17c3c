"""The client connection's backlog of unparsed bytes hands them out in order, piece by piece."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from offload.http.h1_connection import Backlog


@given(st.lists(st.binary(max_size=50), max_size=8), st.lists(st.integers(1, 40), max_size=20))
def test_backlog_gives_back_every_byte_in_order(reads: list[bytes], takes: list[int]) -> None:
    backlog = Backlog()
    out = b""
    for data, size in zip(reads, takes, strict=False):
        backlog.add(data)
        out += backlog.take(size)
    for data in reads[len(takes):]:
        backlog.add(data)
    out += backlog.take_all()
    assert out == b"".join(reads)
    assert not backlog


def test_head_end_counts_from_the_current_position() -> None:
    backlog = Backlog()
    backlog.add(b"GET /a HTTP/1.1\r\n\r\nGET /bb HTTP/1.1\r\n\r\nGET /c")
    first = backlog.head_end(4096)
    assert backlog.take(first) == b"GET /a HTTP/1.1\r\n\r\n"
    assert backlog.take(backlog.head_end(4096)) == b"GET /bb HTTP/1.1\r\n\r\n"
    assert backlog.head_end(4096) == -1
    assert backlog.head_end(3) == -1
    assert backlog.take_all() == b"GET /c"
