"""Choose the certificate(s) for a TLS ClientHello by SNI: exact name, then wildcard, then default.

Selection is pure (:meth:`CertificateIndex.select`); :class:`SniContexts` turns a selection into
an SSL context, built on first use and cached. Each key type is resolved on its own, so an
ECDSA and an RSA certificate for the same names end up in one context and OpenSSL serves each
to the clients that support it.

The *base* context is the one the listener starts every handshake with. OpenSSL encrypts session
tickets with the keys of that context (``session_ctx``), even after the SNI callback switched
to another one, so a base context created before the workers fork gives every worker the same
ticket keys: a ticket issued by one worker resumes on any other.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence

from offload.tls.certs import LoadedCertificate, load_into_context

_log = logging.getLogger("offload.tls")

SNI_ATTRIBUTE = "offload_sni"
"""Set on the SSL object by the SNI callback: the server name the client asked for, or None."""
SNI_MATCHED_ATTRIBUTE = "offload_sni_matched"
"""Set on the SSL object by the SNI callback: whether a certificate matched the name."""

Selection = tuple[LoadedCertificate, ...]


def normalise_name(name: str) -> str:
    """Lower-case, without a trailing dot: how names are compared."""
    return name.strip().rstrip(".").lower()


def _better(candidate: LoadedCertificate, current: LoadedCertificate | None) -> bool:
    """Between two certificates of one key type for one name, serve the one that lasts longer."""
    return current is None or candidate.not_after > current.not_after


class CertificateIndex:
    """Certificates indexed by name and key type; the first certificate is the default."""

    def __init__(self, certificates: Sequence[LoadedCertificate]) -> None:
        if not certificates:
            raise ValueError("at least one certificate is needed")
        self.certificates = tuple(certificates)
        self._exact: dict[str, dict[str, LoadedCertificate]] = {}
        self._wildcard: dict[str, dict[str, LoadedCertificate]] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                table, key = (self._wildcard, name[2:]) if name.startswith("*.") else (
                    self._exact, name)
                slot = table.setdefault(key, {})
                if _better(certificate, slot.get(certificate.key_type)):
                    slot[certificate.key_type] = certificate
        first = self.certificates[0]
        default = {first.key_type: first}
        for certificate in self.certificates[1:]:
            if (set(certificate.names) == set(first.names)
                    and _better(certificate, default.get(certificate.key_type))):
                default[certificate.key_type] = certificate
        self.default: Selection = self._ordered(default)

    @staticmethod
    def _ordered(by_type: dict[str, LoadedCertificate]) -> Selection:
        return tuple(by_type[key_type] for key_type in sorted(by_type))

    def select(self, server_name: str | None) -> tuple[Selection, bool]:
        """The certificates for ``server_name`` and whether the name matched one (vs default)."""
        if not server_name:
            return self.default, False
        name = normalise_name(server_name)
        chosen: dict[str, LoadedCertificate] = dict(self._exact.get(name, {}))
        _, dot, parent = name.partition(".")
        if dot and parent:
            for key_type, certificate in self._wildcard.get(parent, {}).items():
                chosen.setdefault(key_type, certificate)
        if not chosen:
            return self.default, False
        return self._ordered(chosen), True

    def names(self) -> list[str]:
        """Every name served, wildcards included, sorted."""
        return sorted({*self._exact, *(f"*.{parent}" for parent in self._wildcard)})


class SniContexts:
    """SSL contexts per certificate selection, with the SNI callback on the base context."""

    def __init__(self, index: CertificateIndex,
                 new_context: Callable[[], ssl.SSLContext]) -> None:
        self.index = index
        self._new_context = new_context
        self._cache: dict[tuple[str, ...], ssl.SSLContext] = {}
        self.base = self.context_for(index.default)
        self.base.sni_callback = self._on_server_name

    def context_for(self, selection: Selection) -> ssl.SSLContext:
        """The context serving exactly ``selection``, built on first use."""
        key = tuple(certificate.fingerprint for certificate in selection)
        context = self._cache.get(key)
        if context is None:
            context = self._new_context()
            for certificate in selection:
                load_into_context(context, certificate)
            self._cache[key] = context
        return context

    def _on_server_name(self, ssl_object: ssl.SSLObject | ssl.SSLSocket,
                        server_name: str | None, current: ssl.SSLContext) -> None:
        selection, matched = self.index.select(server_name)
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        setattr(ssl_object, SNI_MATCHED_ATTRIBUTE, matched)
        try:
            context = self.context_for(selection)
        except (OSError, ssl.SSLError) as error:
            # Keep the handshake going with the default certificate rather than failing it.
            _log.error("cannot build the TLS context for %s: %s", server_name, error)
            return
        if context is not current:
            ssl_object.context = context
