"""Choose the certificate(s) for a TLS ClientHello by SNI: exact name, then wildcard, then default.

Selection is pure (:meth:`CertificateIndex.select`); :mod:`offload.tls.store` turns a selection
into an SSL context. Each key type is resolved on its own, so an ECDSA and an RSA certificate for
the same names end up in one context and OpenSSL serves each to the clients that support it.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.tls.certs import LoadedCertificate

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
    """Certificates indexed by name and key type; the first certificate is the default.

    An empty index (a frontend waiting for its first ACME certificate) selects nothing."""

    def __init__(self, certificates: Sequence[LoadedCertificate]) -> None:
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
        self.default: Selection = ()
        if not self.certificates:
            return
        first = self.certificates[0]
        default = {first.key_type: first}
        for certificate in self.certificates[1:]:
            if (set(certificate.names) == set(first.names)
                    and _better(certificate, default.get(certificate.key_type))):
                default[certificate.key_type] = certificate
        self.default = self._ordered(default)

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
