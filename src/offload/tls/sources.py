"""Where a frontend's certificates come from, and what changed there since the last look.

A frontend's ``certificates`` entries expand to files: a bundle, a chain with its key file, or
every bundle of a directory. The supervisor loads them all at start (any broken file is a
configuration error then) and, when a watched file or directory changes or on SIGHUP, looks
again: only files whose inode, size or modification time changed are read again. At run time a
broken file is rejected (one log line naming it and why) and the certificate it held before
keeps serving; a file that disappeared stops being served.

A certificate and its key in two files are usually replaced in two steps. A changed pair is
judged only once it has *settled*: both files unmodified for ``settle`` seconds (by their
modification times, or, when those cannot be trusted, by two looks that long apart). Until
then the previous certificate keeps serving and the caller is asked to look again. A pair that
still does not match is rejected under the name of the file that changed, not the one the
check happened to read last.
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
    unsettled: set[str] = field(default_factory=set)
    """Files changed too recently to judge: look again in ``settle`` seconds."""


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
        self._seen: dict[str, tuple[Signature, float]] = {}
        """Changed files not yet settled: their signature and when it was first seen."""

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

    def _settled(self, path: str, signature: Signature, now: dt.datetime, clock: float,
                 settle: float) -> bool:
        """Whether a changed file (with its key file) has been still for ``settle`` seconds."""
        if settle <= 0:
            return True
        newest = max((part[2] for part in signature if part is not None), default=0) / 1e9
        age = now.timestamp() - newest
        if age >= settle:
            return True
        first = self._seen.get(path)
        if first is None or first[0] != signature:  # also: a modification time in the future
            self._seen[path] = (signature, clock)
            return False
        return clock - first[1] >= settle

    def _blame(self, source: SourceFile, signature: Signature,
               error: CertificateError) -> tuple[str, str]:
        """(file, reason) of a rejection: a pair that fails after one of its files changed is
        the changed file's fault, whichever file the check read last."""
        before = self._signatures.get(source.cert)
        if source.key is None or before is None:
            return error.path, error.reason
        changed = [name for name, old, new in ((source.cert, before[0], signature[0]),
                                               (source.key, before[1], signature[1]))
                   if old != new]
        if len(changed) != 1 or changed[0] == error.path:
            return error.path, error.reason
        other = source.key if changed[0] == source.cert else source.cert
        return changed[0], (f"{error.reason}: {changed[0]} changed and {other} did not; "
                            "replace both files of the pair")

    def refresh(self, now: dt.datetime, current: Mapping[str, FileCertificates], *,
                settle: float = 0.0, clock: float = 0.0) -> Refresh:
        """Look again: read what changed and has settled, keep what did not, and what is
        broken. ``clock`` is a monotonic time, for files whose modification times are odd."""
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
            if not self._settled(path, signature, now, clock, settle):
                result.unsettled.add(path)
                if path in current:
                    result.order.append(path)  # the previous certificate serves meanwhile
                continue
            self._seen.pop(path, None)
            try:
                group = source.load(now)
            except CertificateError as error:
                result.rejected.append(self._blame(source, signature, error))
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
        listed = {source.cert for source in files}
        self._seen = {path: seen for path, seen in self._seen.items() if path in listed}
        return result
