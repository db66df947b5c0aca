"""Helpers for a KV-aware decision's explanation (``kvgate.route``): which candidates it names
and how token counts are written."""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.routing import floats

#: Candidates listed in a decision's explanation, at most.
EXPLAINED_CANDIDATES = 8


def shown_candidates(values: Sequence[float], pick: int, uniform: bool, *,
                     lowest: bool = False) -> Sequence[int]:
    """The candidates an explanation names, in candidate order: the chosen one and the
    ``EXPLAINED_CANDIDATES - 1`` best by ``values`` (largest, or with ``lowest`` smallest),
    earlier candidates first among equals. ``uniform``: every value is the same.

    NOTE: building an entry per replica dominated decisions on large fleets; the best few are
    found in one pass (:mod:`kvgate.routing.floats`).
    """
    if len(values) <= EXPLAINED_CANDIDATES:
        return range(len(values))
    best_count = EXPLAINED_CANDIDATES - 1
    if uniform:  # all equal: the first ones
        return sorted({pick, *range(best_count)})
    best = (floats.smallest if lowest else floats.largest)(values, best_count)
    return best if pick in best else sorted([pick, *best])


def tokens_value(value: float) -> float | int:
    """Whole tokens stay ints in the explanation; weighted or estimated sums keep one
    decimal."""
    if type(value) is int:  # matches are (the common case: no conversion)
        return value
    return int(value) if float(value).is_integer() else round(value, 1)
