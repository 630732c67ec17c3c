"""Sealing what the fleet stores in Redis: AES-GCM bound to the key name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.fleet.seal import Sealer, SealError, check_secret

SECRET = b"0123456789abcdef0123456789abcdef"


@given(st.binary(max_size=4096), st.text(min_size=1, max_size=64))
def test_a_sealed_value_opens_under_its_own_name_only(plain: bytes, name: str) -> None:
    sealer = Sealer(SECRET)
    sealed = sealer.seal(name, plain)
    assert len(plain) < 8 or plain not in sealed
    assert sealer.open(name, sealed) == plain
    with pytest.raises(SealError):
        sealer.open(name + "x", sealed)


def test_each_seal_is_different() -> None:
    sealer = Sealer(SECRET)
    assert sealer.seal("k", b"same") != sealer.seal("k", b"same")


def test_another_secret_or_a_changed_byte_does_not_open() -> None:
    sealed = Sealer(SECRET).seal("k", b"private key")
    with pytest.raises(SealError, match="does not open"):
        Sealer(SECRET[::-1]).open("k", sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        Sealer(SECRET).open("k", tampered)
    with pytest.raises(SealError, match="not a sealed value"):
        Sealer(SECRET).open("k", b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(SealError, match="not a sealed value"):
        Sealer(SECRET).open("k", sealed[:20])


@pytest.mark.parametrize(("secret", "words"), [
    (b"short", "at least 32"),
    (b"0123456789abcdef 0123456789abcdef", "printable characters without spaces"),
])
def test_weak_secrets_are_refused(secret: bytes, words: str) -> None:
    problem = check_secret(secret)
    assert problem is not None and words in problem
    with pytest.raises(ValueError, match=words):
        Sealer(secret)
