"""Circuit breaking: eject a deployment that keeps failing, for a cooldown, then probe it.

States per deployment::

    closed --(N failures in a row, or error rate over the window)--> open
    open --(cooldown_s passes, or an active health check passes)--> half-open
    half-open --(the one probe succeeds)--> closed
    half-open --(the probe fails)--> open (a fresh cooldown)

Every method is synchronous and does no I/O, so a state change can never be interrupted
half-way by a cancelled request. Time-driven transitions (open -> half-open) happen lazily when
a circuit is next looked at, so nothing runs in the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from kvgate.config.schema import BreakerSettings
from kvgate.core.deployment import Deployment

logger = logging.getLogger("kvgate.breaker")


class BreakerBoard(Protocol):
    """Per-deployment circuit state. All methods are synchronous and cheap (no I/O)."""

    def allows(self, deployment: Deployment) -> bool:
        """True when an attempt may go to ``deployment`` now (closed, or a half-open probe).

        Has no side effect: asking does not take the probe, ``on_dispatched`` does.
        """
        ...

    def allowed(self, deployments: Sequence[Deployment]) -> Sequence[Deployment]:
        """Those of ``deployments`` that :meth:`allows`, in order: ``deployments`` itself
        (no copy) while every circuit is closed, which is what routing sees nearly always."""
        ...

    def on_dispatched(self, deployment: Deployment) -> None:
        """An attempt is committed to ``deployment``; a half-open circuit admits no other
        until this one is recorded (or, if it never is, until its probe lease lapses)."""
        ...

    def record_success(self, deployment: Deployment) -> None: ...

    def record_failure(self, deployment: Deployment) -> None:
        """A retryable failure (connection, timeout, 429, 5xx) of an attempt at ``deployment``."""
        ...

    def record_health(self, deployment: Deployment, healthy: bool) -> None:
        """The result of an active health check; a pass ends an open circuit's cooldown."""
        ...

    def state_code(self, deployment: Deployment) -> int:
        """0 closed, 1 half-open, 2 open (the metric's encoding)."""
        ...

    def retry_after_s(self, deployments: list[Deployment]) -> float:
        """Seconds until the first of ``deployments`` may be tried again."""
        ...

    def describe(self, deployment: Deployment) -> dict[str, object]:
        """State for /admin/stats: ``state`` and ``cooldown_left_s`` at least."""
        ...


class NoBreaker:
    """Every deployment always allowed: used when circuit breaking is switched off."""

    def allows(self, deployment: Deployment) -> bool:
        return True

    def allowed(self, deployments: Sequence[Deployment]) -> Sequence[Deployment]:
        return deployments

    def on_dispatched(self, deployment: Deployment) -> None:
        return None

    def record_success(self, deployment: Deployment) -> None:
        return None

    def record_failure(self, deployment: Deployment) -> None:
        return None

    def record_health(self, deployment: Deployment, healthy: bool) -> None:
        return None

    def state_code(self, deployment: Deployment) -> int:
        return 0

    def retry_after_s(self, deployments: list[Deployment]) -> float:
        return 0.0

    def describe(self, deployment: Deployment) -> dict[str, object]:
        return {"state": "closed", "cooldown_left_s": 0.0}


CLOSED: Final = 0
HALF_OPEN: Final = 1
OPEN: Final = 2
_STATE_NAMES: Final = ("closed", "half_open", "open")


class RollingCounts:
    """Attempts and failures over the last ``window_s``, in a fixed ring of time buckets.

    O(buckets) per update and no allocation, whatever the request rate; a deque of events
    would grow with traffic. The window slides one bucket (a tenth of it) at a time.
    """

    __slots__ = ("_bucket_s", "_epochs", "_failures", "_requests")

    def __init__(self, window_s: float, num_buckets: int = 10) -> None:
        self._bucket_s = window_s / num_buckets
        self._epochs = [-1] * num_buckets
        self._requests = [0] * num_buckets
        self._failures = [0] * num_buckets

    def add(self, now_s: float, *, failed: bool) -> None:
        epoch = int(now_s // self._bucket_s)
        slot = epoch % len(self._epochs)
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._requests[slot] = 0
            self._failures[slot] = 0
        self._requests[slot] += 1
        if failed:
            self._failures[slot] += 1

    def totals(self, now_s: float) -> tuple[int, int]:
        """(attempts, failures) in the window ending now."""
        oldest_epoch = int(now_s // self._bucket_s) - len(self._epochs) + 1
        requests = failures = 0
        for slot, epoch in enumerate(self._epochs):
            if epoch >= oldest_epoch:
                requests += self._requests[slot]
                failures += self._failures[slot]
        return requests, failures

    def clear(self) -> None:
        for slot in range(len(self._epochs)):
            self._epochs[slot] = -1


class Circuit:
    """One deployment's breaker. The board drives it; it never reads the clock itself."""

    __slots__ = (
        "consecutive_failures", "open_until_s", "probe_until_s", "settings", "state",
        "times_opened", "window",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state: int = CLOSED
        self.consecutive_failures = 0
        self.window = RollingCounts(settings.window_s)
        #: While open: when the cooldown ends.
        self.open_until_s = 0.0
        #: While half-open: when the probe in flight stops blocking others (0 = none out).
        self.probe_until_s = 0.0
        self.times_opened = 0

    def refresh(self, now_s: float) -> int:
        if self.state == OPEN and now_s >= self.open_until_s:
            self.state = HALF_OPEN
            self.probe_until_s = 0.0
        return self.state

    def should_open(self, now_s: float) -> bool:
        settings = self.settings
        if self.consecutive_failures >= settings.consecutive_failures:
            return True
        requests, failures = self.window.totals(now_s)
        return requests >= settings.min_requests and failures >= settings.error_rate * requests

    def open(self, now_s: float) -> None:
        self.state = OPEN
        self.open_until_s = now_s + self.settings.cooldown_s
        self.probe_until_s = 0.0
        self.times_opened += 1

    def close(self) -> None:
        self.state = CLOSED
        self.consecutive_failures = 0
        self.probe_until_s = 0.0
        # A fresh start: failures from before the ejection say nothing about now.
        self.window.clear()


class CircuitBreakerBoard:
    """Implements :class:`BreakerBoard` with one :class:`Circuit` per watched deployment.

    Deployments never passed to :meth:`watch` (their model turned breaking off) are always
    allowed.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._circuits: dict[Deployment, Circuit] = {}
        #: Circuits open or half-open: while none is, every deployment is allowed without
        #: looking at each (an attempt over 64 deployments asked 64 circuits).
        self._not_closed = 0

    def watch(self, deployment: Deployment, settings: BreakerSettings) -> None:
        previous = self._circuits.get(deployment)
        if previous is not None and previous.state != CLOSED:
            self._not_closed -= 1
        self._circuits[deployment] = Circuit(settings)

    def allowed(self, deployments: Sequence[Deployment]) -> Sequence[Deployment]:
        if not self._not_closed:
            return deployments
        return [d for d in deployments if self.allows(d)]

    def allows(self, deployment: Deployment) -> bool:
        circuit = self._circuits.get(deployment)
        if circuit is None or circuit.state == CLOSED:
            return True
        now_s = self._clock()
        state = circuit.refresh(now_s)
        return state == HALF_OPEN and now_s >= circuit.probe_until_s

    def on_dispatched(self, deployment: Deployment) -> None:
        circuit = self._circuits.get(deployment)
        if circuit is None or circuit.state == CLOSED:
            return
        now_s = self._clock()
        if circuit.refresh(now_s) == HALF_OPEN:
            # NOTE: the lease bounds how long a probe that is never recorded (its client went
            # away mid-request) can keep the circuit half-open with nothing let through.
            circuit.probe_until_s = now_s + circuit.settings.cooldown_s
            logger.info("circuit of %s half-open: probing", deployment.id)

    def record_success(self, deployment: Deployment) -> None:
        circuit = self._circuits.get(deployment)
        if circuit is None:
            return
        if circuit.state == CLOSED:
            circuit.consecutive_failures = 0
            circuit.window.add(self._clock(), failed=False)
        elif circuit.refresh(self._clock()) == HALF_OPEN:
            circuit.close()
            self._not_closed -= 1
            logger.info("circuit of %s closed: probe succeeded", deployment.id)
        # Still open: a straggler sent before the circuit opened; the probe decides.

    def record_failure(self, deployment: Deployment) -> None:
        circuit = self._circuits.get(deployment)
        if circuit is None:
            return
        now_s = self._clock()
        if circuit.state == CLOSED:
            circuit.consecutive_failures += 1
            circuit.window.add(now_s, failed=True)
            if circuit.should_open(now_s):
                requests, failures = circuit.window.totals(now_s)
                circuit.open(now_s)
                self._not_closed += 1
                logger.warning(
                    "circuit of %s opened for %.1fs: %d consecutive failures, %d of %d "
                    "attempts failed in the window",
                    deployment.id, circuit.settings.cooldown_s, circuit.consecutive_failures,
                    failures, requests,
                )
        elif circuit.refresh(now_s) == HALF_OPEN:
            circuit.open(now_s)
            logger.warning(
                "circuit of %s re-opened for %.1fs: probe failed",
                deployment.id, circuit.settings.cooldown_s,
            )

    def record_health(self, deployment: Deployment, healthy: bool) -> None:
        # NOTE: a failed check never opens or extends an ejection: a health endpoint that is
        # down or forbidden while completions work (hosted APIs, proxies) must not keep a
        # working deployment out. Only real attempts eject; checks can only bring back early.
        circuit = self._circuits.get(deployment)
        if circuit is None or not healthy:
            return
        if circuit.refresh(self._clock()) == OPEN:
            circuit.state = HALF_OPEN
            circuit.probe_until_s = 0.0
            logger.info("circuit of %s half-open: health check passed", deployment.id)

    def state_code(self, deployment: Deployment) -> int:
        circuit = self._circuits.get(deployment)
        if circuit is None:
            return CLOSED
        return circuit.refresh(self._clock())

    def retry_after_s(self, deployments: list[Deployment]) -> float:
        now_s = self._clock()
        soonest_s = float("inf")
        for deployment in deployments:
            circuit = self._circuits.get(deployment)
            if circuit is None:
                return 0.0
            state = circuit.refresh(now_s)
            if state == CLOSED:
                return 0.0
            until_s = circuit.open_until_s if state == OPEN else circuit.probe_until_s
            soonest_s = min(soonest_s, max(0.0, until_s - now_s))
        return 0.0 if soonest_s == float("inf") else soonest_s

    def describe(self, deployment: Deployment) -> dict[str, object]:
        circuit = self._circuits.get(deployment)
        if circuit is None:
            return {"state": "disabled", "cooldown_left_s": 0.0}
        now_s = self._clock()
        state = circuit.refresh(now_s)
        requests, failures = circuit.window.totals(now_s)
        return {
            "state": _STATE_NAMES[state],
            "cooldown_left_s": round(max(0.0, circuit.open_until_s - now_s), 3)
            if state == OPEN else 0.0,
            "probe_in_flight": state == HALF_OPEN and now_s < circuit.probe_until_s,
            "consecutive_failures": circuit.consecutive_failures,
            "window_requests": requests,
            "window_failures": failures,
            "times_opened": circuit.times_opened,
        }
