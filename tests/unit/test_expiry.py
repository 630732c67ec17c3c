"""Tests for offload.tls.expiry: which notices the expiry monitor gives, and when.

The certificates are real (issued by a test CA with a chosen ``not_after``); time is injected:
every check passes ``now`` explicitly, counted back from the certificate's expiry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.demo.pki import Authority, write_private
from offload.tls.certs import LoadedCertificate, load_certificate
from offload.tls.expiry import WARN_DAYS, ExpiryMonitor, Notice, days_left

T0 = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
"""When the test certificates are issued (and loaded)."""

Make = Callable[..., LoadedCertificate]


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority("offload expiry test CA")


@pytest.fixture
def make(authority: Authority, tmp_path: Path) -> Make:
    """Issue a certificate valid from T0 for ``days`` days, write it and load it."""
    count = 0

    def issue(name: str = "www.example.test", days: float = 90) -> LoadedCertificate:
        nonlocal count
        count += 1
        issued = authority.issue([name], not_before=T0 - dt.timedelta(hours=1),
                                 not_after=T0 + dt.timedelta(days=days))
        path = tmp_path / f"cert{count}.pem"
        write_private(path, issued.bundle())
        return load_certificate(str(path), now=T0)

    return issue


def before_expiry(certificate: LoadedCertificate, days: float) -> dt.datetime:
    """The moment ``days`` days before ``certificate`` expires (negative: after)."""
    return certificate.not_after - dt.timedelta(days=days)


def summary(notices: list[Notice]) -> list[tuple[str, int]]:
    return [(notice.level, notice.days_left) for notice in notices]


def test_days_left_counts_whole_days_rounded_down(make: Make) -> None:
    certificate = make(days=10)
    assert days_left(certificate, T0) == 10
    assert days_left(certificate, before_expiry(certificate, 6.9)) == 6
    assert days_left(certificate, before_expiry(certificate, 0.5)) == 0
    assert days_left(certificate, before_expiry(certificate, -0.5)) == -1
    assert days_left(certificate, T0) == certificate.days_left(T0)


def test_nothing_while_more_than_30_days_are_left(make: Make) -> None:
    certificate = make(days=90)
    monitor = ExpiryMonitor()
    for days in (90, 60, 31, 30.01):
        assert monitor.check([certificate], before_expiry(certificate, days)) == []


def test_a_warning_when_each_threshold_is_crossed_and_only_then(make: Make) -> None:
    certificate = make(days=90)
    monitor = ExpiryMonitor()
    seen = []
    for days in (31, 29.9, 29, 20, 14.5, 13.9, 10, 7.2, 6.9, 6, 2, 1.5, 0.9, 0.1):
        seen.extend(summary(monitor.check([certificate], before_expiry(certificate, days))))
    assert seen == [("warning", 29), ("warning", 13), ("warning", 6), ("warning", 0)]
    assert WARN_DAYS == (30, 14, 7, 1)


def test_the_warning_message(make: Make) -> None:
    certificate = make("www.example.com", days=90)
    [notice] = ExpiryMonitor().check([certificate], before_expiry(certificate, 6.5))
    assert notice == Notice("warning", certificate, 6, f"certificate for www.example.com expires "
                            f"in 6 days ({certificate.not_after:%Y-%m-%d}, {certificate.source})")
    [last] = ExpiryMonitor().check([certificate], before_expiry(certificate, 0.5))
    assert last.message.startswith("certificate for www.example.com expires in less than a day (")
    [one] = ExpiryMonitor(thresholds=(2,)).check([certificate], before_expiry(certificate, 1.5))
    assert "expires in 1 day (" in one.message


def test_only_the_lowest_threshold_crossed_is_reported(make: Make) -> None:
    certificate = make(days=90)
    monitor = ExpiryMonitor()
    assert summary(monitor.check([certificate], before_expiry(certificate, 5.5))) == [
        ("warning", 5)]
    assert monitor.check([certificate], before_expiry(certificate, 3)) == []
    assert monitor.check([certificate], before_expiry(certificate, 1.01)) == []
    assert summary(monitor.check([certificate], before_expiry(certificate, 0.99))) == [
        ("warning", 0)]


def test_a_jump_over_several_thresholds_gives_one_warning(make: Make) -> None:
    certificate = make(days=90)
    monitor = ExpiryMonitor()
    assert summary(monitor.check([certificate], before_expiry(certificate, 20))) == [
        ("warning", 20)]
    assert summary(monitor.check([certificate], before_expiry(certificate, 3))) == [
        ("warning", 3)]  # 14 and 7 crossed since the last check: only 7 is reported


def test_an_expired_certificate_is_an_error_repeated_once_a_day(make: Make) -> None:
    certificate = make("old.example.test", days=90)
    monitor = ExpiryMonitor()
    expiry = certificate.not_after
    hours = [1, 2, 12, 24.9, 25, 48, 48.9, 49, 100]
    errors = []
    for hour in hours:
        for notice in monitor.check([certificate], expiry + dt.timedelta(hours=hour)):
            errors.append((hour, notice.level, notice.days_left))
    assert errors == [(1, "error", -1), (25, "error", -2), (49, "error", -3), (100, "error", -5)]


def test_the_error_message(make: Make) -> None:
    certificate = make("old.example.test", days=90)
    [notice] = ExpiryMonitor().check([certificate], certificate.not_after)  # expired at not_after
    assert notice.level == "error"
    assert notice.message == (f"certificate for old.example.test EXPIRED on "
                              f"{certificate.not_after:%Y-%m-%d} ({certificate.source})")


def test_warnings_then_the_error(make: Make) -> None:
    certificate = make(days=90)
    monitor = ExpiryMonitor()
    levels = []
    for days in (10, 0.5, -0.5, -0.6):
        levels.extend(summary(monitor.check([certificate], before_expiry(certificate, days))))
    assert levels == [("warning", 10), ("warning", 0), ("error", -1)]


def test_a_certificate_first_seen_expired_gets_only_the_error(make: Make) -> None:
    certificate = make(days=90)
    notices = ExpiryMonitor().check([certificate], before_expiry(certificate, -3.5))
    assert summary(notices) == [("error", -4)]


def test_removed_certificates_are_forgotten(make: Make) -> None:
    certificate, other = make("a.example.test", days=90), make("b.example.test", days=90)
    monitor = ExpiryMonitor()
    now = before_expiry(certificate, 5.5)
    assert summary(monitor.check([certificate, other], now)) == [("warning", 5), ("warning", 5)]
    assert monitor.check([certificate, other], now) == []
    assert monitor.check([other], now) == []
    assert [n.certificate for n in monitor.check([certificate, other], now)] == [certificate]


def test_an_expired_certificate_that_comes_back_is_reported_at_once(make: Make) -> None:
    certificate = make(days=90)
    monitor = ExpiryMonitor()
    now = before_expiry(certificate, -1)
    assert len(monitor.check([certificate], now)) == 1
    assert monitor.check([], now) == []
    assert len(monitor.check([certificate], now + dt.timedelta(minutes=1))) == 1


def test_a_renewed_certificate_starts_fresh(make: Make) -> None:
    old = make("www.example.test", days=90)
    monitor = ExpiryMonitor()
    assert summary(monitor.check([old], before_expiry(old, 5.5))) == [("warning", 5)]
    renewed = make("www.example.test", days=180)
    assert renewed.fingerprint != old.fingerprint
    now = before_expiry(old, 5)
    assert monitor.check([renewed], now) == []  # 95 days left: nothing to say
    assert summary(monitor.check([renewed], before_expiry(renewed, 29.5))) == [("warning", 29)]


def test_a_certificate_served_twice_gets_one_notice(make: Make) -> None:
    certificate = make(days=90)
    copy = dataclasses.replace(certificate, source="/elsewhere/copy.pem")
    notices = ExpiryMonitor().check([certificate, copy], before_expiry(certificate, 5.5))
    assert [n.certificate for n in notices] == [certificate]


def test_monitors_do_not_share_state(make: Make) -> None:
    certificate = make(days=90)
    now = before_expiry(certificate, 5.5)
    first, second = ExpiryMonitor(), ExpiryMonitor()
    assert len(first.check([certificate], now)) == 1
    assert len(second.check([certificate], now)) == 1


def test_notices_never_carry_key_material(make: Make) -> None:
    certificate = make(days=90)
    notices = [*ExpiryMonitor().check([certificate], before_expiry(certificate, 3)),
               *ExpiryMonitor().check([certificate], before_expiry(certificate, -3))]
    assert len(notices) == 2
    key_body = certificate.key_pem.decode().splitlines()[1]
    for notice in notices:
        for text in (notice.message, repr(notice), str(notice)):
            assert "PRIVATE KEY" not in text
            assert key_body not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        notices[0].level = "error"  # type: ignore[misc]
