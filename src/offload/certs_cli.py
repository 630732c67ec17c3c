"""``offload certs list`` and ``offload certs check``: inspect the certificates offload serves.

Unlike ``run``, inspecting never refuses a certificate: an expired, not-yet-valid or broken
one is shown with its status, so that it can be found and fixed. Whether ``run`` would accept a
file is decided by :func:`offload.tls.certs.load_certificate` itself; when it refuses one, the
file is loaded again at a moment inside the certificate's validity period to tell "only its
dates are wrong" from "broken". Key files are checked, never shown: no key bytes and no
passphrase are read into the output (encrypted keys are not opened at all).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from offload.acme.storage import AcmeStorage
from offload.config.loader import load_file
from offload.errors import CertificateError
from offload.tls.certs import KeyPolicy, directory_entries, load_certificate, readable_by
from offload.tls.expiry import WARN_DAYS, days_text, days_until

DEFAULT_CHECK_DAYS = 30
SOON_DAYS = WARN_DAYS[0]
"""Below this many days left, ``list`` says "expires soon" (offload warns about it at start)."""
_MAX_NAMES = 3
_MAX_ISSUER = 40
_KEY_MARKER = b"PRIVATE KEY-----"
_ENCRYPTED_MARKERS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")
_COLUMNS = ("NAMES", "KEY", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATUS", "SOURCE", "FRONTEND")


@dataclass(frozen=True)
class Source:
    """A certificate entry to inspect: a file (with optional key file) or a directory."""

    cert: str
    key: str | None = None
    frontends: tuple[str, ...] = ()
    allow_readable: bool = False
    """``global.allow_readable_keys``: a key file others can read is accepted."""
    passphrase: bool = False
    """The entry names a passphrase for encrypted keys (which inspection does not read)."""


@dataclass(frozen=True)
class Row:
    """What inspection found about one certificate file."""

    source: str
    frontends: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    key: str | None = None
    issuer: str | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    days_left: int | None = None
    fingerprint: str | None = None
    status: str = "ok"
    problems: tuple[str, ...] = ()
    """Why ``run`` would refuse this certificate; empty when it would serve it."""
    valid_now: bool = False
    """Its validity period includes the time of inspection."""

    def as_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names), "key": self.key, "issuer": self.issuer,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": self.days_left, "status": self.status, "source": self.source,
            "frontends": list(self.frontends), "fingerprint_sha256": self.fingerprint,
        }

    def cells(self) -> tuple[str, ...]:
        names = ", ".join(self.names[:_MAX_NAMES])
        if len(self.names) > _MAX_NAMES:
            names += f" (+{len(self.names) - _MAX_NAMES} more)"
        return (names or "-", self.key or "-", self.issuer or "-",
                f"{self.not_after:%Y-%m-%d}" if self.not_after else "-",
                "-" if self.days_left is None else str(self.days_left), self.status,
                self.source, ", ".join(self.frontends) or "-")


# --- which certificates ------------------------------------------------------------------


def sources_from_config(path: str) -> list[Source]:
    """Every certificate entry of every frontend, relative paths taken from the file's directory.

    Raises ConfigError when the file cannot be loaded.
    """
    config = load_file(path)
    base_dir = Path(path).resolve().parent
    sources = []
    for frontend in config.frontends:
        for ref in frontend.certificates:
            sources.append(Source(
                str(base_dir / ref.cert), str(base_dir / ref.key) if ref.key else None,
                (frontend.name,), config.global_.allow_readable_keys,
                ref.passphrase_file is not None or ref.passphrase_env is not None))
    acme = config.acme
    if acme is not None:  # what ACME has issued so far (nothing to show before the first)
        issued = AcmeStorage(base_dir / acme.storage).certificates
        served = tuple(f.name for f in config.frontends if acme.serves(f.name))
        with contextlib.suppress(OSError):
            if directory_entries(str(issued)):
                sources.append(Source(str(issued), None, served,
                                      config.global_.allow_readable_keys, False))
    return sources


def sources_from_flags(certs: Sequence[str], keys: Sequence[str]) -> list[Source]:
    """``--cert`` flags, each with the ``--key`` of the same position (as in quick mode)."""
    return [Source(cert, keys[index] if index < len(keys) else None)
            for index, cert in enumerate(certs)]


def usage_problem(config: str | None, certs: Sequence[str], keys: Sequence[str],
                  days: int | None = None) -> str | None:
    """What is wrong with the command line, if anything (the CLI exits with status 2)."""
    if config and (certs or keys):
        return "give either -c FILE or --cert FILE, not both"
    if not config and not certs:
        return "give a configuration file with -c FILE, or certificates with --cert FILE"
    if len(keys) > len(certs):
        return ("more --key than --cert flags: --key flags pair with --cert flags in order "
                "(the first --key belongs to the first --cert)")
    if days is not None and days < 0:
        return "--days must be 0 or more"
    return None


# --- inspection --------------------------------------------------------------------------


def _key_label(certificate: x509.Certificate) -> str:
    public = certificate.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ECDSA {public.curve.key_size}"
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}"
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public).__name__


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    """DNS names of the subjectAltName, else the common name (what SNI selection uses)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(name) for name in san.value.get_values_for_type(x509.DNSName)]
    except (x509.ExtensionNotFound, ValueError):
        names = []
    if not names:
        names = [str(attr.value) for attr in
                 certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(name.strip().rstrip(".").lower() for name in names if name.strip()))


def _issuer(certificate: x509.Certificate) -> str:
    common = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = str(common[0].value) if common else certificate.issuer.rfc4514_string()
    return text if len(text) <= _MAX_ISSUER else text[: _MAX_ISSUER - 3] + "..."


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _describe(row: Row, leaf: x509.Certificate, now: dt.datetime) -> Row:
    return replace(row, names=_names(leaf), key=_key_label(leaf), issuer=_issuer(leaf),
                   not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                   days_left=days_until(leaf.not_valid_after_utc, now),
                   fingerprint=_fingerprint(leaf))


def _read(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return "file not found"
    except PermissionError:
        return "file not readable by this user"
    except IsADirectoryError:
        return "expected a file, found a directory"
    except OSError as error:
        return f"cannot read the file: {error.strerror}"


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0


def _status(row: Row, now: dt.datetime, key_notes: Sequence[tuple[str, bool]] = (),
            broken: str | None = None, *, dates_checked: bool = False) -> Row:
    """Fill in ``status``, ``problems`` and ``valid_now`` from what was found.

    ``key_notes`` are (note, whether run would refuse the key for it); ``dates_checked`` says
    the dates of the certificate described count: it is the leaf the key belongs to (or, when
    an encrypted key cannot be matched, the file's first non-CA certificate).
    """
    parts: list[str] = []
    problems: list[str] = []
    valid_now = False
    if broken is not None:
        parts.append(f"broken: {broken}")
        problems.append(f"broken: {broken}")
    elif dates_checked and row.not_after is not None and row.not_before is not None:
        if row.not_after <= now:
            parts.append("expired")
            problems.append(f"expired on {row.not_after:%Y-%m-%d}")
        elif row.not_before > now:
            parts.append("not yet valid")
            problems.append(f"not valid before {row.not_before:%Y-%m-%d}")
        else:
            valid_now = True
            if row.days_left is not None and row.days_left < SOON_DAYS:
                parts.append("expires soon")
    for note, is_problem in key_notes:
        parts.append(note)
        if is_problem:
            problems.append(note)
    return replace(row, status="; ".join(parts) or "ok", problems=tuple(problems),
                   valid_now=valid_now)


def inspect_file(cert: str, key: str | None, now: dt.datetime, *, frontends: tuple[str, ...] = (),
                 allow_readable: bool = False, passphrase: bool = False) -> Row:
    """Describe one certificate file (and its key file), whatever state it is in."""
    row = Row(source=cert if key is None else f"{cert} + {key}", frontends=frontends)
    data = _read(cert)
    if isinstance(data, str):
        return _status(row, now, broken=f"certificate {data}")
    try:
        certificates = x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE" in data \
            else []
    except ValueError:
        return _status(row, now, broken="not a valid PEM file")
    if not certificates:
        return _status(row, now, broken="no certificate found in the file")
    guess = next((c for c in certificates if not _is_ca(c)), certificates[0])
    key_path = key or cert
    key_data = data if key is None else _read(key)
    if isinstance(key_data, str):
        return _status(_describe(row, guess, now), now, broken=f"key {key_data}")
    key_notes: list[tuple[str, bool]] = []
    mode = _mode(key_path)
    if _KEY_MARKER in key_data and readable_by(mode):
        note = f"key readable by others (mode {mode:04o}{', allowed' if allow_readable else ''})"
        key_notes.append((note, not allow_readable))
    if any(marker in key_data for marker in _ENCRYPTED_MARKERS):
        key_notes.append(("key encrypted (not checked)" if passphrase
                          else "key encrypted and no passphrase configured", not passphrase))
        return _status(_describe(row, guess, now), now, key_notes, dates_checked=True)
    leaf, refusal = _accepted_leaf(cert, key, certificates, now)
    if leaf is None:
        return _status(_describe(row, guess, now), now, key_notes, refusal)
    return _status(_describe(row, leaf, now), now, key_notes, dates_checked=True)


def _accepted_leaf(cert: str, key: str | None, certificates: Iterable[x509.Certificate],
                   now: dt.datetime) -> tuple[x509.Certificate | None, str]:
    """The leaf ``load_certificate`` accepts, at ``now`` or, failing that, at a moment when
    that leaf is valid (so only its dates are wrong); else None and why it is refused."""
    policy = KeyPolicy(allow_readable=True)  # file modes are reported by the caller
    try:
        fingerprint = load_certificate(cert, key, now, policy).fingerprint
    except CertificateError as error:
        refusal = error.reason
        for candidate in certificates:
            before, after = candidate.not_valid_before_utc, candidate.not_valid_after_utc
            try:
                fingerprint = load_certificate(cert, key, before + (after - before) / 2,
                                               policy).fingerprint
            except CertificateError:
                continue
            if fingerprint == _fingerprint(candidate):
                return candidate, ""
        return None, refusal
    leaf = next(c for c in certificates if _fingerprint(c) == fingerprint)
    return leaf, ""


def _files(source: Source) -> list[tuple[str, str | None]] | str:
    """The (certificate, key) files of a source, or why there are none."""
    if not os.path.isdir(source.cert):
        return [(source.cert, source.key)]
    if source.key is not None:
        return "a key file cannot be given for a directory"
    try:
        entries = directory_entries(source.cert)
    except OSError as error:
        return f"cannot list the directory: {error.strerror}"
    return entries or "the directory holds no certificate files"


def inspect(sources: Iterable[Source], now: dt.datetime) -> list[Row]:
    """One row per certificate file, in the order given; a file named by several frontends
    (or several times) is one row listing all of them."""
    merged: dict[tuple[str, str | None], Source] = {}
    order: list[tuple[str, str | None] | Row] = []
    for source in sources:
        files = _files(source)
        if isinstance(files, str):
            order.append(_status(Row(source.cert, source.frontends), now, broken=files))
            continue
        for cert, key in files:
            ident = (os.path.normpath(cert), os.path.normpath(key) if key else None)
            if ident in merged:
                known = merged[ident]
                frontends = known.frontends + tuple(
                    name for name in source.frontends if name not in known.frontends)
                merged[ident] = replace(known, frontends=frontends,
                                        passphrase=known.passphrase or source.passphrase)
                continue
            merged[ident] = replace(source, cert=cert, key=key)
            order.append(ident)
    rows = []
    for item in order:
        if isinstance(item, Row):
            rows.append(item)
            continue
        entry = merged[item]
        rows.append(inspect_file(entry.cert, entry.key, now, frontends=entry.frontends,
                                 allow_readable=entry.allow_readable, passphrase=entry.passphrase))
    return rows


# --- output ------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """An aligned text table, one line per row (the days column aligned right)."""
    cells = [_COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(_COLUMNS))]
    right = _COLUMNS.index("DAYS LEFT")
    lines = []
    for line in cells:
        parts = [cell.rjust(width) if column == right else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(line, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def check_line(row: Row, days: int) -> str | None:
    """The line ``certs check --days`` prints about a row, or None when it is fine."""
    reasons = list(row.problems)
    if row.valid_now and row.days_left is not None and row.not_after is not None \
            and row.days_left < days:
        reasons.insert(0, f"expires in {days_text(row.days_left)} ({row.not_after:%Y-%m-%d})")
    if not reasons:
        return None
    names = f"{', '.join(row.names)}: " if row.names else ""
    return f"{row.source}: {names}{'; '.join(reasons)}"


def list_command(sources: Sequence[Source], now: dt.datetime, out: TextIO, *,
                 as_json: bool = False) -> int:
    """``offload certs list``: always exit status 0 (the status column tells what is wrong)."""
    rows = inspect(sources, now)
    if as_json:
        out.write(json.dumps([row.as_json() for row in rows], indent=2) + "\n")
    else:
        out.write(table(rows) + "\n")
    return 0


def check_command(sources: Sequence[Source], now: dt.datetime, out: TextIO, *,
                  days: int = DEFAULT_CHECK_DAYS) -> int:
    """``offload certs check``: exit status 1 if any certificate needs attention within
    ``days`` days (or is expired, not yet valid, or would be refused by ``run``), else 0."""
    rows = inspect(sources, now)
    lines = [line for line in (check_line(row, days) for row in rows) if line is not None]
    if lines:
        out.write("\n".join(lines) + "\n")
        return 1
    count = len(rows)
    subject = f"all {count} certificates are" if count != 1 else "the certificate is"
    out.write(f"{subject} valid for at least {days} more day{'s' if days != 1 else ''}\n")
    return 0
