"""The ``peers`` scenario's figures and tables: one router's numbers from a run and the
replicas' counters, medians over rounds, and the comparison table printed at the end."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median
from typing import Any

from kvgate.bench.api import BenchResult
from kvgate.bench.engine_counters import EngineCounters
from kvgate.bench.stats import distribution_ms


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def figures(result: BenchResult, engine: Sequence[EngineCounters], time_scale: float
            ) -> dict[str, Any]:
    """One router's numbers; times and rates in modelled GPU time."""
    summary = result.summary
    ok = [r for r in result.records if r.ok]
    ttft = distribution_ms(r.ttft_s * time_scale for r in ok if r.ttft_s is not None)
    latency = distribution_ms(r.latency_s * time_scale for r in ok)
    queries = sum(c.prefix_cache_queries for c in engine)
    hits = sum(c.prefix_cache_hits for c in engine)
    served = sum(c.requests for c in engine)
    shares = [_rounded(c.requests / served if served else None) for c in engine]
    throughput = summary["throughput"]
    return {
        "requests": summary["requests"]["ok"],
        "errors": summary["requests"]["errors"],
        "error_kinds": summary["requests"]["error_kinds"],
        "wall_s": summary["wall_s"],
        "ttft_ms": ttft,
        "latency_ms": latency,
        "requests_per_s": _rounded(throughput["requests_per_s"] / time_scale
                                   if throughput["requests_per_s"] else None, 3),
        "output_tokens_per_s": _rounded(throughput["output_tokens_per_s"] / time_scale
                                        if throughput["output_tokens_per_s"] else None, 1),
        "replica_hit_rate": _rounded(hits / queries if queries else None),
        "replica_hit_rate_by_replica": [_rounded(c.hit_rate) for c in engine],
        "replica_share": shares,
        "max_share": max((s for s in shares if s is not None), default=None),
        "preemptions": int(sum(c.preemptions for c in engine)),
    }


def median_figures(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median of each headline figure over a router's rounds, with every round kept.
    Per-replica shares stay per round: a herd lands on a different replica each time, and a
    median per replica would hide it (``max_share`` shows it)."""
    def middle(values: Sequence[float | None], digits: int = 4) -> float | None:
        present = [v for v in values if v is not None]
        return round(median(present), digits) if present else None

    return {
        "requests": min(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "ttft_ms": {q: middle([(r["ttft_ms"] or {}).get(q) for r in rounds], 1)
                    for q in ("p50", "p95", "p99")},
        "latency_ms": {q: middle([(r["latency_ms"] or {}).get(q) for r in rounds], 1)
                       for q in ("p50", "p95", "p99")},
        **{key: middle([r[key] for r in rounds])
           for key in ("requests_per_s", "output_tokens_per_s", "replica_hit_rate",
                       "max_share")},
        "per_round": list(rounds),
    }


def headline(numbers: dict[str, Any]) -> dict[str, Any]:
    ttft = numbers["ttft_ms"] or {}
    return {"ttft_p50_ms": ttft.get("p50"), "ttft_p95_ms": ttft.get("p95"),
            "requests_per_s": numbers["requests_per_s"],
            "output_tokens_per_s": numbers["output_tokens_per_s"],
            "replica_hit_rate": numbers["replica_hit_rate"], "max_share": numbers["max_share"],
            "errors": numbers["errors"]}


def print_tables(document: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for name, section in document["cases"].items():
        table = Table(title=f"peers / {name}: {section['title']} (median of "
                            f"{section['rounds']} rounds; modelled GPU time; TTFT in ms; hits: "
                            "the replicas' prefix-cache hit rate)",
                      title_justify="left")
        table.add_column("router/policy", no_wrap=True)
        for column in ("TTFT p50", "TTFT p95", "req/s", "tok/s", "hits", "max share", "err"):
            table.add_column(column, justify="right")
        for label, row in document["comparison"][name].items():
            def cell(value: Any, fmt: str) -> str:
                return "-" if value is None else format(value, fmt)
            table.add_row(label, cell(row["ttft_p50_ms"], ",.0f"), cell(row["ttft_p95_ms"], ",.0f"),
                          cell(row["requests_per_s"], ",.2f"),
                          cell(row["output_tokens_per_s"], ",.0f"),
                          cell(row["replica_hit_rate"], ".1%"), cell(row["max_share"], ".0%"),
                          str(row["errors"]))
        console.print(table)
    for label, error in document["unavailable"].items():
        console.print(f"[yellow]{label} unavailable[/]: {error.strip().splitlines()[0]}")
