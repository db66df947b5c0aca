"""PNG plots of a run: latency CDFs and per-replica load; heat maps of ratios over a grid.

Uses matplotlib's object API (``Figure`` + the Agg canvas) rather than ``pyplot``, which keeps
no global figure registry and never needs a display. Import cost (~0.3 s) is paid only when
plots are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvgate.bench.request import RequestRecord
from kvgate.bench.stats import deployment_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A Figure made without pyplot renders PNG through Agg; no backend is selected globally.
    figure.savefig(path, format="png", dpi=110)
    return path


def plot_latency_cdfs(runs: Mapping[str, Sequence[RequestRecord]], path: Path, *,
                      title: str = "") -> Path:
    """CDFs of TTFT and end-to-end latency (ms) of successful requests, one line per run, so
    several runs (e.g. routing strategies) compare on one figure."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    ttft_axes, latency_axes = figure.subplots(1, 2)
    for label, records in runs.items():
        ok = [r for r in records if r.ok]
        for axes, values in (
            (ttft_axes, sorted(r.ttft_s * 1000 for r in ok if r.ttft_s is not None)),
            (latency_axes, sorted(r.latency_s * 1000 for r in ok)),
        ):
            if values:
                count = len(values)
                axes.step(values, [(i + 1) / count for i in range(count)], where="post",
                          label=f"{label} (n={count})")
    for axes, name in ((ttft_axes, "time to first token"), (latency_axes, "request latency")):
        axes.set_xlabel(f"{name} (ms)")
        axes.set_ylabel("fraction of requests")
        axes.set_ylim(0, 1.0)
        axes.grid(True, alpha=0.3)
        if axes.has_data():
            axes.legend(loc="lower right", fontsize="small")
        else:
            axes.text(0.5, 0.5, "no data (not streamed)", ha="center", va="center",
                      transform=axes.transAxes)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _bin_width_s(span_s: float, target_bins: int = 60) -> float:
    """A round bin width (1, 2 or 5 x 10^k seconds) giving about ``target_bins`` bins."""
    raw_s = max(span_s / target_bins, 1e-3)
    exponent = math.floor(math.log10(raw_s))
    for step in (1, 2, 5, 10):
        width_s = step * 10.0**exponent
        if width_s >= raw_s:
            return width_s
    return 10.0 ** (exponent + 1)


def mean_in_flight(records: Sequence[RequestRecord], bin_s: float
                   ) -> tuple[list[float], dict[str, list[float]]]:
    """Per deployment, the time-averaged number of requests in flight in each bin."""
    end_s = max((r.end_s for r in records), default=0.0)
    num_bins = int(end_s // bin_s) + 1
    load: dict[str, list[float]] = {}
    for record in records:
        row = load.setdefault(deployment_name(record), [0.0] * num_bins)
        first, last = int(record.start_s // bin_s), int(record.end_s // bin_s)
        for index in range(first, min(last, num_bins - 1) + 1):
            low_s, high_s = index * bin_s, (index + 1) * bin_s
            row[index] += (min(high_s, record.end_s) - max(low_s, record.start_s)) / bin_s
    return [(i + 0.5) * bin_s for i in range(num_bins)], dict(sorted(load.items()))


def plot_replica_load(records: Sequence[RequestRecord], path: Path, *,
                      bin_s: float | None = None, title: str = "") -> Path:
    """Requests in flight on each deployment over time, and each one's share of requests."""
    from matplotlib.figure import Figure

    ok = [r for r in records if r.ok]
    span_s = max((r.end_s for r in ok), default=0.0)
    times_s, load = mean_in_flight(ok, bin_s or _bin_width_s(span_s))
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    load_axes, share_axes = figure.subplots(1, 2, width_ratios=(2.2, 1))
    colours = [f"C{i % 10}" for i in range(len(load))]
    for (name, row), colour in zip(load.items(), colours, strict=True):
        load_axes.plot(times_s, row, label=name, linewidth=1.2, color=colour)
    load_axes.set_xlabel("time since start (s)")
    load_axes.set_ylabel("requests in flight (mean per bin)")
    load_axes.set_ylim(bottom=0)
    load_axes.grid(True, alpha=0.3)
    if load:
        load_axes.legend(loc="upper right", fontsize="small")
    names = list(load)
    totals = [sum(1 for r in ok if deployment_name(r) == n) for n in names]
    share_axes.barh(names, totals, color=colours)
    share_axes.set_xlabel("requests served")
    share_axes.invert_yaxis()
    for index, total in enumerate(totals):
        share_axes.text(total, index, f" {total / max(1, len(ok)):.0%}", va="center",
                        fontsize="small")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def write_plots(records: Sequence[RequestRecord], out_dir: Path, *, label: str = "run",
                prefix: str = "") -> list[Path]:
    """Both plots of one run into ``out_dir``; returns the files written."""
    stem = f"{prefix}_" if prefix else ""
    return [
        plot_latency_cdfs({label: records}, out_dir / f"{stem}latency_cdf.png", title=label),
        plot_replica_load(records, out_dir / f"{stem}replica_load.png", title=label),
    ]


@dataclass(frozen=True, slots=True)
class HeatMap:
    """One panel: ``values[row][column]`` ratios (None: no figure), coloured on a log scale
    around 1; ``higher_is_better`` makes ratios above 1 green. Cells in ``failed`` (row,
    column) get a black frame."""

    title: str
    row_labels: Sequence[str]
    column_labels: Sequence[str]
    values: Sequence[Sequence[float | None]]
    higher_is_better: bool
    row_title: str = ""
    column_title: str = ""
    failed: frozenset[tuple[int, int]] = frozenset()


def plot_heat_maps(panels: Sequence[Sequence[HeatMap]], path: Path, *, title: str = "") -> Path:
    """A grid of annotated heat maps (``panels[row][column]``; a panel's first row at the
    bottom), one shared colour scale: log2 of the ratio, clipped at 4x either way."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows, columns = len(panels), max(len(row) for row in panels)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    limit = 2.0  # log2: 4x
    image = None
    for row_index, row in enumerate(panels):
        for column_index in range(columns):
            axes = grid[row_index][column_index]
            if column_index >= len(row):
                axes.set_visible(False)
                continue
            panel = row[column_index]
            sign = 1.0 if panel.higher_is_better else -1.0
            shades = [[math.nan if v is None or v <= 0 else sign * math.log2(v) for v in line]
                      for line in panel.values]
            image = axes.imshow(shades, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto",
                                origin="lower")
            for r, line in enumerate(panel.values):
                for c, value in enumerate(line):
                    axes.text(c, r, "-" if value is None else f"{value:.2f}", ha="center",
                              va="center", fontsize="small")
                    if (r, c) in panel.failed:
                        axes.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False,
                                                 edgecolor="black", linewidth=2))
            axes.set_xticks(range(len(panel.column_labels)), panel.column_labels)
            axes.set_yticks(range(len(panel.row_labels)), panel.row_labels)
            axes.set_xlabel(panel.column_title)
            axes.set_ylabel(panel.row_title)
            axes.set_title(panel.title, fontsize="medium")
    if image is not None:
        bar = figure.colorbar(image, ax=grid, shrink=0.8)
        bar.set_ticks([-2, -1, 0, 1, 2], labels=["4x worse", "2x worse", "equal", "2x better",
                                                "4x better"])
    if title:
        figure.suptitle(title)
    return _save(figure, path)
