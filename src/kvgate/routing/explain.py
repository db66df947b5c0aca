"""Helpers for a KV-aware decision's explanation (``kvgate.route``): which candidates it names
and how token counts are written."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, islice, repeat
from operator import eq, gt, lt

#: Candidates listed in a decision's explanation, at most.
EXPLAINED_CANDIDATES = 8


def shown_candidates(values: Sequence[float], pick: int, uniform: bool, *,
                     lowest: bool = False) -> Sequence[int]:
    """The candidates an explanation names, in candidate order: the chosen one and the
    ``EXPLAINED_CANDIDATES - 1`` best by ``values`` (largest, or with ``lowest`` smallest),
    earlier candidates first among equals. ``uniform``: every value is the same.

    NOTE: building an entry per replica dominated decisions on large fleets. The same set as
    ``heapq.nlargest(k, range(n), key=values.__getitem__)``, found by C loops: everything
    better than the k-th best value, then the first candidates at it.
    """
    if len(values) <= EXPLAINED_CANDIDATES:
        return range(len(values))
    best_count = EXPLAINED_CANDIDATES - 1
    if uniform:  # all equal: the first ones
        return sorted({pick, *range(best_count)})
    kth = sorted(values, reverse=not lowest)[best_count - 1]
    everyone = range(len(values))
    better = list(compress(everyone, map(lt if lowest else gt, values, repeat(kth))))
    at = islice(compress(everyone, map(eq, values, repeat(kth))), best_count - len(better))
    return sorted({pick, *better, *at})


def tokens_value(value: float) -> float | int:
    """Whole tokens stay ints in the explanation; weighted or estimated sums keep one
    decimal."""
    return int(value) if float(value).is_integer() else round(value, 1)
