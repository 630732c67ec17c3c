"""The supervisor's certificate files: watched, re-read once still, sent to every worker, and
checked for approaching expiry.

Changes are seen with inotify (:class:`~offload.server.watch.PathWatcher`) and debounced for
:data:`CERTIFICATE_DEBOUNCE`; a changed file is read once it and its key file have been still
that long. A broken one is logged (and audited) and its old certificate stays. What changed is
sent to every worker not draining, which swaps its certificates in place; the supervisor's own
stores follow too, for workers forked later.
"""

from __future__ import annotations

import datetime as dt
import logging
import selectors
import ssl
import time
from collections.abc import Callable

from offload.observe.log import fields
from offload.server.children import Instance
from offload.server.control import BackendCertificateChanged, CertificatesChanged
from offload.server.watch import Debounce, PathWatcher
from offload.tls.expiry import ExpiryMonitor

_log = logging.getLogger("offload.supervisor")
_audit = logging.getLogger("offload.audit")

CERTIFICATE_DEBOUNCE = 0.2
EXPIRY_CHECK_INTERVAL = 3600.0


class CertificateWatch:
    """Watches the current configuration's certificate files and keeps the workers current."""

    def __init__(self, instance: Instance, selector: selectors.BaseSelector,
                 broadcast: Callable[[object], None]) -> None:
        self._instance = instance
        self._selector = selector
        self._broadcast = broadcast
        self._watcher: PathWatcher | None = None
        self._debounce = Debounce(CERTIFICATE_DEBOUNCE)
        self._expiry = ExpiryMonitor()
        self._next_expiry_check = 0.0

    def fds(self) -> list[int]:
        return [self._watcher.fileno()] if self._watcher is not None else []

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()

    def watch(self) -> None:
        """Watch the current configuration's certificate files and directories."""
        if self._watcher is not None:
            self._selector.unregister(self._watcher.fileno())
            self._watcher.close()
            self._watcher = None
        try:
            watcher = PathWatcher()
        except OSError as error:
            _log.warning("certificate files are not watched (%s); use SIGHUP after changes",
                         error)
            return
        prepared = self._instance.prepared
        for frontend in prepared.frontends:
            for path in frontend.sources.watch_paths():
                watcher.watch(path)
        if prepared.backend_tls is not None:
            for path in prepared.backend_tls.watch_paths():
                watcher.watch(path)
        self._watcher = watcher
        self._selector.register(watcher.fileno(), selectors.EVENT_READ, self._on_watch)

    def _on_watch(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            self._debounce.note(time.monotonic(), watcher.read_changes())

    def deadline(self) -> float | None:
        due = self._debounce.due(time.monotonic())
        return self._next_expiry_check if due is None else min(due, self._next_expiry_check)

    def on_time(self, now: float) -> None:
        batch_due = self._debounce.due(now)
        if batch_due is not None and batch_due <= now and not self._instance.stopping:
            self._debounce.take(now)
            self.refresh("a certificate file changed")
        if self._next_expiry_check <= now:
            self._next_expiry_check = now + EXPIRY_CHECK_INTERVAL
            self.check_expiry()

    def refresh(self, why: str) -> None:
        """Read changed certificate files and hand the changes to every worker."""
        now = dt.datetime.now(dt.UTC)
        for frontend in self._instance.prepared.frontends:
            name = frontend.config.name
            result = frontend.sources.refresh(now, frontend.store.files(),
                                              settle=CERTIFICATE_DEBOUNCE, clock=time.monotonic())
            if result.unsettled:  # a pair half replaced: judge it once both files are still
                self._debounce.note(time.monotonic(), result.unsettled)
            for path, reason in result.rejected:
                _log.error("certificate rejected, the previous one keeps serving",
                           extra=fields(event="certificate_rejected", frontend=name, file=path,
                                        reason=reason))
                _audit.info("certificate change", extra=fields(
                    audit=True, who=why, what=f"replace {path} on {name}",
                    result=f"rejected: {reason}"))
            for warning in result.warnings:
                _log.warning(warning)
            if not result.changed:
                continue
            if not frontend.store.update(result.order, result.changed):
                _log.error("no certificate would be left; keeping the previous ones",
                           extra=fields(frontend=name))
                continue
            self._broadcast(CertificatesChanged(name, tuple(result.order), result.changed))
            added = sorted(path for path, group in result.changed.items() if group)
            removed = sorted(path for path, group in result.changed.items() if group is None)
            _log.info("certificates updated", extra=fields(
                event="certificates_updated", frontend=name, why=why, loaded=added,
                removed=removed))
            _audit.info("certificate change", extra=fields(
                audit=True, who=why, what=f"certificates of {name}", result="applied",
                loaded=added, removed=removed))
        self._refresh_backend_certificates(why, now)
        self.check_expiry()

    def _refresh_backend_certificates(self, why: str, now: dt.datetime) -> None:
        """The same for the client certificates offload shows backend servers."""
        backend_tls = self._instance.prepared.backend_tls
        if backend_tls is None or not backend_tls.sources:
            return
        result = backend_tls.refresh(now, settle=CERTIFICATE_DEBOUNCE, clock=time.monotonic())
        if result.unsettled:
            self._debounce.note(time.monotonic(), result.unsettled)
        for path, reason in result.rejected:
            _log.error("backend client certificate rejected, the previous one stays in use",
                       extra=fields(event="certificate_rejected", file=path, reason=reason))
        for warning in result.warnings:
            _log.warning(warning)
        for path, certificate in result.changed.items():
            try:
                backend_tls.use_certificate(path, certificate)  # for workers forked later
            except (ssl.SSLError, OSError) as error:
                _log.error("backend client certificate rejected, the previous one stays in "
                           "use", extra=fields(event="certificate_rejected", file=path,
                                               reason=str(error)))
                continue
            self._broadcast(BackendCertificateChanged(path, certificate))
            _log.info("backend client certificate updated", extra=fields(
                event="certificates_updated", file=path, why=why,
                certificate=certificate.describe()))
            _audit.info("certificate change", extra=fields(
                audit=True, who=why, what=f"backend client certificate {path}",
                result="applied"))

    def check_expiry(self) -> None:
        certificates = [c for f in self._instance.prepared.frontends
                        for c in f.store.certificates()]
        for notice in self._expiry.check(certificates, dt.datetime.now(dt.UTC)):
            log = _log.error if notice.level == "error" else _log.warning
            log(notice.message, extra=fields(event="certificate_expiring",
                                             days_left=notice.days_left,
                                             source=notice.certificate.source))
