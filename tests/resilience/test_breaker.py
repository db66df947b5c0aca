"""The circuit breaker on a fake clock: opening, cooldown, the half-open probe, closing."""

from __future__ import annotations

import pytest

from kvgate.config.schema import BreakerSettings
from kvgate.core.deployment import Deployment
from kvgate.resilience.breaker import (
    BreakerBoard,
    CircuitBreakerBoard,
    NoBreaker,
    RollingCounts,
)
from tests.routing.factories import deployment


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def board(**settings: float) -> tuple[CircuitBreakerBoard, Deployment, Clock]:
    clock = Clock()
    breakers = CircuitBreakerBoard(clock=clock)
    d = deployment("d")
    breakers.watch(d, BreakerSettings(**{"cooldown_s": 10.0, **settings}))
    return breakers, d, clock


# -- the contract every BreakerBoard keeps ------------------------------------------------


@pytest.fixture(params=["none", "circuit"])
def any_board(request: pytest.FixtureRequest) -> tuple[BreakerBoard, Deployment]:
    d = deployment("d")
    if request.param == "none":
        return NoBreaker(), d
    breakers = CircuitBreakerBoard()
    breakers.watch(d, BreakerSettings())
    return breakers, d


def test_contract_fresh_deployment_is_closed_and_allowed(
    any_board: tuple[BreakerBoard, Deployment]
) -> None:
    breakers, d = any_board
    assert breakers.allows(d) and breakers.state_code(d) == 0
    assert breakers.retry_after_s([d]) == 0.0
    described = breakers.describe(d)
    assert described["state"] == "closed" and described["cooldown_left_s"] == 0.0


def test_contract_successes_and_health_keep_it_closed(
    any_board: tuple[BreakerBoard, Deployment]
) -> None:
    breakers, d = any_board
    for _ in range(100):
        breakers.on_dispatched(d)
        breakers.record_success(d)
        breakers.record_health(d, True)
        breakers.record_health(d, False)
    assert breakers.allows(d) and breakers.state_code(d) == 0


# -- CircuitBreakerBoard ------------------------------------------------------------------


def test_opens_after_n_consecutive_failures_and_a_success_resets_the_count() -> None:
    breakers, d, _ = board(consecutive_failures=3, min_requests=1000)
    for _ in range(2):
        breakers.record_failure(d)
    breakers.record_success(d)
    for _ in range(2):
        breakers.record_failure(d)
    assert breakers.allows(d)
    breakers.record_failure(d)
    assert not breakers.allows(d) and breakers.state_code(d) == 2


def test_opens_on_error_rate_over_the_window_without_a_streak() -> None:
    breakers, d, clock = board(consecutive_failures=100, error_rate=0.5, min_requests=10,
                               window_s=10.0)
    for _ in range(4):  # alternate: never two failures in a row, 50% failing
        breakers.record_success(d)
        breakers.record_failure(d)
        clock.now_s += 0.5
    assert breakers.allows(d)  # 8 attempts < min_requests
    breakers.record_success(d)
    breakers.record_failure(d)
    assert not breakers.allows(d)
    described = breakers.describe(d)
    assert described["state"] == "open" and described["times_opened"] == 1


def test_old_failures_slide_out_of_the_window() -> None:
    breakers, d, clock = board(consecutive_failures=100, error_rate=0.5, min_requests=4,
                               window_s=10.0)
    for failed in (True, True, False):  # below min_requests: no verdict yet
        (breakers.record_failure if failed else breakers.record_success)(d)
    clock.now_s += 11.0  # those three are outside the window now
    for failed in (False, True, False, False):
        (breakers.record_failure if failed else breakers.record_success)(d)
    # Counting the old ones, the failure would have made 3 of 5; in the window it is 1 of 2.
    assert breakers.allows(d)
    assert breakers.describe(d)["window_requests"] == 4


def test_cooldown_then_a_single_probe_then_closed() -> None:
    breakers, d, clock = board(consecutive_failures=1)
    breakers.record_failure(d)
    assert not breakers.allows(d)
    assert breakers.retry_after_s([d]) == pytest.approx(10.0)
    clock.now_s += 4.0
    assert breakers.describe(d)["cooldown_left_s"] == pytest.approx(6.0)
    clock.now_s += 6.0
    assert breakers.state_code(d) == 1 and breakers.allows(d)
    # Asking has no side effect (readiness checks ask too); dispatching takes the probe.
    assert breakers.allows(d)
    breakers.on_dispatched(d)
    assert not breakers.allows(d) and breakers.describe(d)["probe_in_flight"] is True
    breakers.record_success(d)
    assert breakers.state_code(d) == 0 and breakers.allows(d)
    assert breakers.describe(d)["consecutive_failures"] == 0


def test_failed_probe_opens_for_a_fresh_cooldown() -> None:
    breakers, d, clock = board(consecutive_failures=1)
    breakers.record_failure(d)
    clock.now_s += 10.0
    breakers.on_dispatched(d)
    clock.now_s += 1.0
    breakers.record_failure(d)
    assert breakers.state_code(d) == 2
    assert breakers.retry_after_s([d]) == pytest.approx(10.0)
    assert breakers.describe(d)["times_opened"] == 2


def test_a_probe_that_never_reports_releases_the_circuit_after_its_lease() -> None:
    breakers, d, clock = board(consecutive_failures=1)
    breakers.record_failure(d)
    clock.now_s += 10.0
    breakers.on_dispatched(d)  # ...and its client disconnects: nothing is ever recorded
    clock.now_s += 9.9
    assert not breakers.allows(d)
    clock.now_s += 0.2
    assert breakers.allows(d)


def test_stragglers_do_not_change_an_open_circuit() -> None:
    breakers, d, clock = board(consecutive_failures=1)
    breakers.record_failure(d)
    breakers.record_success(d)  # sent before the circuit opened
    assert breakers.state_code(d) == 2
    breakers.record_failure(d)
    clock.now_s += 10.0
    assert breakers.state_code(d) == 1  # the straggler did not restart the cooldown


def test_health_check_pass_ends_the_cooldown_and_a_failure_changes_nothing() -> None:
    breakers, d, clock = board(consecutive_failures=1, cooldown_s=60.0)
    breakers.record_failure(d)
    breakers.record_health(d, False)
    assert breakers.state_code(d) == 2
    clock.now_s += 1.0
    breakers.record_health(d, True)
    assert breakers.state_code(d) == 1 and breakers.allows(d)
    breakers.on_dispatched(d)
    breakers.record_success(d)
    assert breakers.state_code(d) == 0


def test_retry_after_is_the_soonest_of_the_model_deployments() -> None:
    clock = Clock()
    breakers = CircuitBreakerBoard(clock=clock)
    a, b = deployment("a"), deployment("b")
    breakers.watch(a, BreakerSettings(consecutive_failures=1, cooldown_s=30.0))
    breakers.watch(b, BreakerSettings(consecutive_failures=1, cooldown_s=5.0))
    breakers.record_failure(a)
    breakers.record_failure(b)
    assert breakers.retry_after_s([a, b]) == pytest.approx(5.0)


def test_unwatched_deployments_are_always_allowed() -> None:
    breakers = CircuitBreakerBoard()
    d = deployment("d")
    for _ in range(50):
        breakers.record_failure(d)
    assert breakers.allows(d) and breakers.describe(d)["state"] == "disabled"


def test_rolling_counts_window() -> None:
    counts = RollingCounts(window_s=10.0)
    for second in range(20):
        counts.add(float(second), failed=second % 2 == 0)
    assert counts.totals(19.0) == (10, 5)
    assert counts.totals(100.0) == (0, 0)
    counts.clear()
    assert counts.totals(19.0) == (0, 0)


def test_allowed_is_allows_over_a_list_and_the_list_itself_while_all_are_closed() -> None:
    breakers, d, clock = board(consecutive_failures=1, min_requests=1000)
    others = [deployment(f"e{i}") for i in range(3)]
    for other in others:
        breakers.watch(other, BreakerSettings(cooldown_s=10.0))
    fleet = [d, *others]
    assert breakers.allowed(fleet) is fleet
    breakers.record_failure(d)  # open
    assert breakers.allowed(fleet) == others
    clock.now_s += 10.0  # half-open: the probe may go
    assert breakers.allowed(fleet) == fleet and breakers.allowed(fleet) is not fleet
    breakers.on_dispatched(d)  # the probe is out: nobody else goes to d
    assert breakers.allowed(fleet) == others
    breakers.record_failure(d)  # re-opened, still one circuit not closed
    assert breakers.allowed(fleet) == others
    clock.now_s += 10.0
    breakers.on_dispatched(d)
    breakers.record_success(d)  # closed again: back to no copy
    assert breakers.allowed(fleet) is fleet
    assert [x for x in fleet if breakers.allows(x)] == fleet
