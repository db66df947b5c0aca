"""Helpers for a KV-aware decision's explanation (``kvgate.route``): which candidates it names
and how token counts are written."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kvgate.routing import floats

__all__ = ["EXPLAINED_CANDIDATES", "explained", "ms", "py_explained", "shown_candidates",
           "tokens_value"]

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
    decimal (half to even on the tenths, as :func:`ms`)."""
    if type(value) is int:  # matches are (the common case: no conversion)
        return value
    value = float(value)
    if not math.isfinite(value):
        return value
    if value.is_integer():
        return int(value)
    return round(value * 10.0) / 10.0


def ms(seconds: float) -> float:
    """Seconds as milliseconds to the microsecond, for the explanation.

    NOTE: ``round(x * 1e6) / 1e3``, not ``round(x * 1e3, 3)``: the same figure but for
    halves below the microsecond, at half the cost (``round`` with digits formats the number
    as decimal text), and what the C version can compute exactly alike (``rint``).
    """
    scaled = seconds * 1e6
    return round(scaled) / 1e3 if math.isfinite(scaled) else seconds * 1e3


def py_explained(shown: Sequence[int], candidates: Sequence[Any], matched: Sequence[float],
                 uncached: Sequence[float], costs: Sequence[float]
                 ) -> dict[str, dict[str, Any]]:
    """The explanation's entry of each candidate in ``shown`` (in that order), by its
    ``id``: its matched and uncached tokens and its predicted cost. The Python version of
    ``_floats_native.explained``, which builds the same dicts (at 256 replicas building
    them here was about 7 of a decision's 56 us beyond its fingerprint)."""
    return {candidates[i].id: {"matched_tokens": tokens_value(matched[i]),
                               "uncached_tokens": tokens_value(uncached[i]),
                               "predicted_cost_ms": ms(costs[i])} for i in shown}


try:
    from kvgate.routing._floats_native import explained
except ImportError:  # built without a C compiler (floats.warn_if_python says so)
    explained = py_explained
