"""What a person sees: a progress bar while the load runs and summary tables after.

The progress bar never sits on the request path: the load generator only bumps counters in a
:class:`~kvgate.bench.loadgen.LoadProgress`, and a separate task redraws four times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kvgate.bench.loadgen import LoadProgress

REFRESH_S = 0.25


@contextlib.asynccontextmanager
async def progress_bar(progress: LoadProgress, console: Console, label: str
                       ) -> AsyncIterator[None]:
    """Show ``progress`` as a bar (with rate, errors, in flight) for the duration of the block."""
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.1f} req/s  {task.fields[tokens]:>9.0f} tok/s"),
        TextColumn("in flight {task.fields[in_flight]:>4}  errors {task.fields[errors]}"),
        TimeElapsedColumn(), console=console, auto_refresh=False,
    )
    task_id = bar.add_task(label, total=progress.total, rate=0.0, tokens=0.0, in_flight=0,
                           errors=0)
    loop = asyncio.get_running_loop()
    started_s = loop.time()

    def redraw() -> None:
        elapsed_s = max(loop.time() - started_s, 1e-9)
        bar.update(task_id, completed=progress.completed, rate=progress.completed / elapsed_s,
                   tokens=progress.output_tokens / elapsed_s, in_flight=progress.in_flight,
                   errors=progress.errors)
        bar.refresh()

    async def tick() -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            redraw()

    with bar:
        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            redraw()


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}" if abs(value) >= 10 else f"{value:,.2f}{suffix}"
    return f"{value:,}{suffix}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary_tables(summary: Mapping[str, Any], title: str = "kvgate bench") -> list[Table]:
    """The summary as rich tables: headline numbers, latency percentiles, deployments."""
    requests, throughput = summary["requests"], summary["throughput"]
    head = Table(title=title, show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column(justify="right")
    errors = requests["errors"]
    kinds = ", ".join(f"{k} x{n}" for k, n in requests["error_kinds"].items())
    head.add_row("requests ok / sent", f"{requests['ok']:,} / {requests['sent']:,}")
    head.add_row("errors", f"{errors:,}" + (f" ({kinds})" if kinds else ""))
    head.add_row("wall time", _fmt(summary["wall_s"], " s"))
    head.add_row("throughput", _fmt(throughput["requests_per_s"], " req/s"))
    head.add_row("output tokens", _fmt(throughput["output_tokens_per_s"], " tok/s"))
    head.add_row("cache hit ratio", _ratio(summary["cache_hit_ratio"]))
    head.add_row("routing affinity", _ratio(summary["routing_affinity"]))

    latency = Table(title="latency (ms)", title_justify="left")
    latency.add_column("metric", style="bold")
    for column in ("p50", "p90", "p95", "p99", "mean", "max"):
        latency.add_column(column, justify="right")
    for key, name in (("ttft_ms", "TTFT"), ("latency_ms", "latency"), ("tpot_ms", "TPOT"),
                      ("dispatch_lag_ms", "dispatch lag")):
        dist = summary.get(key)
        if dist:
            latency.add_row(name, *(_fmt(dist[c]) for c in ("p50", "p90", "p95", "p99", "mean",
                                                             "max")))

    deployments = Table(title="per deployment (ms)", title_justify="left")
    deployments.add_column("deployment", no_wrap=True)
    for column in ("requests", "share", "tokens out", "TTFT p50", "latency p50"):
        deployments.add_column(column, justify="right")
    for name, share in summary["deployments"].items():
        deployments.add_row(name, f"{share['requests']:,}", _ratio(share["share"]),
                            f"{share['output_tokens']:,}", _fmt(share["ttft_p50_ms"]),
                            _fmt(share["latency_p50_ms"]))
    return [head, latency, deployments]


def print_summary(summary: Mapping[str, Any], console: Console,
                  title: str = "kvgate bench") -> None:
    for table in summary_tables(summary, title):
        console.print(table)


def comparison_table(comparison: Mapping[str, Mapping[str, Any]], title: str) -> Table:
    """One row per run, from :func:`kvgate.bench.api.headline` dicts keyed by label."""
    table = Table(title=title, title_justify="left")
    columns = (("run", None), ("ok", None), ("errors", None), ("TTFT p50", "ttft_p50_ms"),
               ("TTFT p99", "ttft_p99_ms"), ("latency p50", "latency_p50_ms"),
               ("latency p99", "latency_p99_ms"), ("req/s", "requests_per_s"),
               ("tok/s", "output_tokens_per_s"), ("affinity", "routing_affinity"),
               ("cache hits", "cache_hit_ratio"))
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "run" else "right")
    for label, row in comparison.items():
        cells = [label, f"{row['ok']:,}", f"{row['errors']:,}"]
        for name, key in columns[3:]:
            value = row[key]
            cells.append(_ratio(value) if name in ("affinity", "cache hits") else _fmt(value))
        table.add_row(*cells)
    return table
