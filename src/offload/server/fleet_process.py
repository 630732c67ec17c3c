"""The body of the fleet process the supervisor forks when ``[fleet]`` is configured.

It runs its own asyncio loop with the Redis link (:mod:`offload.fleet.agent`), so the
supervisor's selector loop never waits on Redis. Two pipes connect it to the supervisor
(messages framed like the worker control pipe); it stops on SIGTERM or when the supervisor's
lifeline closes (the supervisor died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from offload import __version__
from offload.config.model import Config
from offload.fleet.agent import AgentSettings, FleetAgent
from offload.fleet.link import FleetLink, redis_client
from offload.fleet.registry import config_hash
from offload.fleet.ticket_schedule import KeySchedule
from offload.observe.log import LogSetup
from offload.server.control import Inbox, Outbox
from offload.server.prepare import Prepared
from offload.server.worker import drop_privileges

_log = logging.getLogger("offload.fleet")


def fleet_config_hash(config: Config) -> str:
    """The hash nodes compare: what must agree across the fleet, which is the whole
    configuration but the node's own name and the addresses it listens on (nodes often bind
    their own IP addresses)."""
    update: dict[str, object] = {"frontends": tuple(
        f.model_copy(update={"bind": (), "redirect_http": ()}) for f in config.frontends)}
    if config.admin is not None:
        update["admin"] = config.admin.model_copy(update={"bind": None})
    if config.fleet is not None:
        update["fleet"] = config.fleet.model_copy(update={"node": ""})
    return config_hash(repr(config.model_copy(update=update)))


def run_fleet_process(prepared: Prepared, logs: LogSetup, lifeline_fd: int, from_supervisor: int,
                      to_supervisor: int, ticket_sharing: str) -> int:
    """Keep the node in the fleet until told to stop; returns the exit status."""
    settings = prepared.config.global_
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logs.after_fork(settings.log_level, settings.log_format)
    try:
        fleet = prepared.config.fleet
        if fleet is None:
            return 0
        try:
            client = redis_client(fleet, Path(prepared.base_dir))
        except OSError as error:
            _log.error("fleet mode is off: cannot read fleet.password_file",
                       extra={"fields": {"reason": error.strerror}})
            return 78
        drop_privileges(settings.user, settings.group)
        schedule = (KeySchedule(fleet.ticket_key_rotation, fleet.ticket_key_lifetime)
                    if ticket_sharing == "on" else None)
        agent_settings = AgentSettings(fleet.node, fleet.name, __version__,
                                       fleet_config_hash(prepared.config), schedule,
                                       ticket_sharing, prepared.config.bans)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_serve(agent_settings, FleetLink(client, fleet),
                                           lifeline_fd, from_supervisor, to_supervisor))
        finally:
            loop.close()
        return 0
    finally:
        logs.stop()


async def _serve(settings: AgentSettings, link: FleetLink, lifeline_fd: int,
                 from_supervisor: int, to_supervisor: int) -> None:
    loop = asyncio.get_running_loop()
    outbox = Outbox(to_supervisor)
    inbox = Inbox()
    os.set_blocking(from_supervisor, False)
    stopped = asyncio.Event()

    def flush() -> None:
        if outbox.flush():
            loop.remove_writer(to_supervisor)

    def send(message: object) -> None:
        if not outbox.send(message):
            loop.add_writer(to_supervisor, flush)

    agent = FleetAgent(settings, link, send)

    def receive() -> None:
        try:
            data = os.read(from_supervisor, 1 << 20)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(from_supervisor)
            stopped.set()
            return
        for message in inbox.feed(data):
            agent.receive(message)

    loop.add_reader(from_supervisor, receive)
    loop.add_reader(lifeline_fd, stopped.set)
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    work = asyncio.create_task(agent.run())
    waiter = asyncio.create_task(stopped.wait())
    await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for task in (work, waiter):
        task.cancel()
    for task in (work, waiter):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await link.close()
    _log.info("fleet process stopped", extra={"fields": {"node": settings.node}})
