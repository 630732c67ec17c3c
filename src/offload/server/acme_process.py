"""The body of the ACME child process the supervisor forks when ``[acme]`` is configured.

It runs as the workers' account (so the files it writes are theirs to read), sleeps in
``select`` on two pipes, and stops when either becomes readable: its own SIGTERM pipe, or the
supervisor's lifeline (closed when the supervisor dies, so no ACME process outlives it).
"""

from __future__ import annotations

import logging
import os
import select
import signal

from offload.acme.shared import SETTLE, SharedAcme, SharedAcmeStorage
from offload.acme.storage import AcmeStorage
from offload.errors import OffloadError
from offload.fleet.acme_store import AcmeStore
from offload.fleet.loop_thread import LoopThread
from offload.fleet.seal import Sealer
from offload.observe.log import LogSetup
from offload.server.prepare import Prepared
from offload.server.worker import drop_privileges

_log = logging.getLogger("offload.acme")
_MAX_SLEEP = 3600.0


def _shared(prepared: Prepared, storage: AcmeStorage) -> SharedAcme | None:
    """The fleet's shared ACME store, when ``acme.shared`` is on."""
    acme, fleet, secret = prepared.config.acme, prepared.config.fleet, prepared.acme_secret
    if acme is None or not acme.shared or fleet is None or secret is None:
        return None
    local = SharedAcmeStorage(storage.root)
    try:
        thread = LoopThread(fleet, prepared.base_dir)
    except OSError as error:
        raise OffloadError(f"fleet.password_file: cannot read it: {error}") from None
    shared = SharedAcme(AcmeStore(thread.link, Sealer(secret), fleet.node), thread, local,
                        tuple(certificate.names for certificate in acme.certificates))
    local.shared = shared
    return shared


def run_acme_process(prepared: Prepared, logs: LogSetup, lifeline_fd: int) -> int:
    """Issue and renew until told to stop; returns the exit status."""
    settings = prepared.config.global_
    acme, storage = prepared.config.acme, prepared.acme_storage
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_w, False)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.write(stop_w, b"x"))
    logs.after_fork(settings.log_level, settings.log_format)
    try:
        if acme is None or storage is None:
            return 0
        shared = _shared(prepared, storage)  # reads the Redis password before dropping root
        if shared is not None:
            storage = shared.storage
        drop_privileges(settings.user, settings.group)
        # Imported here, in the ACME child only: the acme package brings requests, urllib3,
        # josepy and pyOpenSSL (about 6 MiB), which the supervisor would otherwise hold when
        # it forks, and every worker would inherit.
        from offload.acme.issuer import AcmeIssuer  # noqa: PLC0415
        from offload.acme.manager import AcmeManager  # noqa: PLC0415

        def wait(seconds: float) -> bool:
            readable, _, _ = select.select([stop_r, lifeline_fd], [], [],
                                           min(seconds, _MAX_SLEEP))
            return bool(readable)

        if shared is not None:
            shared.start()
            # nodes started together must see each other's heartbeats before one of them
            # orders, or the CA's validation may reach a node that has no answer yet
            if wait(SETTLE):
                shared.stop()
                return 0
        try:
            AcmeManager(acme, storage, AcmeIssuer(acme, storage, prepared.base_dir),
                        shared=shared).run(wait)
        finally:
            if shared is not None:
                shared.stop()
        return 0
    except OffloadError as error:
        _log.error("ACME process cannot run: %s", error)
        return 78
    finally:
        logs.stop()
