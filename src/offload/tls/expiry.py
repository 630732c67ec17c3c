"""Expiry monitoring: which notices to give about certificates that are about to expire.

Sans-IO: :class:`ExpiryMonitor` is handed the certificates being served and the current time
(an injected clock) and returns the notices to log; the caller decides when to ask (at start,
after a reload, periodically) and where the notices go.

Theory of operation, per certificate (identified by the SHA-256 fingerprint of its leaf):

====================================  ===================================================
state seen at ``check``               notice
====================================  ===================================================
fewer than T whole days left, for     one warning for the *lowest* threshold T crossed
a threshold T not reported yet        since the last notice (30, 14, 7, 1 days)
expired (``not_after <= now``)        an error, repeated at most once every 24 hours
no longer in the input                forgotten: if it comes back it starts fresh
====================================  ===================================================

A renewed certificate has a new fingerprint, so it starts fresh too. Notices describe the
certificate (names, expiry date, source file); they never carry the key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from offload.tls.certs import LoadedCertificate

WARN_DAYS = (30, 14, 7, 1)
"""Warn when fewer than this many whole days are left, once per threshold."""
ERROR_REPEAT = dt.timedelta(hours=24)
"""How often the error about an expired certificate is repeated."""

Level = Literal["warning", "error"]


def days_until(moment: dt.datetime, now: dt.datetime) -> int:
    """Whole days from ``now`` until ``moment``, rounded down (negative once it has passed)."""
    return (moment - now).days


def days_left(cert: LoadedCertificate, now: dt.datetime) -> int:
    """Whole days until ``cert`` expires, rounded down (negative once expired)."""
    return days_until(cert.not_after, now)


def days_text(days: int) -> str:
    """``"6 days"``, ``"1 day"``, ``"less than a day"``."""
    if days < 1:
        return "less than a day"
    return f"{days} day{'s' if days != 1 else ''}"


def names_text(names: Sequence[str]) -> str:
    return ", ".join(names) or "(no names)"


@dataclass(frozen=True)
class Notice:
    """Something to log about one certificate."""

    level: Level
    certificate: LoadedCertificate
    days_left: int
    message: str


@dataclass
class _Given:
    """The notices already given for one certificate."""

    lowest: int | None = None
    """The lowest threshold warned about."""
    last_error: dt.datetime | None = None


class ExpiryMonitor:
    """Remembers the notices given per certificate, so each threshold is reported once."""

    def __init__(self, thresholds: Iterable[int] = WARN_DAYS,
                 error_repeat: dt.timedelta = ERROR_REPEAT) -> None:
        self._thresholds = tuple(sorted(set(thresholds), reverse=True))
        self._error_repeat = error_repeat
        self._given: dict[str, _Given] = {}

    def check(self, certificates: Iterable[LoadedCertificate], now: dt.datetime) -> list[Notice]:
        """The notices due at ``now`` (timezone-aware) for the certificates now in use.

        Certificates missing from ``certificates`` are forgotten; one that appears several
        times (served by several frontends) gets one notice.
        """
        notices: list[Notice] = []
        given: dict[str, _Given] = {}
        for certificate in certificates:
            if certificate.fingerprint in given:
                continue
            state = self._given.get(certificate.fingerprint, _Given())
            given[certificate.fingerprint] = state
            notice = self._notice(certificate, state, now)
            if notice is not None:
                notices.append(notice)
        self._given = given
        return notices

    def _notice(self, certificate: LoadedCertificate, state: _Given,
                now: dt.datetime) -> Notice | None:
        days = days_left(certificate, now)
        names = names_text(certificate.names)
        if certificate.not_after <= now:
            if state.last_error is not None and now - state.last_error < self._error_repeat:
                return None
            state.last_error = now
            return Notice("error", certificate, days,
                          f"certificate for {names} EXPIRED on {certificate.not_after:%Y-%m-%d} "
                          f"({certificate.source})")
        crossed = [threshold for threshold in self._thresholds if days < threshold]
        if not crossed or (state.lowest is not None and crossed[-1] >= state.lowest):
            return None
        state.lowest = crossed[-1]
        return Notice("warning", certificate, days,
                      f"certificate for {names} expires in {days_text(days)} "
                      f"({certificate.not_after:%Y-%m-%d}, {certificate.source})")
