"""Units as operators write them: durations, sizes and host:port addresses (offload.config.units)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.config.base import Invalid, show
from offload.config.units import (
    ALL_ADDRESSES,
    EventRate,
    HostPort,
    format_duration,
    parse_byte_rate,
    parse_duration,
    parse_hostport,
    parse_rate,
    parse_size,
)

# --- parse_duration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("10s", 10.0),
        ("0s", 0.0),
        ("2m", 120.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h1m1s", 3661.0),
        ("1d12h", 129600.0),
        ("2s500ms", 2.5),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        ("2.25h", 8100.0),
        ("10S", 10.0),
        ("  10s  ", 10.0),
        ("1M30S", 90.0),
    ],
)
def test_parse_duration_accepts_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [10, 0, 1.5, True, False, None, [10]])
def test_parse_duration_refuses_non_strings_and_asks_for_a_unit(value: object) -> None:
    with pytest.raises(Invalid, match="needs a unit") as caught:
        parse_duration(value)
    assert show(value) in caught.value.what
    assert '"10s"' in caught.value.fix


@pytest.mark.parametrize(
    "text",
    ["", "   ", "10", "1.5", "s", "ms", "ten s", "10 s", "-1s", "+1s", "10sec", "10w", "1m30",
     "1.s", ".5s", "1e3s", "1,5s", "10s garbage", "garbage 10s", "1m 30s"],
)
def test_parse_duration_refuses_text_without_a_valid_unit(text: str) -> None:
    with pytest.raises(Invalid, match="unit") as caught:
        parse_duration(text)
    message = str(caught.value)
    assert show(text) in caught.value.what
    for unit in ("ms", "s", "m", "h", "d"):
        assert unit in message


@given(st.integers(min_value=0, max_value=10**10))
def test_parse_duration_milliseconds_property(ms: int) -> None:
    assert round(parse_duration(f"{ms}ms") * 1000) == ms


@given(
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
)
def test_parse_duration_compound_property(d: int, h: int, m: int, s: int) -> None:
    assert parse_duration(f"{d}d{h}h{m}m{s}s") == d * 86400 + h * 3600 + m * 60 + s


# --- format_duration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.001, "1ms"),
        (0.5, "500ms"),
        (1.0, "1s"),
        (1.5, "1500ms"),
        (10.0, "10s"),
        (60.0, "1m"),
        (90.0, "90s"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (86400.0, "1d"),
        (172800.0, "2d"),
        (90000.0, "25h"),
    ],
)
def test_format_duration_picks_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**11))
def test_format_duration_round_trips_through_parse(ms: int) -> None:
    text = format_duration(parse_duration(f"{ms}ms"))
    assert round(parse_duration(text) * 1000) == ms
    assert math.isclose(parse_duration(text), ms / 1000, rel_tol=1e-12, abs_tol=1e-12)
    # Already the canonical form: formatting what it parses to gives the same text.
    assert format_duration(parse_duration(text)) == text


# --- parse_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1B", 1),
        ("512b", 512),
        ("64KiB", 64 * 1024),
        ("64kib", 64 * 1024),
        ("64KIB", 64 * 1024),
        ("1MiB", 1024**2),
        ("1mib", 1024**2),
        ("2GiB", 2 * 1024**3),
        ("10KB", 10_000),
        ("10kb", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("1Gb", 1_000_000_000),
        ("0KiB", 0),
        ("4096", 4096),
        (" 8KiB ", 8192),
        (0, 0),
        (4096, 4096),
    ],
)
def test_parse_size_accepts_units_and_plain_bytes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value",
    [-1, "-1", "-1KiB", "1.5MiB", "64XiB", "64KiBs", "KiB", "", "   ", "ten", "1e3", True, False,
     1.5, None, [64]],
)
def test_parse_size_refuses_negatives_and_garbage(value: object) -> None:
    with pytest.raises(ValueError, match=r"size|negative"):
        parse_size(value)


def test_parse_size_error_lists_the_units() -> None:
    with pytest.raises(ValueError, match="KiB, MiB, GiB"):
        parse_size("64 bananas")


@given(st.integers(min_value=0, max_value=2**40))
def test_parse_size_binary_and_decimal_units_property(n: int) -> None:
    assert parse_size(f"{n}KiB") == n * 1024
    assert parse_size(f"{n}MiB") == n * 1024**2
    assert parse_size(f"{n}GiB") == n * 1024**3
    assert parse_size(f"{n}KB") == n * 1000
    assert parse_size(f"{n}MB") == n * 1000**2
    assert parse_size(f"{n}GB") == n * 1000**3
    assert parse_size(f"{n}B") == n
    assert parse_size(n) == n
    assert parse_size(str(n)) == n


# --- parse_hostport -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:443", "0.0.0.0", 443),
        ("localhost:1", "localhost", 1),
        ("backend.example.com:65535", "backend.example.com", 65535),
        ("[::1]:443", "::1", 443),
        ("[2001:db8::10]:8443", "2001:db8::10", 8443),
        ("[::]:443", "::", 443),
        ("  10.0.0.1:80  ", "10.0.0.1", 80),
    ],
)
def test_parse_hostport_accepts(text: str, host: str, port: int) -> None:
    assert parse_hostport(text) == HostPort(host, port)
    assert parse_hostport(text, wildcard_ok=True) == HostPort(host, port)


@pytest.mark.parametrize(("text", "host"), [("*:443", "0.0.0.0"), (":443", ALL_ADDRESSES)])
def test_parse_hostport_wildcard_only_when_allowed(text: str, host: str) -> None:
    assert parse_hostport(text, wildcard_ok=True) == HostPort(host, 443)
    with pytest.raises(Invalid, match="has no host") as caught:
        parse_hostport(text)
    assert "127.0.0.1:443" in caught.value.fix


def test_colon_port_is_every_address_and_writes_back_as_written() -> None:
    every = parse_hostport(":8443", wildcard_ok=True)
    assert every.all_addresses and str(every) == ":8443"
    assert not parse_hostport("*:8443", wildcard_ok=True).all_addresses
    assert not parse_hostport("[::]:8443", wildcard_ok=True).all_addresses


@pytest.mark.parametrize("wildcard_ok", [True, False])
def test_a_port_alone_is_said_to_lack_the_host(wildcard_ok: bool) -> None:
    """``bind = "8443"`` lacks the host, not the port; the fix shows both ways to write it."""
    with pytest.raises(Invalid) as caught:
        parse_hostport("8443", wildcard_ok=wildcard_ok)
    assert caught.value.what == '"8443" is a port without a host'
    assert "127.0.0.1:8443" in caught.value.fix
    assert ('":8443"' in caught.value.fix) is wildcard_ok
    assert "no port" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "has no port"),
        ("127.0.0.1", "has no port"),
        ("", "the address is empty"),
        ("localhost:", "port must be a number from 1 to 65535"),
        ("localhost:0", "port must be a number from 1 to 65535"),
        ("localhost:65536", "port must be a number from 1 to 65535"),
        ("localhost:99999999", "port must be a number from 1 to 65535"),
        ("localhost:http", "port must be a number from 1 to 65535"),
        ("localhost:-1", "port must be a number from 1 to 65535"),
        ("localhost:+80", "port must be a number from 1 to 65535"),
        ("localhost:8 0", "port must be a number from 1 to 65535"),
        ("::1:443", "an IPv6 address needs brackets"),
        ("2001:db8::1:443", "an IPv6 address needs brackets"),
        ("::1", "an IPv6 address needs brackets"),
        ("[::1]", r'in brackets, then the port: "\[::1\]:443"'),
        ("[::1:443", r'in brackets, then the port: "\[::1\]:443"'),
        ("[::1]443", r'in brackets, then the port: "\[::1\]:443"'),
        ("[127.0.0.1]:443", 'brackets are for IPv6 addresses'),
        ("[::1]:0", "port must be a number from 1 to 65535"),
    ],
)
def test_parse_hostport_refuses(text: str, message: str) -> None:
    for wildcard_ok in (False, True):
        with pytest.raises(ValueError, match=message):
            parse_hostport(text, wildcard_ok=wildcard_ok)


def test_parse_hostport_superscript_digit_port_gets_the_friendly_message() -> None:
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        parse_hostport("localhost:²")


@given(st.integers(min_value=1, max_value=65535))
def test_parse_hostport_every_valid_port_property(port: int) -> None:
    assert parse_hostport(f"127.0.0.1:{port}").port == port
    assert parse_hostport(f"[::1]:{port}").port == port
    assert parse_hostport(f"*:{port}", wildcard_ok=True) == HostPort("0.0.0.0", port)


@given(st.integers(min_value=65536, max_value=10**9) | st.just(0))
def test_parse_hostport_port_out_of_range_property(port: int) -> None:
    with pytest.raises(ValueError, match="port must be a number"):
        parse_hostport(f"127.0.0.1:{port}")


@pytest.mark.parametrize("text", ["127.0.0.1:80", "example.com:443", "[::1]:443", "[2001:db8::1]:8443"])
def test_hostport_str_round_trips(text: str) -> None:
    assert str(parse_hostport(text)) == text
    assert parse_hostport(str(parse_hostport(text))) == parse_hostport(text)


def test_hostport_is_frozen() -> None:
    address = HostPort("127.0.0.1", 80)
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.port = 81  # type: ignore[misc]
    assert address.port == 80


# --- parse_rate, parse_byte_rate -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second", "burst"),
    [
        ("20/s", 20.0, 20.0),
        ("1/s", 1.0, 1.0),
        ("0.5/s", 0.5, 1.0),  # one second's worth, but at least 1
        ("2.5/s", 2.5, 3.0),  # rounded up
        ("120/m", 2.0, 2.0),
        ("100/m", 100 / 60, 2.0),
        ("3600/h", 1.0, 1.0),
        ("20/s burst 40", 20.0, 40.0),
        ("20/s burst 1", 20.0, 1.0),
        ("10/m burst 5", 10 / 60, 5.0),
        (" 20 / S  Burst  40 ", 20.0, 40.0),
    ],
)
def test_parse_rate(text: str, per_second: float, burst: float) -> None:
    assert parse_rate(text) == EventRate(per_second, burst)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("20", "not a rate"),
        ("20/d", "not a rate"),
        ("20 per second", "not a rate"),
        ("/s", "not a rate"),
        ("-1/s", "not a rate"),
        ("20/s burst", "not a rate"),
        ("20/s burst 2.5", "not a rate"),
        ("20/s 40", "not a rate"),
        (20, "not a rate"),
        (None, "not a rate"),
        ("0/s", "above zero"),
        ("0.0/m", "above zero"),
        ("20/s burst 0", "at least 1"),
    ],
)
def test_parse_rate_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(value)


def test_event_rate_text_round_trips() -> None:
    for text in ["20/s", "100/m", "7/h burst 3", "0.25/s burst 9"]:
        rate = parse_rate(text)
        assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [("500B/s", 500.0), ("1KiB/s", 1024.0), ("2 MB / s", 2e6), ("0/s", 0.0), ("off", 0.0),
     ("OFF", 0.0), ("64/s", 64.0)],
)
def test_parse_byte_rate(text: str, rate: float) -> None:
    assert parse_byte_rate(text) == rate


@pytest.mark.parametrize("value", ["500", "500B", "1KiB/m", "fast/s", "-5B/s", 500, None, "on"])
def test_parse_byte_rate_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="not a byte rate"):
        parse_byte_rate(value)
