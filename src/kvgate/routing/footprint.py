"""Each replica's KV working set as the router sees it: prefix tokens it was sent recently.

Every dispatch adds the tokens the chosen replica did not already hold (the request's uncached
tokens there) at the dispatch time; they leave the count once they are older than the
horizon, the time after which the affinity index also assumes them evicted. A replica whose
count plus a new prefix exceeds its KV capacity would have to evict something it was given
within the horizon to take that prefix, which the scorer charges as a future recompute.

NOTE: the count is of placements, not of reuse: a block reused every second but placed longer
ago than the horizon has left the count. Horizons are minutes and working sets that matter are
reused within them, so the undercount is of blocks that are cold in the count's own terms.
"""

from __future__ import annotations

import contextlib
import math
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from operator import sub
from typing import TYPE_CHECKING

from kvgate.routing import floats

if TYPE_CHECKING:
    from kvgate.routing.placed_shm import SharedPlacements

#: Time buckets per horizon: the bound on entries per replica.
BUCKETS = 64


class PlacedTokens:
    """Tokens placed on each of ``count`` replicas within the last ``horizon_s``."""

    __slots__ = ("_bucket_s", "_capacity", "_horizon_s", "_placed", "_reserved", "_shared",
                 "_totals", "least_headroom")

    def __init__(self, count: int, horizon_s: float,
                 shared: SharedPlacements | None = None) -> None:
        """``shared``: the counts the gateway's workers share (``kvgate run --workers N``):
        placements go there too, and each :meth:`expire` reads every worker's back."""
        self._horizon_s = horizon_s
        self._shared = shared
        # Placements within one bucket share an entry (and expire with its first one, at most
        # a bucket early): the table stays at BUCKETS entries per replica whatever the rate.
        self._bucket_s = horizon_s / BUCKETS
        #: Per replica, its buckets oldest first: [first placement's time, tokens] (a list:
        #: a placement into the newest bucket adds in place instead of building a tuple).
        self._placed: list[deque[list[float]]] = [deque() for _ in range(count)]
        #: (an array: a decision's passes read it in place, kvgate.routing.floats)
        self._totals = floats.zeros(count)
        self._capacity = [math.inf] * count
        #: min(capacity - placed) over the replicas, kept as placements come in (they only
        #: lower it) so that a decision need not take it over the fleet: recomputed only
        #: when placements expire or the sizes change.
        self.least_headroom = math.inf
        #: (position, tokens) placed by :meth:`reserve`, not yet dispatched.
        self._reserved: tuple[int, float] | None = None

    def add(self, position: int, tokens: float, now_s: float) -> None:
        if tokens <= 0:
            return
        placed = self._placed[position]
        if placed and now_s - (newest := placed[-1])[0] < self._bucket_s:
            newest[1] += tokens
        else:
            placed.append([now_s, tokens])
        totals = self._totals
        totals[position] += tokens
        if self._shared is not None:
            self._shared.add(position, tokens, now_s)
        headroom = self._capacity[position] - totals[position]
        if headroom < self.least_headroom:
            self.least_headroom = headroom

    @property
    def shared(self) -> bool:
        return self._shared is not None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Sharing: the other workers' placements are read, and held back, until the block
        ends (see :meth:`SharedPlacements.exclusive`); place within it with :meth:`reserve`."""
        if self._shared is None:
            yield
            return
        with self._shared.exclusive():
            self.sync()
            yield

    def reserve(self, position: int, tokens: float, now_s: float) -> None:
        """Place ``tokens`` now, at the decision (for the other workers to see at once); the
        dispatch that follows (:meth:`add_dispatched`) does not count them again."""
        self.add(position, tokens, now_s)
        self._reserved = (position, tokens)

    def add_dispatched(self, position: int, tokens: float, now_s: float) -> None:
        """A dispatch's placement, less what its decision reserved there."""
        reserved, self._reserved = self._reserved, None
        if reserved is not None and reserved[0] == position:
            tokens -= reserved[1]
        self.add(position, tokens, now_s)

    def expire(self, now_s: float) -> None:
        """Drop placements older than the horizon, on every replica."""
        oldest_s = now_s - self._horizon_s
        totals = self._totals
        for position, placed in enumerate(self._placed):
            while placed and placed[0][0] < oldest_s:
                totals[position] -= placed.popleft()[1]
            if not placed:
                totals[position] = 0.0  # no float drift once empty
        if self._shared is not None:  # every worker's placements, this one's included
            for position, total in self._shared.totals(now_s):
                totals[position] = total
        self._recompute_least()

    def sync(self) -> None:
        """Count what the other workers placed since the last :meth:`expire` (sharing only;
        :meth:`exclusive` calls it, for a cold decision)."""
        if self._shared is None:
            return
        totals, capacity = self._totals, self._capacity
        for position, tokens in self._shared.added_by_others():
            totals[position] += tokens
            self.least_headroom = min(self.least_headroom, capacity[position] - totals[position])

    def set_capacity(self, capacity: Sequence[float]) -> None:
        """Each replica's KV size in tokens (``inf``: unknown), for ``least_headroom``."""
        self._capacity = list(capacity)
        self._recompute_least()

    def _recompute_least(self) -> None:
        self.least_headroom = float(min(map(sub, self._capacity, self._totals), default=math.inf))

    def totals(self) -> array[float]:
        """Tokens per replica as of the last :meth:`expire` (shared: do not modify)."""
        return self._totals
