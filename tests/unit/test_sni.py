"""Tests for offload.tls.sni: certificate selection by server name and the SNI contexts."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from tls_helpers import authority, cipher_name, client_context, handshake, issued, leaf_der, served_leaf

from offload.demo.pki import Issued, KeyType
from offload.tls.certs import LoadedCertificate, load_certificate
from offload.tls.policy import server_context
from offload.tls.sni import (
    SNI_ATTRIBUTE,
    SNI_MATCHED_ATTRIBUTE,
    CertificateIndex,
    normalise_name,
)
from offload.tls.store import CertificateStore

Load = Callable[..., LoadedCertificate]


@pytest.fixture
def load(tmp_path: Path) -> Load:
    """Issue (or take) a certificate, write it as a bundle and load it."""
    counter = itertools.count()

    def _load(names: tuple[str, ...] | Issued, key_type: KeyType = "ecdsa",
              days: int | None = None) -> LoadedCertificate:
        if isinstance(names, Issued):
            certificate = names
        elif days is None:
            certificate = issued(names, key_type)
        else:
            certificate = authority().issue(list(names), key_type, days=days)
        path = tmp_path / f"cert{next(counter)}.pem"
        path.write_bytes(certificate.bundle())
        return load_certificate(str(path))

    return _load


# --- CertificateIndex.select --------------------------------------------------------------


def test_exact_match(load: Load) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    index = CertificateIndex([a, b])
    assert index.select("b.example.com") == ((b,), True)
    assert index.select("a.example.com") == ((a,), True)


def test_wildcard_matches_one_label_only(load: Load) -> None:
    default = load(("default.example.org",))
    wildcard = load(("*.example.com",))
    index = CertificateIndex([default, wildcard])
    assert index.select("a.example.com") == ((wildcard,), True)
    assert index.select("example.com") == ((default,), False)
    assert index.select("a.b.example.com") == ((default,), False)
    assert index.select("aexample.com") == ((default,), False)


def test_exact_beats_wildcard(load: Load) -> None:
    wildcard = load(("*.example.com",))
    exact = load(("a.example.com",))
    index = CertificateIndex([wildcard, exact])
    assert index.select("a.example.com") == ((exact,), True)
    assert index.select("b.example.com") == ((wildcard,), True)


def test_unknown_name_gets_default_unmatched(load: Load) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    index = CertificateIndex([a, b])
    assert index.select("c.example.com") == ((a,), False)


@pytest.mark.parametrize("server_name", [None, ""])
def test_no_name_gets_default(load: Load, server_name: str | None) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    assert CertificateIndex([a, b]).select(server_name) == ((a,), False)


@pytest.mark.parametrize("server_name", ["B.EXAMPLE.com", "b.example.com.", "B.Example.Com."])
def test_case_and_trailing_dot_are_ignored(load: Load, server_name: str) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    assert CertificateIndex([a, b]).select(server_name) == ((b,), True)


def test_case_and_trailing_dot_with_wildcard(load: Load) -> None:
    a, wildcard = load(("a.example.com",)), load(("*.example.com",))
    assert CertificateIndex([a, wildcard]).select("X.EXAMPLE.COM.") == ((wildcard,), True)


def test_normalise_name() -> None:
    assert normalise_name(" WWW.Example.COM. ") == "www.example.com"


def test_ecdsa_and_rsa_for_same_names_are_served_together(load: Load) -> None:
    other = load(("other.example.com",))
    rsa = load(("a.example.com", "b.example.com"), "rsa")
    ecdsa = load(("a.example.com", "b.example.com"))
    index = CertificateIndex([other, rsa, ecdsa])
    # Ordered by key type, whatever the configuration order.
    assert index.select("a.example.com") == ((ecdsa, rsa), True)
    assert index.select("b.example.com") == ((ecdsa, rsa), True)


def test_each_key_type_resolved_on_its_own(load: Load) -> None:
    ecdsa_exact = load(("a.example.com",))
    rsa_wildcard = load(("*.example.com",), "rsa")
    index = CertificateIndex([ecdsa_exact, rsa_wildcard])
    assert index.select("a.example.com") == ((ecdsa_exact, rsa_wildcard), True)
    assert index.select("b.example.com") == ((rsa_wildcard,), True)


def test_exact_of_one_type_does_not_hide_wildcard_of_same_type_elsewhere(load: Load) -> None:
    ecdsa_exact = load(("a.example.com",))
    ecdsa_wildcard = load(("*.example.com",))
    index = CertificateIndex([ecdsa_exact, ecdsa_wildcard])
    assert index.select("a.example.com") == ((ecdsa_exact,), True)


@pytest.mark.parametrize("longer_first", [True, False])
def test_later_expiring_certificate_wins(load: Load, longer_first: bool) -> None:
    short = load(("a.example.com",), days=60)
    long = load(("a.example.com",), days=300)
    default = load(("default.example.org",))
    pair = [long, short] if longer_first else [short, long]
    index = CertificateIndex([default, *pair])
    assert index.select("a.example.com") == ((long,), True)


def test_later_expiring_wildcard_wins(load: Load) -> None:
    short = load(("*.example.com",), days=60)
    long = load(("*.example.com",), days=300)
    index = CertificateIndex([short, long])
    assert index.select("x.example.com") == ((long,), True)


def test_default_is_first_plus_other_key_type_with_identical_names(load: Load) -> None:
    first = load(("a.example.com", "b.example.com"))
    rsa_other_names = load(("a.example.com",), "rsa")
    rsa_same_names = load(("b.example.com", "a.example.com"), "rsa")
    index = CertificateIndex([first, rsa_other_names, rsa_same_names])
    assert index.default == (first, rsa_same_names)
    assert index.select(None) == ((first, rsa_same_names), False)


def test_default_without_partner_is_first_alone(load: Load) -> None:
    first = load(("a.example.com",), "rsa")
    ecdsa_other = load(("a.example.com", "c.example.com"))
    index = CertificateIndex([first, ecdsa_other])
    assert index.default == (first,)


def test_names_lists_exact_and_wildcards(load: Load) -> None:
    index = CertificateIndex([load(("b.example.com", "*.example.com")),
                              load(("a.example.com",), "rsa")])
    assert index.names() == ["*.example.com", "a.example.com", "b.example.com"]


def test_empty_index_selects_nothing() -> None:
    index = CertificateIndex([])
    assert index.default == ()
    assert index.select("a.example.com") == ((), False)
    assert index.names() == []


# --- CertificateStore (contexts per selection) ---------------------------------------------


def _contexts(certificates: list[LoadedCertificate]) -> CertificateStore:
    return _store(certificates, lambda: server_context("intermediate"))


def _store(certificates: list[LoadedCertificate],
           new_context: Callable[[], ssl.SSLContext]) -> CertificateStore:
    files = [(f"{index}-{c.source}", (c,)) for index, c in enumerate(certificates)]
    return CertificateStore(new_context, files)


def test_context_for_is_cached(load: Load) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    contexts = _contexts([a, b])
    selection, _ = contexts.index.select("b.example.com")
    first = contexts.context_for(selection)
    assert contexts.context_for(selection) is first
    assert contexts.context_for(tuple(selection)) is first
    assert first is not contexts.base


def test_base_context_has_the_callback_and_no_certificate(load: Load) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    contexts = _contexts([a, b])
    assert contexts.base.sni_callback is not None
    # the default selection has a context of its own: the base one only holds ticket keys
    assert contexts.context_for(contexts.index.default) is not contexts.base


def test_new_context_called_once_per_selection(load: Load) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    made: list[ssl.SSLContext] = []

    def new_context() -> ssl.SSLContext:
        made.append(server_context("intermediate"))
        return made[-1]

    contexts = _store([a, b], new_context)
    assert made == [contexts.base]
    for _ in range(3):
        contexts.context_for((b,))
    assert len(made) == 2


# --- real handshakes ----------------------------------------------------------------------


@pytest.fixture
def site(load: Load) -> tuple[CertificateStore, dict[str, Issued]]:
    """Default a.example.com, plus b.example.com and *.w.example.com, all ECDSA."""
    issued_by_name = {name: issued((name,)) for name in
                      ("a.example.com", "b.example.com", "*.w.example.com")}
    contexts = _contexts([load(certificate) for certificate in issued_by_name.values()])
    return contexts, issued_by_name


@pytest.mark.parametrize(("server_name", "expected"), [
    ("a.example.com", "a.example.com"),
    ("b.example.com", "b.example.com"),
    ("x.w.example.com", "*.w.example.com"),
])
def test_handshake_serves_certificate_for_sni(
        site: tuple[CertificateStore, dict[str, Issued]], server_name: str, expected: str) -> None:
    contexts, by_name = site
    client, server = handshake(client_context(authority().pem()), contexts.base, server_name)
    assert served_leaf(client) == leaf_der(by_name[expected])
    assert getattr(server, SNI_ATTRIBUTE) == server_name
    assert getattr(server, SNI_MATCHED_ATTRIBUTE) is True


def test_handshake_without_sni_serves_default(
        site: tuple[CertificateStore, dict[str, Issued]]) -> None:
    contexts, by_name = site
    client, server = handshake(client_context(), contexts.base, None)
    assert served_leaf(client) == leaf_der(by_name["a.example.com"])
    assert getattr(server, SNI_ATTRIBUTE) is None
    assert getattr(server, SNI_MATCHED_ATTRIBUTE) is False


def test_handshake_unknown_sni_serves_default_unmatched(
        site: tuple[CertificateStore, dict[str, Issued]]) -> None:
    contexts, by_name = site
    client, server = handshake(client_context(), contexts.base, "unknown.example.net")
    assert served_leaf(client) == leaf_der(by_name["a.example.com"])
    assert getattr(server, SNI_ATTRIBUTE) == "unknown.example.net"
    assert getattr(server, SNI_MATCHED_ATTRIBUTE) is False


@pytest.fixture
def dual(load: Load) -> tuple[CertificateStore, Issued, Issued]:
    """ECDSA and RSA certificates for dual.example.com, behind a different default."""
    ecdsa, rsa = issued(("dual.example.com",)), issued(("dual.example.com",), "rsa")
    contexts = _contexts([load(("default.example.org",)), load(rsa), load(ecdsa)])
    return contexts, ecdsa, rsa


@pytest.mark.parametrize(("ciphers", "expected"), [
    ("ECDHE-RSA-AES128-GCM-SHA256", "RSA"),
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDSA"),
])
def test_tls12_client_gets_certificate_for_its_cipher(
        dual: tuple[CertificateStore, Issued, Issued], ciphers: str, expected: str) -> None:
    contexts, ecdsa, rsa = dual
    client_ctx = client_context(authority().pem(), maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    client, _ = handshake(client_ctx, contexts.base, "dual.example.com")
    assert client.version() == "TLSv1.2"
    assert cipher_name(client) == ciphers
    assert served_leaf(client) == leaf_der(rsa if expected == "RSA" else ecdsa)


@pytest.mark.parametrize("ciphers", ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"])
def test_dual_selection_context_holds_both_certificates(
        dual: tuple[CertificateStore, Issued, Issued], ciphers: str) -> None:
    contexts, ecdsa, rsa = dual
    selection, matched = contexts.index.select("dual.example.com")
    assert matched
    assert [certificate.key_type for certificate in selection] == ["ECDSA", "RSA"]
    # Straight to the selection's context, no SNI callback involved: one context, both keys.
    context = contexts.context_for(selection)
    assert context.sni_callback is None
    client_ctx = client_context(authority().pem(), maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    client, _ = handshake(client_ctx, context, "dual.example.com")
    assert served_leaf(client) == leaf_der(rsa if "-RSA-" in ciphers else ecdsa)


# --- CertificateStore.update (reload in place) ----------------------------------------------


def test_update_replaces_adds_and_removes_files(load: Load) -> None:
    a, b, a2, c = (load(("a.example.com",)), load(("b.example.com",)),
                   load(("a.example.com",), days=30), load(("c.example.com",)))
    store = CertificateStore(lambda: server_context("intermediate"),
                             [("a.pem", (a,)), ("b.pem", (b,))])
    base = store.base
    assert store.update(["a.pem", "c.pem"], {"a.pem": (a2,), "c.pem": (c,), "b.pem": None})
    assert store.certificates() == [a2, c]
    assert store.index.select("c.example.com") == ((c,), True)
    assert store.index.select("b.example.com") == ((a2,), False)  # gone: the default answers
    assert store.base is base, "the ticket keys must survive a reload"


def test_update_keeps_unchanged_files_and_their_contexts(load: Load) -> None:
    a, b = load(("a.example.com",)), load(("b.example.com",))
    b2 = load(("b.example.com",), days=30)  # a new certificate (issued() caches by name)
    store = CertificateStore(lambda: server_context("intermediate"),
                             [("a.pem", (a,)), ("b.pem", (b,))])
    kept = store.context_for((a,))
    dropped = store.context_for((b,))
    assert store.update(["a.pem", "b.pem"], {"b.pem": (b2,)})
    assert store.certificates() == [a, b2]
    assert store.context_for((a,)) is kept
    assert store.context_for((b2,)) is not dropped


def test_update_that_would_leave_nothing_is_refused(load: Load) -> None:
    a = load(("a.example.com",))
    store = CertificateStore(lambda: server_context("intermediate"), [("a.pem", (a,))])
    assert not store.update([], {"a.pem": None})
    assert store.certificates() == [a]
    assert store.index.select("a.example.com") == ((a,), True)


def test_empty_store_refuses_handshakes_until_a_certificate_arrives(load: Load) -> None:
    store = CertificateStore(lambda: server_context("intermediate"), [])
    with pytest.raises(ssl.SSLError, match=r"CALLBACK_FAILED|UNRECOGNIZED_NAME"):
        handshake(client_context(), store.base, "a.example.com")
    first = issued(("a.example.com",))
    assert store.update(["a.pem"], {"a.pem": (load(first),)})
    client, _ = handshake(client_context(authority().pem()), store.base, "a.example.com")
    assert served_leaf(client) == leaf_der(first)


def test_context_cache_drops_the_least_recently_used(load: Load,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import offload.tls.store as store_module

    monkeypatch.setattr(store_module, "MAX_CONTEXTS", 2)
    a, b, c = load(("a.example.com",)), load(("b.example.com",)), load(("c.example.com",))
    store = _contexts([a, b, c])
    context_a = store.context_for((a,))
    context_b = store.context_for((b,))
    assert store.context_for((a,)) is context_a  # a is now the most recently used
    store.context_for((c,))  # evicts b
    assert store.context_for((a,)) is context_a
    assert store.context_for((b,)) is not context_b
