"""HealthTracker: active rise/fall, passive ejection and return, as scripts of results and times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.config.model import EjectionConfig, HealthCheckConfig
from offload.upstream.balancer import ServerState
from offload.upstream.health import HealthTracker

CHECK = HealthCheckConfig.model_validate({"rise": 2, "fall": 3})
EJECT = EjectionConfig.model_validate({"failures": 3, "duration": "10s"})
OFF = EjectionConfig.model_validate({"failures": 0})


def tracker(check: HealthCheckConfig | None = CHECK, ejection: EjectionConfig = EJECT
            ) -> HealthTracker:
    return HealthTracker(ServerState(index=0, weight=1), check, ejection)


def checks(health: HealthTracker, results: str, start: float = 0.0) -> list[str | None]:
    """Feed ``results`` ("+" ok, "-" failed), one per second; the transitions returned."""
    return [health.record_check(result == "+", start + step) for step, result in enumerate(results)]


# ------------------------------------------------------------------ active checks


def test_starts_up_with_or_without_a_check() -> None:
    assert tracker().server.up
    assert tracker(check=None).server.up
    assert tracker().describe()["state"] == "up"


def test_confirmed_server_goes_down_after_fall_failures() -> None:
    health = tracker()
    assert checks(health, "+--") == [None, None, None]
    assert health.server.up
    assert health.describe()["check_failures"] == 2
    assert checks(health, "-") == ["down"]
    assert not health.server.up
    assert health.describe()["state"] == "down"
    assert checks(health, "----") == [None] * 4  # no repeated "down"


def test_unconfirmed_server_goes_down_at_first_failure() -> None:
    health = tracker()
    assert checks(health, "-") == ["down"]


def test_a_success_resets_the_failure_count() -> None:
    health = tracker()
    assert checks(health, "+--+--+--") == [None] * 9
    assert health.server.up
    assert checks(health, "-") == ["down"]


def test_down_server_comes_up_after_rise_successes() -> None:
    health = tracker()
    assert checks(health, "-") == ["down"]
    assert checks(health, "+-+-") == [None] * 4  # a failure resets the success count
    assert health.describe()["check_successes"] == 0
    assert checks(health, "++") == [None, "up"]
    assert health.server.up
    assert checks(health, "++") == [None, None]
    # once back up (and so confirmed), it takes `fall` failures again
    assert checks(health, "---") == [None, None, "down"]


@pytest.mark.parametrize(("rise", "fall"), [(1, 1), (1, 5), (4, 2)])
def test_rise_and_fall_counts(rise: int, fall: int) -> None:
    health = tracker(HealthCheckConfig.model_validate({"rise": rise, "fall": fall}))
    checks(health, "+")
    assert checks(health, "-" * fall) == [None] * (fall - 1) + ["down"]
    assert checks(health, "+" * rise) == [None] * (rise - 1) + ["up"]


@given(results=st.text(alphabet="+-", max_size=60), rise=st.integers(1, 4), fall=st.integers(1, 4))
def test_transitions_follow_consecutive_runs(results: str, rise: int, fall: int) -> None:
    """Against a reference: down when a run of failures reaches ``fall`` (or at the first
    failure before any success), up when a run of successes reaches ``rise``."""
    health = tracker(HealthCheckConfig.model_validate({"rise": rise, "fall": fall}))
    up, confirmed, run = True, False, ""
    for now, result in enumerate(results):
        run = run + result if run.endswith(result) else result
        expected = None
        if up and result == "-" and (len(run) >= fall or not confirmed):
            expected, up, run = "down", False, ""
        elif not up and result == "+" and len(run) >= rise:
            expected, up, run = "up", True, ""
        confirmed = confirmed or (up and result == "+")
        assert health.record_check(result == "+", float(now)) == expected
        assert health.server.up == up


def test_record_check_without_a_check_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="active health check"):
        tracker(check=None).record_check(True, 0.0)


# ------------------------------------------------------------------ passive ejection


def test_consecutive_failures_eject_until_now_plus_duration() -> None:
    health = tracker()
    assert health.record_request("connect_failed", 1.0) is None
    assert health.record_request("connect_failed", 2.0) is None
    assert health.server.usable(2.0)
    assert health.record_request("connect_failed", 3.0) == "ejected"
    assert health.server.ejected_until == 13.0
    assert not health.server.usable(12.9)
    assert health.describe() == {"state": "ejected", "admin": "enabled", "check_successes": 0,
                                 "check_failures": 0, "request_failures": 0,
                                 "ejected_until": 13.0}


def test_a_success_resets_the_request_failure_count() -> None:
    health = tracker()
    for now, ok in enumerate([False, False, True, False, False, True, False, False]):
        outcome = "ok" if ok else "connect_failed"
        assert health.record_request(outcome, float(now)) is None
    assert health.server.ejected_until == 0.0
    assert health.describe()["request_failures"] == 2


def test_results_while_ejected_are_ignored() -> None:
    health = tracker()
    for now in (1.0, 2.0, 3.0):
        health.record_request("connect_failed", now)
    assert health.record_request("connect_failed", 5.0) is None  # a straggler: no longer ejection
    assert health.record_request("ok", 6.0) is None
    assert health.server.ejected_until == 13.0


def test_return_is_reported_once_by_refresh() -> None:
    health = tracker()
    for now in (1.0, 2.0, 3.0):
        health.record_request("connect_failed", now)
    assert health.refresh(12.0) is None
    assert health.refresh(13.0) == "returned"
    assert health.refresh(14.0) is None
    assert health.server.usable(13.0)
    assert health.describe()["state"] == "up"
    assert health.describe()["ejected_until"] is None


def test_return_is_reported_by_the_next_request() -> None:
    health = tracker()
    for now in (1.0, 2.0, 3.0):
        health.record_request("connect_failed", now)
    assert health.record_request("ok", 20.0) == "returned"
    assert health.record_request("ok", 21.0) is None
    # the count starts afresh after a return
    assert [health.record_request("connect_failed", t) for t in (22.0, 23.0, 24.0)] == [None, None, "ejected"]
    assert health.server.ejected_until == 34.0


def test_return_and_new_ejection_in_one_call_reports_ejected() -> None:
    health = tracker(ejection=EjectionConfig.model_validate({"failures": 1, "duration": "5s"}))
    assert health.record_request("connect_failed", 0.0) == "ejected"
    assert health.record_request("connect_failed", 5.0) == "ejected"
    assert health.server.ejected_until == 10.0
    assert health.refresh(10.0) == "returned"


def test_zero_failures_disables_ejection() -> None:
    health = tracker(ejection=OFF)
    assert all(health.record_request("connect_failed", float(now)) is None for now in range(100))
    assert health.server.ejected_until == 0.0
    assert health.server.usable(100.0)


def test_active_and_passive_states_are_independent() -> None:
    health = tracker()
    for now in (1.0, 2.0, 3.0):
        health.record_request("connect_failed", now)
    assert checks(health, "-", start=4.0) == ["down"]
    assert health.describe()["state"] == "down"
    assert health.refresh(13.0) == "returned"
    assert not health.server.usable(13.0)  # still down by the active check
    assert checks(health, "++", start=14.0) == [None, "up"]
    assert health.server.usable(16.0)
