"""The supervisor's part in fleet mode: it runs the fleet process (forked, restarted with a
backoff when it dies, stopped with the supervisor), moves messages between it and the workers,
and folds the fleet's bans into the node's jail.

A :class:`~offload.server.children.ChildComponent` (the loop reaps it, keeps its deadline, syncs
it after a reload, stops it and waits for it). The ban relay tells it of offences, bans and
unbans (:meth:`offences`, :meth:`banned`, :meth:`unbanned`); a newly forked worker is told its
:meth:`greeting` (the fleet's ticket keys). It is given ``broadcast`` (to every live worker) and
``bans`` (the current jail, if any). Nothing here waits on Redis: the fleet process does, on
its own loop.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from offload.config.model import FleetConfig
from offload.fleet.ban_sync import FleetBan, FleetBook, fleet_offences
from offload.fleet.messages import (
    FleetBanned,
    FleetBans,
    FleetOffences,
    FleetStatus,
    FleetUnban,
    TicketKeys,
)
from offload.observe.log import fields
from offload.security.bans import Ban
from offload.server.ban_hub import BanHub
from offload.server.children import KILL_GRACE, Forker, Instance, kill, restart_delay
from offload.server.control import BanList, Inbox, Offences, Outbox
from offload.server.fleet_process import run_fleet_process
from offload.server.prepare import Prepared
from offload.tls.ticket_keys import TicketBridge, TicketBridgeError

_log = logging.getLogger("offload.fleet")


class FleetComponent:
    """See the module docstring."""

    def __init__(self, instance: Instance, forker: Forker, selector: selectors.BaseSelector,
                 broadcast: Callable[[object], None], bans: Callable[[], BanHub | None]) -> None:
        self._instance = instance
        self._forker = forker
        self._selector = selector
        self._broadcast = broadcast
        self._bans = bans
        self.config: FleetConfig | None = None
        self.pid: int | None = None
        self._retired: dict[int, float] = {}
        """Fleet processes told to stop: pid -> when to SIGKILL."""
        self._restart_at: float | None = None
        self._started = 0.0
        self._failures = 0
        self._outbox: Outbox | None = None
        self._inbox = Inbox()
        self._status_fd = -1
        self._stopping = False
        self.keys: TicketKeys | None = None
        self.status: FleetStatus | None = None
        self.book = FleetBook()
        self.ticket_sharing = "off"
        self._prepared: Prepared | None = None

    # ------------------------------------------------------------------ life

    @property
    def running(self) -> bool:
        """Whether a fleet process is alive (the supervisor waits for it before exiting)."""
        return self.pid is not None or bool(self._retired)

    def sync(self) -> None:
        """Run a fleet process for the current configuration: a new one whenever it changed
        (the process reports the configuration's hash and counts offences by ``[bans]``)."""
        prepared = self._instance.prepared
        wanted = prepared.config.fleet
        running = self.pid is not None or self._restart_at is not None
        if running and self._prepared is not None and prepared.config == self._prepared.config:
            self._prepared = prepared
            return
        self.stop()
        self._stopping = False
        self.config = wanted
        self._prepared = prepared
        if wanted is None:
            self.keys = self.status = None
            return
        self.ticket_sharing = self._check_tickets(wanted)
        self._spawn()

    def _check_tickets(self, config: FleetConfig) -> str:
        if not config.share_ticket_keys:
            return "off"
        try:
            bridge = TicketBridge.load()
        except TicketBridgeError as error:
            _log.error("fleet ticket-key sharing refused: %s; each node keeps its own keys "
                       "(sessions resume only on the node that issued them)", error,
                       extra=fields(event="fleet_tickets_refused"))
            return f"refused: {error}"
        _log.info("fleet ticket-key sharing on", extra=fields(library=bridge.description))
        return "on"

    def _spawn(self) -> None:
        down_r, down_w = os.pipe()  # supervisor -> fleet process
        up_r, up_w = os.pipe()  # fleet process -> supervisor
        prepared, sharing, forker = self._prepared, self.ticket_sharing, self._forker
        assert prepared is not None

        def become_fleet() -> int:
            """In the fleet child: shed the supervisor's state, then keep the node in the
            fleet."""
            forker.shed(fds=(down_w, up_r))
            return run_fleet_process(prepared, forker.logs, forker.lifeline, down_r, up_w,
                                     sharing)

        pid = forker.fork(become_fleet)
        os.close(down_r)
        os.close(up_w)
        os.set_blocking(up_r, False)
        self.pid, self._started, self._restart_at = pid, time.monotonic(), None
        self._outbox, self._inbox, self._status_fd = Outbox(down_w), Inbox(), up_r
        self._selector.register(up_r, selectors.EVENT_READ, self._on_readable)
        _log.info("fleet process started", extra=fields(pid=pid, node=self.config.node
                                                       if self.config else None))

    def fds(self) -> list[int]:
        """The supervisor's ends of the fleet pipes (a forked child closes them)."""
        return [fd for fd in (self._status_fd, self._outbox.fd if self._outbox else -1)
                if fd >= 0]

    def stop(self) -> None:
        """Stop the fleet process (with the supervisor, or when ``[fleet]`` changed)."""
        self._stopping = True
        self._restart_at = None
        if self.pid is not None:
            kill(self.pid, signal.SIGTERM)
            self._retired[self.pid] = time.monotonic() + KILL_GRACE
            self.pid = None
        self._forget_pipes()

    def _forget_pipes(self) -> None:
        if self._status_fd >= 0:
            self._selector.unregister(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1
        if self._outbox is not None:
            if self._outbox.pending:
                self._selector.unregister(self._outbox.fd)
            os.close(self._outbox.fd)
            self._outbox = None

    def reap(self) -> None:
        for pid in [*self._retired, *([self.pid] if self.pid is not None else [])]:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            code = os.waitstatus_to_exitcode(status)
            if pid in self._retired:
                del self._retired[pid]
                _log.info("fleet process exited", extra=fields(pid=pid, exit_code=code))
                continue
            self.pid = None
            self._forget_pipes()
            self._failures, delay = restart_delay(time.monotonic() - self._started,
                                                  self._failures)
            _log.warning("fleet process died; restarting it", extra=fields(
                pid=pid, exit_code=code, restart_in_s=round(delay, 2)))
            self._restart_at = time.monotonic() + delay

    def deadline(self) -> float | None:
        return min([*self._retired.values(),
                    *([self._restart_at] if self._restart_at is not None else [])],
                   default=None)

    def on_time(self, now: float) -> None:
        for pid, kill_at in list(self._retired.items()):
            if kill_at <= now:
                self._retired[pid] = now + 3600.0
                kill(pid, signal.SIGKILL)
        if self._restart_at is not None and self._restart_at <= now:
            self._restart_at = None
            if not self._stopping and not self._instance.stopping:
                self._spawn()

    # ------------------------------------------------------------------ messages

    def _send(self, message: object) -> None:
        outbox = self._outbox
        if outbox is None:
            return
        if not outbox.pending and not outbox.send(message):
            self._selector.register(outbox.fd, selectors.EVENT_WRITE, self._flush)
        elif outbox.pending:
            outbox.send(message)

    def _flush(self) -> None:
        if self._outbox is not None and self._outbox.flush():
            self._selector.unregister(self._outbox.fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._status_fd, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            self._selector.unregister(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1
            return
        for message in self._inbox.feed(data):
            self._received(message)

    def _received(self, message: object) -> None:
        if isinstance(message, FleetStatus):
            self.status = message
        elif isinstance(message, TicketKeys):
            # An empty set (every key retired while Redis was away) stops tickets rather
            # than keep encrypting under a retired key.
            if self.ticket_sharing == "on" and (message.keys or self.keys is not None):
                self.keys = message
                self._broadcast(message)
        elif isinstance(message, FleetBans):
            self._fleet_bans(message)

    def greeting(self) -> list[object]:
        """What a newly forked worker must be told (the fleet's ticket keys)."""
        return [self.keys] if self.keys is not None else []

    # ------------------------------------------------------------------ bans

    def _fleet_bans(self, message: FleetBans) -> None:
        hub = self._bans()
        if hub is None:
            return
        mono, wall = time.monotonic(), time.time()
        merge = self.book.merge(list(message.added), wall, full=message.full)
        added: list[tuple[str, float]] = []
        for record in merge.impose:
            try:
                ban = hub.jail.impose(record.to_jail(mono, wall), mono)
            except ValueError:
                continue  # not an address or key: a record this node cannot use
            if ban is not None:
                added.append((ban.client, ban.until))
                _log.warning("client banned by the fleet", extra=fields(
                    event="ban", client=ban.client, reason=ban.reason, node=record.node,
                    ban_seconds=round(ban.until - mono)))
        removed = [key for key in (*merge.lift, *message.removed) if _lift(hub, key)]
        for key in message.removed:
            self.book.unbanned(key)
        if added or removed:
            self._broadcast(BanList(added=tuple(added), removed=tuple(removed)))
        for key in removed:
            _log.info("ban lifted by the fleet", extra=fields(event="unban", client=key))

    def offences(self, message: Offences) -> None:
        """Workers' offences, for the fleet's count (:func:`fleet_offences`); called after
        the jail has counted them."""
        hub = self._bans()
        if self.config is None or hub is None or not message.reports:
            return
        reports = fleet_offences(hub.jail, message.reports, time.monotonic())
        if reports:
            self._send(FleetOffences(reports))

    def banned(self, bans: list[Ban]) -> None:
        """Bans the node's jail decided: the whole fleet holds them."""
        if self.config is None or not bans:
            return
        mono, wall = time.monotonic(), time.time()
        records = tuple(FleetBan.from_jail(ban, mono, wall, self.config.node) for ban in bans)
        for record in records:
            self.book.own(record, wall)
        self._send(FleetBanned(records))

    def unbanned(self, key: str, who: str) -> None:
        if self.config is not None:
            self.book.unbanned(key)
            self._send(FleetUnban(key, who))

    # ------------------------------------------------------------------ admin API

    def as_json(self) -> dict[str, Any] | None:
        """``/api/fleet``: None without ``[fleet]``."""
        config = self.config
        if config is None:
            return None
        status = self.status
        body: dict[str, Any] = {
            "name": config.name, "node": config.node, "process": self.pid,
            "ticket_sharing": self.ticket_sharing,
            "redis": _without_password(config.redis),
            "sentinels": list(config.sentinels), "master": config.master}
        if status is None:
            body["store"] = {"up": False, "note": "the fleet process has not reported yet"}
            body["nodes"] = []
            return body
        body["store"] = {"up": status.store_up, "round_trips": status.round_trips,
                         "failures": status.failures, "outages": status.outages,
                         "latency_ms": status.latency_ms, "last_error": status.last_error}
        body["nodes"] = list(status.nodes)
        body["ticket_keys"] = {"keys": status.ticket_keys, "newest_age_s": status.ticket_key_age,
                               "rotations_made": status.rotations,
                               "sets_received": status.key_sets_seen}
        body["config_hash"] = status.config_hash
        return body


def _lift(hub: BanHub, key: str) -> bool:
    try:
        return hub.unban(key) is not None
    except ValueError:
        return False


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if credentials or at else url


