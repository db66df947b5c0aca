"""The scale scenario's tables (:mod:`kvgate.bench.scenarios.scale`): the terminal's and the
report's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

FLEET_HEADERS = ("replicas", "strategy", "hit rate", "TTFT p50 ms", "TTFT p95 ms",
                 "TTFT p99 ms", "busy max/mean", "requests max/mean", "decision CPU us p50",
                 "decision CPU us p99", "decision wall us p50", "index entries", "index MB")
#: The columns an 80-column terminal shows, by index into FLEET_HEADERS.
SHORT_FLEET_COLUMNS = {0: "n", 1: "strategy", 2: "hit", 3: "TTFT p50", 4: "p95", 5: "p99",
                       6: "busy", 8: "us p50", 9: "p99", 12: "index MB"}


def fleet_rows(document: dict[str, Any]) -> list[list[str]]:
    rows = []
    for fleet in document["fleets"]:
        for run in fleet["runs"]:
            router, ttft, load = run["router"], run["ttft_ms"], run["load"]
            cpu, wall = router["decision_cpu_us"] or {}, router["decision_us"] or {}
            used = router.get("index_bytes")
            rows.append([
                f"{run['replicas']}", run["strategy"], f"{run['hit_ratio']:.1%}",
                f"{ttft['p50']:,.0f}", f"{ttft['p95']:,.0f}", f"{ttft['p99']:,.0f}",
                f"{load['busy_max_over_mean']:.2f}", f"{load['requests_max_over_mean']:.2f}",
                f"{cpu.get('p50', 0):,.0f}", f"{cpu.get('p99', 0):,.0f}",
                f"{wall.get('p50', 0):,.0f}", f"{router.get('index_entries', 0):,}",
                "-" if used is None else f"{used / 1e6:.1f}",
            ])
    return rows


COST_HEADERS = ("replicas", "prompt tokens", "links", "cold CPU us p50", "warm CPU us p50",
                "shared CPU us p50", "beyond fingerprinting: cold / warm / shared",
                "shared wall us p50", "CPU in choose")
_KINDS = ("cold", "warm", "shared")


def cost_rows(document: dict[str, Any]) -> list[list[str]]:
    return [
        [f"{row['replicas']}", f"{row['prompt_tokens']:,}", f"{row['links']:,}",
         *(f"{row[kind]['cpu_us']['p50']:,.0f}" for kind in _KINDS),
         " / ".join(f"{row[kind]['beyond_fingerprint_cpu_us']['p50']:,.0f}" for kind in _KINDS),
         f"{row['shared']['wall_us']['p50']:,.0f}", f"{row['cpu_share']['choose']:.0%}"]
        for row in document["decision_cost"]
    ]


def print_tables(document: dict[str, Any], console: Any) -> None:
    from rich import box
    from rich.table import Table

    fleets = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0),
                   title="scale: routing quality (simulated ms) and router CPU us per "
                         "decision (measured here)", title_justify="left")
    for header in SHORT_FLEET_COLUMNS.values():
        fleets.add_column(header, justify="left" if header == "strategy" else "right",
                          no_wrap=True)
    for row in fleet_rows(document):
        fleets.add_row(*(row[i] for i in SHORT_FLEET_COLUMNS))
    console.print(fleets)
    costs = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), title_justify="left",
                  title="prefix_kv_aware: CPU microseconds per decision as prompts grow")
    for header in ("n", "tokens", "links", "cold", "warm", "shared", "beyond fp",
                   "shared wall", "in choose"):
        costs.add_column(header, justify="right", no_wrap=True)
    for row in cost_rows(document):
        costs.add_row(*row)
    console.print(costs)


def markdown_tables(document: dict[str, Any]) -> str:
    """Both tables in Markdown, for docs/BENCHMARK_REPORT.md."""
    def table(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
        return (["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
                + ["| " + " | ".join(row) + " |" for row in rows])

    return "\n".join([*table(FLEET_HEADERS, fleet_rows(document)), "",
                      *table(COST_HEADERS, cost_rows(document))])
