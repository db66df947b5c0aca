"""The ``overhead`` scenario's summaries and table, computed from the samples it measured.

Concurrency 1: percentiles per target and ``added`` (target percentile - ``direct``'s);
concurrency 32: medians over the interleaved rounds; then the headline row per target that the
table prints and the benchmark report quotes.
"""

from __future__ import annotations

from statistics import median
from typing import Any

from kvgate.bench.stats import percentile


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    result = {f"p{q}": round(percentile(ordered, q) * 1000, 4) for q in (50, 90, 99)}
    result["mean"] = round(sum(ordered) / len(ordered) * 1000, 4)
    result["count"] = len(ordered)
    return result


def with_added(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    table = {name: percentiles_ms(values) for name, values in samples.items() if values}
    base = table.get("direct")
    for name, row in table.items():
        if base is not None and name != "direct":
            row["added_p50"] = round(row["p50"] - base["p50"], 4)
            row["added_p99"] = round(row["p99"] - base["p99"], 4)
    return table


def _median_of(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return round(median(values), 1) if values else None


def summarise_c32(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {name: {"requests_per_s": _median_of(values, "requests_per_s"),
                   "cpu_us_per_request": _median_of(values, "cpu_us_per_request"),
                   "p50_ms": _median_of(values, "p50_ms"), "p99_ms": _median_of(values, "p99_ms"),
                   "non_2xx": sum(r["non_2xx"] for r in values),
                   "socket_errors": sum(r["socket_errors"] for r in values), "rounds": values}
            for name, values in rounds.items()}


def comparison(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The headline per target: what the table prints and the report quotes."""
    rows: dict[str, dict[str, Any]] = {}
    for name in document["targets"]:
        c1 = document["c1_blocking_ms"].get(name, {})
        st = document["c1_stream_ttft_ms"].get(name, {})
        c32 = document["c32_blocking"].get(name, {})
        c32s = document["c32_stream"].get(name, {})
        rows[name] = {
            "c1_p50_ms": c1.get("p50"), "added_p50_ms": c1.get("added_p50"),
            "added_p99_ms": c1.get("added_p99"),
            "added_p99_with_openers_ms": document.get("c1_blocking_with_openers_ms", {}).get(
                name, {}).get("added_p99"),
            "stream_ttft_p50_ms": st.get("p50"), "stream_ttft_added_p50_ms": st.get("added_p50"),
            "c32_requests_per_s": c32.get("requests_per_s"),
            "c32_stream_requests_per_s": c32s.get("requests_per_s"),
            "cpu_us_per_request": c32.get("cpu_us_per_request"),
            "stream_cpu_us_per_request": c32s.get("cpu_us_per_request"),
            # What one core would serve if the hop had it alone: unlike req/s, not lowered by
            # other work on a shared machine.
            "one_core_requests_per_s": (round(1e6 / c32["cpu_us_per_request"])
                                        if c32.get("cpu_us_per_request") else None),
            "rss_idle_mb": document["rss_mb"].get(name, {}).get("idle"),
        }
    return rows


def print_table(document: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="overhead: one hop in front of a zero-latency upstream. c=1: +p50, "
                        "+p99 = added ms (target - direct), TTFT = streamed time to first "
                        "content chunk, ms; c=32: requests/s, hop CPU per request and the "
                        "requests/s one core would serve at that cost",
                  title_justify="left")
    columns = (("target", None), ("+p50", "added_p50_ms"), ("+p99", "added_p99_ms"),
               ("TTFT", "stream_ttft_p50_ms"), ("+TTFT", "stream_ttft_added_p50_ms"),
               ("rps", "c32_requests_per_s"), ("rps stream", "c32_stream_requests_per_s"),
               ("CPU us/req", "cpu_us_per_request"), ("1-core rps", "one_core_requests_per_s"),
               ("RSS MB", "rss_idle_mb"))
    table.add_column("target", no_wrap=True)
    for title, _ in columns[1:]:
        table.add_column(title, justify="right")
    for name, row in document["comparison"].items():
        cells = [name]
        for _, key in columns[1:]:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:,.3f}" if abs(value) < 10
                         else f"{value:,.0f}")
        table.add_row(*cells)
    console.print(table)
    for name, error in {**document["unavailable"], **document["failed"]}.items():
        first_line = error.strip().splitlines()[0] if error.strip() else error
        console.print(f"[yellow]{name}[/]: {first_line}")
    console.print(f"load generator at c=32: {document['load_generator']}; load average "
                  f"{document['load_average_1m']['before']} -> "
                  f"{document['load_average_1m']['after']}")
