"""What the tests that hold a C extension to its Python version compare: results to the bit,
and errors by their type."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from typing import Any


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type, negative zero told from zero, NaN equal to NaN (lists
    and arrays item by item, dicts key by key in the same order)."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, array):
        return (isinstance(b, array) and a.typecode == b.typecode
                and same(a.tolist(), b.tolist()))
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, float) and isinstance(b, float) and a == 0.0 == b:
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return type(a) is type(b) and (a == b or (a != a and b != b))


def outcome(function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """``("value", result)``, or ``("error", its type)`` for the errors bad input raises (a
    chunk of an odd shape: ``KeyError``; a value whose truth raises: its own error)."""
    try:
        return "value", function(*args)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError,
            RuntimeError) as error:
        return "error", type(error)
