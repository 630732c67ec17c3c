"""A frontend's certificate files looked at again: pairs judged once settled, a rejection named
after the file that changed (offload.tls.sources)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from tls_helpers import authority

from offload.config.model import CertificateRef
from offload.demo.pki import Issued, key_pem, write_private
from offload.tls.sources import FrontendSources
from offload.tls.store import FileCertificates

SETTLE = 0.2


def _write_pair(directory: Path, issued: Issued, *, cert: bool = True, key: bool = True,
                mtime: float | None = None) -> tuple[Path, Path]:
    crt, pem = directory / "site.crt", directory / "site.key"
    if cert:
        crt.write_bytes(issued.cert_chain())
        if mtime is not None:
            os.utime(crt, (mtime, mtime))
    if key:
        write_private(pem, key_pem(issued.key))
        if mtime is not None:
            os.utime(pem, (mtime, mtime))
    return crt, pem


def _start(tmp_path: Path) -> tuple[FrontendSources, dict[str, FileCertificates], dt.datetime]:
    """A frontend serving site.crt + site.key (written an hour ago)."""
    now = dt.datetime.now(dt.UTC)
    _write_pair(tmp_path, authority().issue(["localhost"]), mtime=now.timestamp() - 3600)
    sources = FrontendSources([CertificateRef(cert="site.crt", key="site.key")], tmp_path,
                              "frontends[0]", allow_readable=False)
    loaded, issues, _ = sources.load(now)
    assert not issues
    return sources, dict(loaded), now


def _fingerprint(group: FileCertificates | None) -> str:
    assert group is not None
    return group[0].fingerprint


def _sha256(issued: Issued) -> str:
    return issued.certificate.fingerprint(hashes.SHA256()).hex()


def test_a_pair_replaced_in_two_steps_is_judged_once_both_are_still(tmp_path: Path) -> None:
    sources, current, now = _start(tmp_path)
    fresh = authority().issue(["localhost"])
    crt, _ = _write_pair(tmp_path, fresh, key=False, mtime=now.timestamp())
    # 50 ms after the certificate was replaced, its key not yet: nothing is judged.
    early = sources.refresh(now + dt.timedelta(seconds=0.05), current, settle=SETTLE, clock=100.05)
    assert early.rejected == [] and early.changed == {}
    assert early.unsettled == {str(crt)}
    assert early.order == [str(crt)], "the previous certificate keeps serving meanwhile"
    # The key follows 100 ms later; 200 ms after that the pair is still, and it matches.
    _write_pair(tmp_path, fresh, cert=False, mtime=now.timestamp() + 0.1)
    later = sources.refresh(now + dt.timedelta(seconds=0.31), current, settle=SETTLE, clock=100.31)
    assert later.rejected == [] and later.unsettled == set()
    assert _fingerprint(later.changed[str(crt)]) == _sha256(fresh)


def test_a_half_replaced_pair_is_rejected_under_the_file_that_changed(tmp_path: Path) -> None:
    """Only site.crt changed: the mismatch is site.crt's, although the check reads the key."""
    sources, current, now = _start(tmp_path)
    crt, key = _write_pair(tmp_path, authority().issue(["localhost"]), key=False,
                           mtime=now.timestamp())
    result = sources.refresh(now + dt.timedelta(seconds=1), current, settle=SETTLE, clock=101.0)
    [(file, reason)] = result.rejected
    assert file == str(crt)
    assert reason == (f"the private key does not match the certificate: {crt} changed and {key} "
                      "did not; replace both files of the pair")
    assert result.order == [str(crt)] and result.changed == {}


def test_only_the_key_replaced_is_rejected_under_the_key(tmp_path: Path) -> None:
    sources, current, now = _start(tmp_path)
    _, key = _write_pair(tmp_path, authority().issue(["localhost"]), cert=False,
                         mtime=now.timestamp())
    [(file, reason)] = sources.refresh(now + dt.timedelta(seconds=1), current, settle=SETTLE,
                                       clock=101.0).rejected
    assert (file, reason) == (str(key), "the private key does not match the certificate")


def test_a_modification_time_in_the_future_settles_by_looking_twice(tmp_path: Path) -> None:
    """Clock skew (a copy from another machine) must not hold a certificate back forever."""
    sources, current, now = _start(tmp_path)
    fresh = authority().issue(["localhost"])
    crt, _ = _write_pair(tmp_path, fresh, mtime=now.timestamp() + 3600)
    first = sources.refresh(now, current, settle=SETTLE, clock=50.0)
    assert first.unsettled == {str(crt)}
    second = sources.refresh(now, current, settle=SETTLE, clock=50.0 + SETTLE)
    assert _fingerprint(second.changed[str(crt)]) == _sha256(fresh)


def test_without_settling_a_change_is_judged_at_once(tmp_path: Path) -> None:
    sources, current, now = _start(tmp_path)
    fresh = authority().issue(["localhost"])
    crt, _ = _write_pair(tmp_path, fresh, mtime=now.timestamp())
    result = sources.refresh(now, current)
    assert _fingerprint(result.changed[str(crt)]) == _sha256(fresh)
