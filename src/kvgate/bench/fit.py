"""Least-squares fits and spreads for turning timing measurements into simulator constants.

    fit = least_squares([[1.0, n] for n in lengths], prefill_s)   # intercept, slope
    fit.coefficients   # (fixed seconds, seconds per token)
    spread([run1, run2, run3])   # median, min, max and relative spread of repeated figures

Small and dependency-free on purpose: a calibration fits a handful of points to two or three
unknowns, so the normal equations solved by Gaussian elimination are exact enough. Columns are
scaled to unit magnitude before solving, because a quadratic term (tokens squared, ~1e7) next to
an intercept (1) would otherwise lose most of the digits of the small coefficients.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class FitError(ValueError):
    """Too few points, or columns that do not determine the coefficients."""


@dataclass(frozen=True, slots=True)
class LinearFit:
    """``y ~ sum(coefficients[j] * row[j])`` and how well it fits."""

    coefficients: tuple[float, ...]
    #: Root mean square of the residuals, in y's unit.
    residual_rms: float
    #: 1 - residual sum of squares / total sum of squares (1 when y is constant and fitted).
    r_squared: float
    num_points: int

    def predict(self, row: Sequence[float]) -> float:
        return sum(c * x for c, x in zip(self.coefficients, row, strict=True))

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        return {**{name: c for name, c in zip(names, self.coefficients, strict=True)},
                "residual_rms": self.residual_rms, "r_squared": round(self.r_squared, 5),
                "num_points": self.num_points}


def least_squares(rows: Sequence[Sequence[float]], ys: Sequence[float]) -> LinearFit:
    """Ordinary least squares over the design ``rows`` (one list of column values per point).

    Raises :class:`FitError` with fewer points than unknowns or a singular design (e.g. every
    point at the same length, so intercept and slope cannot be told apart).
    """
    if len(rows) != len(ys):
        raise FitError(f"{len(rows)} rows but {len(ys)} values")
    if not rows:
        raise FitError("no points")
    width = len(rows[0])
    if len(rows) < width:
        raise FitError(f"{len(rows)} points cannot determine {width} coefficients")
    scale = [max(abs(row[j]) for row in rows) or 1.0 for j in range(width)]
    scaled = [[row[j] / scale[j] for j in range(width)] for row in rows]
    # Normal equations A^T A c = A^T y, augmented with the right-hand side.
    matrix = [[sum(r[i] * r[j] for r in scaled) for j in range(width)]
              + [sum(r[i] * y for r, y in zip(scaled, ys, strict=True))]
              for i in range(width)]
    solution = _solve(matrix, width)
    coefficients = tuple(c / s for c, s in zip(solution, scale, strict=True))
    residuals = [y - sum(c * x for c, x in zip(coefficients, row, strict=True))
                 for row, y in zip(rows, ys, strict=True)]
    ss_res = sum(r * r for r in residuals)
    mean_y = sum(ys) / len(ys)
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    r_squared = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res < 1e-24 else 0.0)
    return LinearFit(coefficients, math.sqrt(ss_res / len(ys)), r_squared, len(ys))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    """``y ~ intercept + slope * x``; coefficients are (intercept, slope)."""
    return least_squares([[1.0, float(x)] for x in xs], ys)


def _solve(matrix: list[list[float]], width: int) -> list[float]:
    """Gauss-Jordan elimination with partial pivoting on an augmented ``width`` system."""
    for col in range(width):
        pivot = max(range(col, width), key=lambda r: abs(matrix[r][col]))
        if abs(matrix[pivot][col]) < 1e-12:
            raise FitError("the points do not determine every coefficient (singular design)")
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        lead = matrix[col][col]
        matrix[col] = [v / lead for v in matrix[col]]
        for r in range(width):
            if r != col and matrix[r][col] != 0.0:
                factor = matrix[r][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[col], strict=True)]
    return [matrix[r][width] for r in range(width)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and (max - min) / |median| of repeated measurements of one figure."""
    if not values:
        raise FitError("no values")
    median = statistics.median(values)
    low, high = min(values), max(values)
    # A constant clamped to 0 in every round has no spread; otherwise it is unbounded.
    unbounded = 0.0 if high == low else math.inf
    relative = (high - low) / abs(median) if median else unbounded
    return {"median": median, "min": low, "max": high, "relative_spread": round(relative, 4),
            "n": len(values)}
