"""The certificates one frontend serves, behind the SNI callback of its base TLS context.

The *base* context is the one every handshake starts with. It carries no certificate: it holds
the session-ticket keys and the SNI callback, which always switches the handshake to the context
of the certificates selected for the name. OpenSSL encrypts session tickets with the keys of the
base context (``session_ctx``) even after that switch, so a base context created before the
workers fork gives every worker the same ticket keys (a ticket from one worker resumes on any
other), and replacing certificates later never changes them.

Certificates are replaced as a whole: :meth:`CertificateStore.update` builds a new index and
swaps one reference, so a handshake sees the old set or the new one, never a mix. Contexts are
built on first use of a selection and kept while their certificates stay, up to
:data:`MAX_CONTEXTS` (least recently used dropped first).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping, Sequence

from offload.tls.certs import LoadedCertificate, load_into_context
from offload.tls.sni import (
    SNI_ATTRIBUTE,
    SNI_MATCHED_ATTRIBUTE,
    CertificateIndex,
    Selection,
)

_log = logging.getLogger("offload.tls")

MAX_CONTEXTS = 2048
"""Contexts kept per worker (about 20 KiB each); the least recently used goes first."""

FileCertificates = tuple[LoadedCertificate, ...]
"""The certificates one file (bundle, or chain with a key file) provides."""


class CertificateStore:
    """One frontend's certificates by source file, in serving order (the first is the default)."""

    def __init__(self, new_context: Callable[[], ssl.SSLContext],
                 files: Sequence[tuple[str, FileCertificates]]) -> None:
        self._new_context = new_context
        self._files = dict(files)
        self.index = CertificateIndex(self.certificates())
        self._cache: dict[tuple[str, ...], ssl.SSLContext] = {}
        self.base = new_context()
        self.base.sni_callback = self._on_server_name

    def certificates(self) -> list[LoadedCertificate]:
        """Every certificate, in serving order."""
        return [certificate for group in self._files.values() for certificate in group]

    def files(self) -> dict[str, FileCertificates]:
        return dict(self._files)

    def update(self, order: Sequence[str], changed: Mapping[str, FileCertificates | None]
               ) -> bool:
        """Apply a change: ``order`` lists the files now served, ``changed`` the new content of
        files added or replaced (None: removed). Returns False, and keeps serving the old set,
        if nothing would be left to serve."""
        files: dict[str, FileCertificates] = {}
        for path in order:
            group = changed[path] if path in changed else self._files.get(path)
            if group:
                files[path] = group
        certificates = [certificate for group in files.values() for certificate in group]
        if not certificates:
            return False
        index = CertificateIndex(certificates)
        self._files, self.index = files, index  # the swap
        present = {certificate.fingerprint for certificate in certificates}
        self._cache = {key: context for key, context in self._cache.items()
                       if present.issuperset(key)}
        return True

    def context_for(self, selection: Selection) -> ssl.SSLContext:
        """The context serving exactly ``selection``, built on first use."""
        key = tuple(certificate.fingerprint for certificate in selection)
        cache = self._cache
        context = cache.pop(key, None)
        if context is None:
            context = self._new_context()
            for certificate in selection:
                load_into_context(context, certificate)
            if len(cache) >= MAX_CONTEXTS:
                del cache[next(iter(cache))]  # dicts keep order: the first is the oldest used
        cache[key] = context  # (re)inserted last: the most recently used
        return context

    def _on_server_name(self, ssl_object: ssl.SSLObject | ssl.SSLSocket,
                        server_name: str | None, current: ssl.SSLContext) -> int | None:
        selection, matched = self.index.select(server_name)
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        setattr(ssl_object, SNI_MATCHED_ATTRIBUTE, matched)
        if not selection:  # no certificate yet (ACME has not issued the first one)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        try:
            ssl_object.context = self.context_for(selection)
        except (OSError, ssl.SSLError) as error:
            # The handshake fails for want of a certificate; everyone else goes on.
            _log.error("cannot build the TLS context for %s: %s", server_name, error)
        return None
