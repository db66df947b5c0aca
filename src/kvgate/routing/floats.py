"""Passes over per-candidate number lists, in C where the package was built with it.

The predicted-TTFT scorer keeps its cost model in Python (:mod:`kvgate.routing.ttft_scorer`);
what it does per candidate is a dozen passes like these over lists of floats: the costs, who
has no room, who is within the tie margin, the fill of the tied ones (and the prefix
strategy's matched tokens per deployment, ``prefix_sums``). In Python each pass
boxes a float or an int per candidate, which at 256 replicas was most of a decision (issue
15). ``_floats_native.c`` makes the same passes over the items read as doubles; the
functions below are the Python versions, which serve where no compiler built it and which
the tests hold the C ones to (``tests/routing/test_floats.py``). The extension also makes the
scorer's common decision in one call (``decide``, see ``TTFTScorer.choose``).

Items may be floats or ints; the results are the same numbers, compared as doubles (token
counts are far below 2**53). Lists are cut to the shortest, as :func:`map` does.

NOTE: the arithmetic returns ``array('d')``, not lists: at 256 replicas, a float object per
candidate per pass cost more than the pass (4.4 us against under 1 on a slow VM), and the
passes read an ``array('d')`` in place. An int item becomes a float there (the same value
below 2**53).
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Sequence
from itertools import accumulate, compress, repeat
from operator import add, ge, index, le, lt, mul
from typing import TypeVar

from kvgate.native import warn_missing

__all__ = ["NATIVE_AVAILABLE", "add_product", "add_scaled", "argmin", "largest",
           "maximum", "minimum", "multiply", "prefix_sums", "smallest", "warn_if_python",
           "where_ge", "where_le", "where_lt", "zeros"]

Number = TypeVar("Number", int, float)


def zeros(count: int) -> array[float]:
    """``count`` zeros as an ``array('d')``: per-replica figures the passes read in place."""
    return array("d", [0.0]) * count


def py_add_scaled(base: Sequence[float], rate: Sequence[float], x: float) -> array[float]:
    """``[b + r * x]``."""
    return array("d", map(add, base, map(mul, rate, repeat(x))))


def py_add_product(base: Sequence[float], rate: Sequence[float], x: Sequence[float],
                   scale: float) -> array[float]:
    """``[b + (r * xi) * scale]``."""
    return array("d", map(add, base, map(mul, map(mul, rate, x), repeat(scale))))


def py_multiply(a: Sequence[float], b: Sequence[float]) -> array[float]:
    """``[ai * bi]``."""
    return array("d", map(mul, a, b))


def py_minimum(values: Sequence[Number], among: Sequence[int] | None = None) -> Number:
    """The least item (the first of equals) of every item or of those ``among`` indexes."""
    return min(values if among is None else map(values.__getitem__, among))


def py_maximum(values: Sequence[Number], among: Sequence[int] | None = None) -> Number:
    """The greatest item (the first of equals) of every item or of those ``among`` indexes."""
    return max(values if among is None else map(values.__getitem__, among))


def py_argmin(values: Sequence[float]) -> int:
    """The first index of the least item."""
    return values.index(min(values))


def py_where_le(values: Sequence[float], limit: float,
                among: Sequence[int] | None = None) -> list[int]:
    """Indices ``i`` (of every item, or of ``among`` in its order) with ``values[i] <= limit``."""
    if among is None:
        return list(compress(range(len(values)), map(le, values, repeat(limit))))
    return list(compress(among, map(le, map(values.__getitem__, among), repeat(limit))))


def py_where_ge(values: Sequence[float], limit: float,
                among: Sequence[int] | None = None) -> list[int]:
    """Indices ``i`` (of every item, or of ``among`` in its order) with ``values[i] >= limit``."""
    if among is None:
        return list(compress(range(len(values)), map(ge, values, repeat(limit))))
    return list(compress(among, map(ge, map(values.__getitem__, among), repeat(limit))))


def py_where_lt(values: Sequence[float], limits: Sequence[float]) -> list[int]:
    """Indices ``i`` with ``values[i] < limits[i]``."""
    return list(compress(range(len(values)), map(lt, values, limits)))


def py_smallest(values: Sequence[float], k: int) -> list[int]:
    """The ``k`` least items' indices (earlier ones first among equals), in index order."""
    return sorted(heapq.nsmallest(k, range(len(values)), key=values.__getitem__))


def py_prefix_sums(values: Sequence[int], counts: Sequence[int]) -> list[int]:
    """``[sum(values[:k]) for k in counts]`` (``values`` ints); IndexError for a ``k`` outside
    ``0..len(values)``."""
    cumulative = list(accumulate(map(index, values), initial=0))
    out = []
    for k in map(index, counts):
        if not 0 <= k < len(cumulative):
            raise IndexError("list index out of range")
        out.append(cumulative[k])
    return out


def py_largest(values: Sequence[float], k: int) -> list[int]:
    """The ``k`` greatest items' indices (earlier ones first among equals), in index order."""
    return sorted(heapq.nlargest(k, range(len(values)), key=values.__getitem__))


try:
    from kvgate.routing._floats_native import (
        add_product,
        add_scaled,
        argmin,
        largest,
        maximum,
        minimum,
        multiply,
        prefix_sums,
        smallest,
        where_ge,
        where_le,
        where_lt,
    )
except ImportError:  # built without a C compiler: the Python versions serve
    NATIVE_AVAILABLE = False
    add_scaled, add_product, multiply = py_add_scaled, py_add_product, py_multiply
    minimum, maximum, argmin = py_minimum, py_maximum, py_argmin
    where_le, where_ge, where_lt = py_where_le, py_where_ge, py_where_lt
    smallest, largest, prefix_sums = py_smallest, py_largest, py_prefix_sums
else:
    NATIVE_AVAILABLE = True


def warn_if_python() -> None:
    """Log once per process when the C passes were not built (a scorer calls it at start)."""
    if not NATIVE_AVAILABLE:
        warn_missing("_floats_native", "the KV-aware scorer runs its per-candidate passes in "
                     "Python, the same decisions at about twice the CPU on large fleets")
