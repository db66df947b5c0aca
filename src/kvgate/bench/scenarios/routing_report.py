"""The routing scenario's targets, tables and plots, all read from its result document.

Targets are issue 4's: on the images case prefix_kv_aware must cut round robin's TTFT p95 at
least 1.8x, serve more requests per second, keep at least 98% affinity and split requests no
worse than 60/40; on the chat case it must beat both round robin and least busy on TTFT p95
with no replica above 1.5x the mean load. They are checked on the HTTP fleet's figures and on
the virtual run's. Everything here works from the JSON document (and records), so a written
result can be re-checked or re-tabulated without re-running it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgate.bench.request import RequestRecord

if TYPE_CHECKING:
    from rich.console import Console

BASELINE = "round_robin"
CHALLENGER = "prefix_kv_aware"
_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le,
}


@dataclass(frozen=True, slots=True)
class Target:
    case: str
    name: str
    requirement: str
    value: float | None
    op: str
    threshold: float

    @property
    def met(self) -> bool:
        return self.value is not None and _COMPARE[self.op](self.value, self.threshold)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def _p95(figures: Mapping[str, Any]) -> float | None:
    ttft = figures.get("ttft_ms")
    return None if ttft is None else float(ttft["p95"])


def check_targets(cases: Mapping[str, Any]) -> list[Target]:
    """The issue's targets for whichever cases are given (``document["cases"]`` for the fleet,
    ``document["virtual"]`` for the virtual run)."""
    targets: list[Target] = []
    images = cases.get("images")
    if images is not None:
        runs = images["strategies"]
        rr, kv = runs[BASELINE], runs[CHALLENGER]
        targets += [
            Target("images", "ttft_p95_speedup", "round_robin TTFT p95 / prefix_kv_aware's",
                   _ratio(_p95(rr), _p95(kv)), ">=", 1.8),
            Target("images", "throughput_gain", "prefix_kv_aware req/s / round_robin's",
                   _ratio(kv["requests_per_s"], rr["requests_per_s"]), ">", 1.0),
            Target("images", "affinity", "prefix_kv_aware routing affinity",
                   kv["affinity"], ">=", 0.98),
            Target("images", "max_replica_share", "prefix_kv_aware busiest replica's share",
                   kv["max_share"], "<=", 0.60),
        ]
    chat = cases.get("chat")
    if chat is not None:
        runs = chat["strategies"]
        kv = runs[CHALLENGER]
        targets += [
            Target("chat", "ttft_p95_vs_round_robin", "round_robin TTFT p95 / prefix_kv_aware's",
                   _ratio(_p95(runs[BASELINE]), _p95(kv)), ">", 1.0),
            Target("chat", "ttft_p95_vs_least_busy", "least_busy TTFT p95 / prefix_kv_aware's",
                   _ratio(_p95(runs["least_busy"]), _p95(kv)), ">", 1.0),
            Target("chat", "max_over_mean_load",
                   "prefix_kv_aware busiest replica's share / mean share",
                   kv["max_over_mean_load"], "<=", 1.5),
        ]
    return targets


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def rows(section: Mapping[str, Any]) -> list[list[str]]:
    """One row of display strings per strategy, in :data:`COLUMNS`: TTFT in modelled ms,
    requests and output tokens per modelled second, routing affinity, the replicas' prefix-cache
    hit rate, each replica's share of requests, failed requests."""
    out = []
    for strategy, f in section["strategies"].items():
        ttft = f["ttft_ms"] or {}
        shares = " / ".join(f"{share:.0%}" for share in f["replica_share"].values())
        out.append([
            strategy, _fmt(ttft.get("p50")), _fmt(ttft.get("p95")), _fmt(ttft.get("p99")),
            _fmt(f["requests_per_s"], 2), _fmt(f["output_tokens_per_s"]), _pct(f["affinity"]),
            _pct(f["replica_hit_rate"]), shares, f"{f['errors']:,}",
        ])
    return out


COLUMNS = ("strategy", "TTFT p50", "TTFT p95", "TTFT p99", "req/s", "tok/s", "affinity",
           "hit rate", "per replica", "err")


_SOURCES = (("cases", "targets", "fleet over HTTP: client wall time x {scale:g}"),
            ("virtual", "targets_virtual", "engine model in virtual time"))


def print_report(document: Mapping[str, Any], console: Console) -> None:
    from rich.table import Table

    for key, targets_key, how in _SOURCES:
        for name, section in document[key].items():
            how_here = how.format(scale=section["fleet"]["time_scale"])
            table = Table(title=f"routing / {name}: {section['title']} ({how_here}; "
                                "TTFT in modelled ms)", title_justify="left")
            for column in COLUMNS:
                table.add_column(column, justify="left" if column == "strategy" else "right")
            for row in rows(section):
                table.add_row(*row)
            console.print(table)
        targets = Table(title=f"targets ({key})", title_justify="left")
        for column in ("case", "target", "value", "needs", "met"):
            targets.add_column(column)
        for target in document[targets_key]:
            targets.add_row(target["case"], target["requirement"], _fmt(target["value"], 3),
                            f"{target['op']} {target['threshold']:g}",
                            "[green]yes[/]" if target["met"] else "[red]no[/]")
        console.print(targets)


def markdown_tables(document: Mapping[str, Any], source: str = "cases") -> str:
    """The per-case tables and the targets in Markdown, for docs/BENCHMARK_REPORT.md;
    ``source`` is ``cases`` (the HTTP fleet) or ``virtual``."""
    targets_key = "targets" if source == "cases" else "targets_virtual"
    lines: list[str] = []
    for name, section in document[source].items():
        lines += [f"**{name}**: {section['title']}", "",
                  "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join("---" if c == "strategy" else "---:" for c in COLUMNS) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows(section)]
        lines.append("")
    lines += ["| case | target | value | needs | met |", "|---|---|---:|---|---|"]
    for t in document[targets_key]:
        lines.append(f"| {t['case']} | {t['requirement']} | {_fmt(t['value'], 3)} | "
                     f"{t['op']} {t['threshold']:g} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def write_plots(document: Mapping[str, Any],
                fleet_records: Mapping[str, Mapping[str, Sequence[RequestRecord]]],
                virtual_records: Mapping[str, Mapping[str, Sequence[RequestRecord]]],
                out_dir: Path) -> list[Path]:
    """Per case and run (fleet, virtual): TTFT/latency CDFs of every strategy (records in
    modelled seconds), and a summary of bars."""
    from kvgate.bench.plots import plot_latency_cdfs

    paths = []
    for key, records_by_case, suffix in (("cases", fleet_records, ""),
                                         ("virtual", virtual_records, "_virtual")):
        for name, curves in records_by_case.items():
            section = document[key][name]
            scale = section["fleet"]["time_scale"]
            how = (f"fleet over HTTP, modelled time = wall x {scale:g}" if key == "cases"
                   else "engine model, virtual time")
            paths.append(plot_latency_cdfs(
                curves, out_dir / f"routing_{name}{suffix}_latency_cdf.png",
                title=f"routing / {name}: {section['title']} ({how})",
            ))
            paths.append(_plot_summary(section, out_dir / f"routing_{name}{suffix}_summary.png",
                                       f"routing / {name}: {section['title']} ({how})"))
    return paths


def _plot_summary(section: Mapping[str, Any], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    strategies = list(section["strategies"])
    figs = [section["strategies"][s] for s in strategies]
    colours = [f"C{i}" for i in range(len(strategies))]
    positions = range(len(strategies))
    figure = Figure(figsize=(14, 3.9), layout="constrained")
    ttft_ax, tput_ax, aff_ax, share_ax = figure.subplots(1, 4)

    width = 0.38
    for offset, key, hatch in ((-width / 2, "p50", ""), (width / 2, "p95", "//")):
        values = [(f["ttft_ms"] or {}).get(key, 0.0) for f in figs]
        ttft_ax.bar([p + offset for p in positions], values, width, color=colours, hatch=hatch,
                    edgecolor="black", linewidth=0.4, label=f"TTFT {key}")
    ttft_ax.set_title("TTFT, ms: p50 / p95 (hatched)", fontsize="medium")
    tput_ax.bar(positions, [f["requests_per_s"] or 0.0 for f in figs], color=colours)
    tput_ax.set_title("requests per second", fontsize="medium")
    for offset, key, hatch in ((-width / 2, "affinity", ""),
                               (width / 2, "replica_hit_rate", "//")):
        aff_ax.bar([p + offset for p in positions], [f[key] or 0.0 for f in figs], width,
                   color=colours, hatch=hatch, edgecolor="black", linewidth=0.4)
    aff_ax.set_ylim(0, 1.05)
    aff_ax.set_title("affinity / prefix-cache hit rate (hatched)", fontsize="medium")
    replicas = list(figs[0]["replica_share"]) if figs else []
    bottoms = [0.0] * len(figs)
    for index, replica in enumerate(replicas):
        shares = [f["replica_share"].get(replica, 0.0) for f in figs]
        share_ax.bar(positions, shares, bottom=bottoms, color=f"C{index + 4}",
                     edgecolor="white", linewidth=0.6, label=replica)
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    share_ax.set_ylim(0, 1.0)
    share_ax.set_title("share of requests per replica", fontsize="medium")
    share_ax.legend(fontsize="x-small", loc="lower right")
    for axes in (ttft_ax, tput_ax, aff_ax, share_ax):
        axes.set_xticks(list(positions), [s.replace("_", "\n") for s in strategies],
                        fontsize="small")
        axes.grid(True, axis="y", alpha=0.3)
    figure.suptitle(title + "; times and rates in modelled GPU time")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    return path



if __name__ == "__main__":
    # The report's tables from a written result, for docs/BENCHMARK_REPORT.md:
    #   python -m kvgate.bench.scenarios.routing_report benchmarks/results/routing.json
    import json
    import sys

    with open(sys.argv[1]) as file:
        written = json.load(file)
    for table_source in ("cases", "virtual"):
        print(markdown_tables(written, table_source))
