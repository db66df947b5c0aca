"""How far any router could go in a sweep cell: the best TTFT p95 any arm reached with *more*
KV per replica, same workload, load and requests.

Issue 13 asks, where one replica's KV cannot hold the working set but the fleet's can (KV /
working set < 1 <= that x replicas), for TTFT p95 at least 1.8x round robin's and 1.3x the best
baseline's (:mod:`kvgate.bench.scenarios.sweep_report`). Whether a cell allows that is not
obvious: a fleet whose KV is tight may have little to gain from any placement. This reads
what the sweep already ran. Giving every replica more KV takes nothing from a router: it can
make the same decisions, and each replica then holds at least what it held, so each request
computes no more and waits no longer. So the lowest p95 any arm reached in the same
(workload, load, seed's requests) at a larger KV ratio estimates the best this cell could
reach with any routing (``best_larger_p95_ms``), and

- ``round_robin_reach`` = round robin's p95 here / that: the most the 1.8x bar could read;
- ``baseline_reach`` = the best baseline's p95 here / that: the same for the 1.3x bar;
- ``..._reach_next``: the same against the next larger KV ratio only (usually twice this
  one), a tighter estimate than the largest, where the working set fits many times over.

A reach below the bar says no arm got there even with twice to sixteen times the KV. It is an
estimate, not a proof, in two ways: it is the best of the arms that ran, not of every policy
(a better router with more KV would lower it, and raise the reach); and "more KV never makes
an arm slower" is an assumption of the engine model, which ``slower_with_more_kv`` checks
against the sweep itself (arms whose p95 at a larger KV ratio is over ``MONOTONE_SLACK`` x
their p95 here).

``python -m kvgate.bench.scenarios.sweep_headroom RESULT.json`` prints the table (arms'
p95 averaged over seeds, as the report's grids) and the per-seed counts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvgate.bench.scenarios.sweep_report import (
    VS_BEST_BASELINE,
    VS_ROUND_ROBIN,
    comparisons,
    summarize,
)
from kvgate.bench.scenarios.sweep_run import ARMS, REPLICAS

#: An arm counts as slower with more KV beyond this factor (seed-to-seed noise is larger).
MONOTONE_SLACK = 1.05


def _p95(arms: Mapping[str, Mapping[str, Any]], name: str) -> float | None:
    arm = arms.get(name)
    return None if arm is None else arm["ttft_p95_ms"]


def headroom(summary: Sequence[Mapping[str, Any]], roles: Mapping[str, str],
             replicas: int) -> list[dict[str, Any]]:
    """One entry per summary row that issue 13's 1.8x / 1.3x bars check (see the module);
    ``summary`` as :func:`~kvgate.bench.scenarios.sweep_report.summarize` makes it."""
    baselines = [name for name, role in roles.items() if role == "baseline"]
    out = []
    for row in summary:
        kv_ratio = row["kv_ratio"]
        if not kv_ratio < 1 <= kv_ratio * replicas:
            continue
        larger = [other for other in summary
                  if other["workload"] == row["workload"] and other["load"] == row["load"]
                  and other["kv_ratio"] > kv_ratio]
        here = row["arms"]
        #: The best p95 any arm reached at each larger KV ratio.
        best_at: dict[float, float] = {}
        slower: list[str] = []
        for other in larger:
            ratio = other["kv_ratio"]
            for name, figures in other["arms"].items():
                p95 = figures["ttft_p95_ms"]
                if p95 is None:
                    continue
                best_at[ratio] = min(p95, best_at.get(ratio, p95))
                mine = _p95(here, name)
                if mine is not None and p95 > MONOTONE_SLACK * mine:
                    slower.append(f"{name}@{ratio:g}")
        best_larger = min(best_at.values(), default=None)
        # The next larger ratio alone (usually twice this KV): a tighter estimate than the
        # largest, where the working set fits every replica many times over.
        next_ratio = min((other["kv_ratio"] for other in larger), default=None)
        best_next = None if next_ratio is None else best_at.get(next_ratio)
        round_robin = _p95(here, "round_robin")
        baseline_p95s = [p for p in (_p95(here, name) for name in baselines) if p is not None]
        best_baseline = min(baseline_p95s) if baseline_p95s else None
        entry: dict[str, Any] = {
            "workload": row["workload"], "kv_ratio": kv_ratio, "load": row["load"],
            "larger_kv_ratios": sorted(other["kv_ratio"] for other in larger),
            "best_larger_p95_ms": best_larger,
            "round_robin_reach": _reach(round_robin, best_larger),
            "baseline_reach": _reach(best_baseline, best_larger),
            "next_kv_ratio": next_ratio,
            "best_next_p95_ms": best_next,
            "round_robin_reach_next": _reach(round_robin, best_next),
            "baseline_reach_next": _reach(best_baseline, best_next),
            "slower_with_more_kv": slower,
        }
        entry["round_robin_bar_reachable"] = _at_least(entry["round_robin_reach"],
                                                       VS_ROUND_ROBIN)
        entry["baseline_bar_reachable"] = _at_least(entry["baseline_reach"], VS_BEST_BASELINE)
        out.append(entry)
    return out


def _reach(numerator: float | None, best_larger: float | None) -> float | None:
    if numerator is None or best_larger is None or best_larger <= 0:
        return None
    return round(numerator / best_larger, 3)


def _at_least(reach: float | None, bar: float) -> bool | None:
    """None where there is nothing larger to read (the largest KV ratio, a missing arm)."""
    return None if reach is None else reach >= bar


def _fleet(document: Mapping[str, Any]) -> tuple[Mapping[str, str], int]:
    """The document's arm roles and replica count. The real-trace runs' documents name
    neither: the sweep's own arms and fleet."""
    return (document.get("arm_roles") or {arm.name: arm.role for arm in ARMS},
            document.get("replicas", REPLICAS))


def _seed_summaries(cells: Sequence[Mapping[str, Any]]
                    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Each seed and the summary of its cells alone."""
    for seed in sorted({cell["seed"] for cell in cells}):
        yield seed, summarize([cell for cell in cells if cell["seed"] == seed])


def document_headroom(document: Mapping[str, Any], *, per_seed: bool = False
                      ) -> list[dict[str, Any]]:
    """:func:`headroom` of a sweep result document: over its seeds' means, or (``per_seed``)
    each seed's cells on their own, each entry with its ``seed``."""
    roles, replicas = _fleet(document)
    cells = document["cells"]
    if not per_seed:
        return headroom(summarize(cells), roles, replicas)
    return [{"seed": seed, **entry} for seed, summary in _seed_summaries(cells)
            for entry in headroom(summary, roles, replicas)]


def per_seed_lines(document: Mapping[str, Any]) -> list[str]:
    """Per seed and new arm: the checked cells where each bar is within reach, and of those
    the ones the arm met (``sweep_report``'s checks on that seed's cells alone)."""
    roles, replicas = _fleet(document)
    lines = []
    for seed, summary in _seed_summaries(document["cells"]):
        within = {(e["workload"], e["kv_ratio"], e["load"]): e
                  for e in headroom(summary, roles, replicas)}
        rows = [r for r in comparisons({"arm_roles": roles, "replicas": replicas,
                                        "summary": summary})
                if (r["workload"], r["kv_ratio"], r["load"]) in within]
        for arm in dict.fromkeys(r["arm"] for r in rows):
            parts = []
            for check, flag, bar in (("vs_round_robin", "round_robin_bar_reachable",
                                      f"{VS_ROUND_ROBIN:g}x round robin"),
                                     ("vs_best_baseline", "baseline_bar_reachable",
                                      f"{VS_BEST_BASELINE:g}x the best baseline")):
                open_ = [r for r in rows if r["arm"] == arm
                         and within[(r["workload"], r["kv_ratio"], r["load"])][flag]]
                met = sum(r["checks"][check] for r in open_)
                parts.append(f"{bar} within reach in {len(open_)} of {len(within)} cells, "
                             f"met in {met}")
            lines.append(f"seed {seed}, {arm}: " + "; ".join(parts))
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(document: Mapping[str, Any]) -> str:
    """The seed-mean table and, per seed, how many checked cells each bar could reach."""
    lines = [
        "| workload | KV/WS | load | best p95 with more KV (ms) | RR p95 / that (bar "
        f"{VS_ROUND_ROBIN:g}) | best baseline p95 / that (bar {VS_BEST_BASELINE:g}) | "
        "the same with the next larger KV only | arms slower with more KV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in document_headroom(document):
        best = entry["best_larger_p95_ms"]
        lines.append(
            f"| {entry['workload']} | {entry['kv_ratio']:g} | {entry['load']:.0%} | "
            f"{'-' if best is None else f'{best:,.0f}'} | "
            f"{_fmt(entry['round_robin_reach'])}"
            f"{'' if entry['round_robin_bar_reachable'] is not False else ' (out of reach)'} | "
            f"{_fmt(entry['baseline_reach'])}"
            f"{'' if entry['baseline_bar_reachable'] is not False else ' (out of reach)'} | "
            f"{_fmt(entry['round_robin_reach_next'])} / {_fmt(entry['baseline_reach_next'])} "
            f"(at {entry['next_kv_ratio']:g}) | "
            f"{', '.join(entry['slower_with_more_kv']) or 'none'} |")
    lines.append("")
    lines.extend(f"- {line}" for line in per_seed_lines(document))
    return "\n".join(lines)


if __name__ == "__main__":
    import orjson

    print(markdown(orjson.loads(Path(sys.argv[-1]).read_bytes())))
