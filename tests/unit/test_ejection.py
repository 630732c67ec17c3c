"""Passive ejection as a weapon: scripts of request outcomes against one backend's servers.

Each test feeds :meth:`ServerGroup.report` a script of outcomes at injected times and checks
which servers are still in rotation. The attacker's move is a path that answers 500: by
default that never ejects anything; with ``count_5xx`` on, at most ``max_ejected_percent`` of
the servers go, and never the last one in rotation.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.config.model import BackendConfig
from offload.observe.stats import Counters
from offload.upstream.group import ServerGroup
from offload.upstream.health import ALWAYS_FAILURES, EjectionBudget, ejection_limit, is_failure
from offload.upstream.servers import Server

FAILURES = sorted(ALWAYS_FAILURES)
ALL_OUTCOMES = ["ok", "status_5xx", *FAILURES]


def group(servers: int, *, backups: int = 0, **ejection: object) -> ServerGroup:
    """A backend of ``servers`` primaries (and ``backups``) with ``ejection`` settings."""
    names = [f"s{index}" for index in range(servers + backups)]
    config = BackendConfig.model_validate({
        "name": "app",
        "servers": [{"address": f"127.0.0.1:{8000 + index}", "name": name,
                     "backup": index >= servers} for index, name in enumerate(names)],
        "ejection": {"failures": 3, "duration": "10s", **ejection},
    })
    return ServerGroup(config, tuple(Server(name, "127.0.0.1", 8000 + index)
                                     for index, name in enumerate(names)), Counters())


def hammer(backend: ServerGroup, outcome: str, rounds: int, start: float = 0.0) -> float:
    """Every server answers ``outcome`` ``rounds`` times, one report per 10 ms; the time after."""
    now = start
    for _ in range(rounds):
        for index in range(len(backend.states)):
            backend.report(index, outcome, now)  # type: ignore[arg-type]
            now += 0.01
    return now


def in_rotation(backend: ServerGroup, now: float) -> list[int]:
    return sorted(backend.candidates(b"client", now) if len(backend.states) > 1 else
                  [index for index, state in enumerate(backend.states) if state.usable(now)])


def ejected(backend: ServerGroup) -> int:
    return backend.counters.get("server_state", "app", "ejected")


# ------------------------------------------------------------------ what counts


@pytest.mark.parametrize("servers", [1, 2, 3])
def test_500_answers_never_eject_by_default(servers: int) -> None:
    backend = group(servers)
    now = hammer(backend, "status_5xx", 50)
    assert in_rotation(backend, now) == list(range(servers))
    assert ejected(backend) == 0
    assert all(tracker.describe()["request_failures"] == 0 for tracker in backend.trackers)


def test_a_500_answer_resets_the_failure_count_by_default() -> None:
    """The server answered: it is alive. Two timeouts, a 500, two timeouts: no ejection."""
    backend = group(2)
    for now, outcome in enumerate(["timeout", "timeout", "status_5xx", "timeout", "timeout"]):
        backend.report(0, outcome, float(now))  # type: ignore[arg-type]
    assert ejected(backend) == 0
    backend.report(0, "timeout", 5.0)
    assert ejected(backend) == 1


@pytest.mark.parametrize("outcome", FAILURES)
def test_transport_failures_always_count(outcome: str) -> None:
    backend = group(2)
    for now in range(3):
        backend.report(0, outcome, float(now))  # type: ignore[arg-type]
    assert ejected(backend) == 1
    assert in_rotation(backend, 3.0) == [1]
    assert in_rotation(backend, 12.0) == [0, 1]  # back after `duration`


def test_500_answers_count_when_configured() -> None:
    backend = group(2, count_5xx=True)
    for now in range(3):
        backend.report(1, "status_5xx", float(now))
    assert in_rotation(backend, 3.0) == [0]


def test_is_failure_table() -> None:
    default = group(1).config.ejection
    counting = group(1, count_5xx=True).config.ejection
    assert [is_failure(o, default) for o in ALL_OUTCOMES] == [False, False, True, True, True, True]  # type: ignore[arg-type]
    assert [is_failure(o, counting) for o in ALL_OUTCOMES] == [False, True, True, True, True, True]  # type: ignore[arg-type]


# ------------------------------------------------------------------ the share that may go


@pytest.mark.parametrize(("servers", "percent", "limit"), [
    (1, 50, 0), (1, 100, 0), (2, 50, 1), (3, 50, 1), (4, 50, 2), (5, 50, 2), (10, 50, 5),
    (2, 100, 1), (3, 100, 2), (10, 10, 1), (10, 5, 1), (3, 0, 0), (10, 0, 0),
])
def test_ejection_limit(servers: int, percent: int, limit: int) -> None:
    assert ejection_limit(servers, percent) == limit


@pytest.mark.parametrize(("servers", "left"), [(1, 1), (2, 1), (3, 2), (4, 2), (6, 3)])
def test_with_5xx_counted_at_most_half_go(servers: int, left: int) -> None:
    """Every server answers 500 to the attacker's path: half of them stay (at least one)."""
    backend = group(servers, count_5xx=True)
    now = hammer(backend, "status_5xx", 20)
    assert len(in_rotation(backend, now)) == left
    assert ejected(backend) == servers - left


def test_a_single_server_is_never_ejected() -> None:
    backend = group(1, max_ejected_percent=100)
    now = hammer(backend, "connect_failed", 20)
    assert in_rotation(backend, now) == [0]
    assert ejected(backend) == 0


def test_even_100_percent_leaves_one_server() -> None:
    backend = group(3, max_ejected_percent=100)
    now = hammer(backend, "reset", 20)
    assert len(in_rotation(backend, now)) == 1
    assert ejected(backend) == 2


def test_zero_percent_turns_passive_ejection_off() -> None:
    backend = group(3, max_ejected_percent=0)
    now = hammer(backend, "timeout", 20)
    assert in_rotation(backend, now) == [0, 1, 2]


def test_a_held_server_is_ejected_once_the_budget_frees() -> None:
    """s0 is ejected at t=0..2; s1 fails too but must stay until s0 is back."""
    backend = group(3, max_ejected_percent=50)
    for now in (0.0, 1.0, 2.0):
        backend.report(0, "connect_failed", now)
    for now in (3.0, 4.0, 5.0, 6.0):
        backend.report(1, "connect_failed", now)
    assert in_rotation(backend, 7.0) == [1, 2]
    # s0's ejection runs out at 12: the next failure of s1 may take its place
    backend.report(1, "connect_failed", 12.5)
    assert in_rotation(backend, 12.5) == [0, 2]
    assert backend.budget.ejected == 1


def test_the_last_server_in_rotation_stays_even_when_others_are_down() -> None:
    """Active checks took s1 down; passive ejection must not take s0, the last one left."""
    backend = group(3, max_ejected_percent=100)
    backend.states[1].up = False
    backend.states[2].admin = "disabled"
    for now in range(10):
        backend.report(0, "connect_failed", float(now))
    assert backend.states[0].usable(10.0)
    assert ejected(backend) == 0


def test_backups_count_as_servers_of_the_backend() -> None:
    backend = group(2, max_ejected_percent=50, backups=1)
    now = hammer(backend, "timeout", 10)
    assert len([state for state in backend.states if state.usable(now)]) == 2
    assert ejected(backend) == 1


def test_budget_is_per_backend_and_counts_returns() -> None:
    backend = group(2)
    for now in (0.0, 1.0, 2.0):
        backend.report(0, "timeout", now)
    assert backend.budget.ejected == 1
    backend.candidates(b"", 13.0)  # notices the return
    assert backend.budget.ejected == 0
    assert backend.counters.get("server_state", "app", "returned") == 1


@given(script=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(ALL_OUTCOMES),
                                 st.floats(0, 2)), max_size=200),
       percent=st.integers(0, 100), count_5xx=st.booleans())
def test_never_more_than_the_share_and_never_all(script: list[tuple[int, str, float]],
                                                 percent: int, count_5xx: bool) -> None:
    """Whatever the script: the ejected servers stay within the limit, one stays in rotation,
    and with 5xx not counted, an all-5xx script ejects nobody."""
    backend = group(4, max_ejected_percent=percent, count_5xx=count_5xx)
    now = 0.0
    for index, outcome, step in script:
        now += step
        backend.report(index, outcome, now)  # type: ignore[arg-type]
        held_out = [state for state in backend.states if now < state.ejected_until]
        assert len(held_out) <= ejection_limit(4, percent)
        assert len(held_out) < 4
        assert backend.budget.ejected >= len(held_out)
    if not count_5xx and all(outcome in ("ok", "status_5xx") for _, outcome, _ in script):
        assert ejected(backend) == 0


def test_budget_without_other_servers_refuses() -> None:
    backend = group(1)
    assert not EjectionBudget(backend.states, 100).allows(backend.states[0], 0.0)
