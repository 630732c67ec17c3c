"""Where a frontend's certificates come from, and what changed there since the last look.

A frontend's ``certificates`` entries expand to files: a bundle, a chain with its key file, or
every bundle of a directory. The supervisor loads them all at start (any broken file is a
configuration error then) and, when a watched file or directory changes or on SIGHUP, looks
again: only files whose inode, size or modification time changed are read again. At run time a
broken file is rejected (one log line naming it and why) and the certificate it held before
keeps serving; a file that disappeared stops being served.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offload.config.model import CertificateRef
from offload.errors import CertificateError, Issue
from offload.tls.certs import KeyPolicy, directory_entries, load_certificate
from offload.tls.store import FileCertificates

Signature = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]
"""(inode, size, mtime_ns) of the certificate file and of the key file, following symlinks."""


def _stat(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class SourceFile:
    """One file providing certificates (and the key file beside it, if separate)."""

    cert: str
    key: str | None
    where: str
    """The configuration key it comes from: ``frontends[0].certificates[1]``."""
    policy: KeyPolicy = field(repr=False)

    def signature(self) -> Signature:
        return _stat(self.cert), _stat(self.key)

    def load(self, now: dt.datetime) -> FileCertificates:
        return (load_certificate(self.cert, self.key, now, self.policy),)


@dataclass
class Refresh:
    """What a look at the files found."""

    order: list[str]
    changed: dict[str, FileCertificates | None]
    rejected: list[tuple[str, str]]
    """(file, reason) of files that could not be used; their previous content stays."""
    warnings: list[str]


class FrontendSources:
    """The certificate files of one frontend, and their signatures when last read."""

    def __init__(self, refs: Sequence[CertificateRef], base_dir: Path, where: str, *,
                 allow_readable: bool, acme_dir: Path | None = None) -> None:
        self._refs = tuple(refs)
        self._acme_dir = acme_dir
        """Where the ACME process puts issued certificates; may be missing or empty."""
        self._base_dir = base_dir
        self._where = where
        self._allow_readable = allow_readable
        self._signatures: dict[str, Signature] = {}
        self._rejected: dict[str, Signature] = {}
        """Broken files as they were when rejected: not read (nor reported) again until
        they change."""

    def watch_paths(self) -> list[str]:
        """The files and directories to watch for changes."""
        paths: list[str] = []
        for ref in self._refs:
            paths.append(str(self._base_dir / ref.cert))
            if ref.key is not None:
                paths.append(str(self._base_dir / ref.key))
        if self._acme_dir is not None:
            paths.append(str(self._acme_dir))
        return paths

    def _passphrase(self, ref: CertificateRef, where: str) -> bytes | None:
        if ref.passphrase_file is not None and ref.passphrase_env is not None:
            raise CertificateError(where, "both passphrase_file and passphrase_env are set",
                                   "keep one of them")
        if ref.passphrase_file is not None:
            path = self._base_dir / ref.passphrase_file
            try:
                return path.read_bytes().rstrip(b"\r\n")
            except OSError as error:
                raise CertificateError(str(path), "cannot read the passphrase file: "
                                       f"{error.strerror}", "check the path and its permissions"
                                       ) from None
        if ref.passphrase_env is not None:
            value = os.environ.get(ref.passphrase_env)
            if value is None:
                raise CertificateError(where, f"environment variable {ref.passphrase_env} is "
                                       "not set", "set it in the environment offload starts with")
            return value.encode()
        return None

    def expand(self) -> tuple[list[SourceFile], list[Issue]]:
        """Every file the entries name now, in serving order."""
        files: list[SourceFile] = []
        issues: list[Issue] = []
        for index, ref in enumerate(self._refs):
            where = f"{self._where}.certificates[{index}]"
            cert = str(self._base_dir / ref.cert)
            key = str(self._base_dir / ref.key) if ref.key is not None else None
            try:
                policy = KeyPolicy(allow_readable=self._allow_readable,
                                   passphrase=self._passphrase(ref, where))
                if os.path.isdir(cert):
                    if key is not None:
                        raise CertificateError(cert, "a key file cannot be given for a directory",
                                               "put each key in its bundle or beside it as "
                                               "NAME.key")
                    try:
                        entries = directory_entries(cert)
                    except OSError as error:
                        raise CertificateError(cert, "cannot list the directory: "
                                               f"{error.strerror}") from None
                    if not entries:
                        raise CertificateError(cert, "the directory holds no certificate files",
                                               "add bundles named *.pem, *.crt or *.cer")
                    files.extend(SourceFile(path, key_file, where, policy)
                                 for path, key_file in entries)
                else:
                    files.append(SourceFile(cert, key, where, policy))
            except CertificateError as error:
                issues.append(Issue(where, str(error), error.fix))
        if self._acme_dir is not None:
            policy = KeyPolicy(allow_readable=self._allow_readable)
            try:
                entries = directory_entries(str(self._acme_dir))
            except FileNotFoundError:
                entries = []  # nothing issued yet
            except OSError as error:
                issues.append(Issue("acme.storage", f"cannot list {self._acme_dir}: "
                                    f"{error.strerror}", "check the directory's permissions"))
                entries = []
            files.extend(SourceFile(path, key_file, "acme.storage", policy)
                         for path, key_file in entries)
        return files, issues

    def load(self, now: dt.datetime) -> tuple[list[tuple[str, FileCertificates]], list[Issue],
                                              list[str]]:
        """Load everything (at start): every problem is an issue."""
        files, issues = self.expand()
        loaded: list[tuple[str, FileCertificates]] = []
        warnings: list[str] = []
        for source in files:
            signature = source.signature()
            try:
                group = source.load(now)
            except CertificateError as error:
                issues.append(Issue(source.where, str(error), error.fix))
                continue
            self._signatures[source.cert] = signature
            loaded.append((source.cert, group))
            warnings.extend(f"{c.source}: {text}" for c in group for text in c.warnings)
        return loaded, issues, warnings

    def refresh(self, now: dt.datetime, current: Mapping[str, FileCertificates]) -> Refresh:
        """Look again: read what changed, keep what did not, and what is broken."""
        files, issues = self.expand()
        result = Refresh([], {}, [(issue.where, issue.what) for issue in issues], [])
        if issues:  # an entry cannot be expanded at all: keep serving what it gave
            result.order = list(current)
            return result
        for source in files:
            path = source.cert
            signature = source.signature()
            unchanged = (self._signatures.get(path) == signature
                         or self._rejected.get(path) == signature)
            if unchanged and (path in current or path in self._rejected):
                if path in current:
                    result.order.append(path)
                continue
            try:
                group = source.load(now)
            except CertificateError as error:
                result.rejected.append((str(error.path), error.reason))
                self._rejected[path] = signature
                if path in current:
                    result.order.append(path)  # the previous certificate keeps serving
                continue
            self._rejected.pop(path, None)
            self._signatures[path] = signature
            result.order.append(path)
            result.changed[path] = group
            result.warnings.extend(f"{c.source}: {text}" for c in group for text in c.warnings)
        for path in current:
            if path not in result.order:
                result.changed[path] = None
                self._signatures.pop(path, None)
        return result
