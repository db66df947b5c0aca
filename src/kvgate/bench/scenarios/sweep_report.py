"""The sweep's comparisons, targets, tables and heat maps, all read from its result document.

Per (workload, KV ratio, load), each arm's figures are averaged over seeds (TTFT percentiles,
goodput, hit rate; refusals and lost requests summed). Each arm of the scorer under test
(role ``new``) is compared with the best *other* arm, i.e. every arm that is not the new scorer
in either mode: the lowest TTFT p95, the highest goodput. Targets (issue 13), per cell:

- ``ttft_p95``: new p95 <= 1.05 x the best other arm's;
- ``goodput``: new goodput >= 0.95 x the best other arm's;
- where one replica's KV cannot hold the working set but the fleet's can (ratio < 1 <=
  ratio x replicas): round robin's p95 >= 1.8 x new's (``vs_round_robin``) and the best
  baseline's (a load balancer knowing nothing of KV) >= 1.3 x new's (``vs_best_baseline``);
- ``no_refusals``: no arm in the cell refused or lost a request (no winning by shedding).

``python -m kvgate.bench.scenarios.sweep_report [--grids] RESULT.json`` prints the Markdown
tables (``--grids``: one KV/WS x load grid per workload, as the benchmark report shows).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvgate.bench.plots import HeatMap, plot_heat_maps

TTFT_SLACK = 1.05
GOODPUT_SLACK = 0.95
VS_ROUND_ROBIN = 1.8
VS_BEST_BASELINE = 1.3


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def summarize(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, KV ratio, load): each arm's figures averaged over seeds."""
    groups: dict[tuple[str, float, float], list[Mapping[str, Any]]] = {}
    for cell in cells:
        regime = cell["regime"]
        key = (cell["workload"], regime["kv_ratio_target"], regime["load_target"])
        groups.setdefault(key, []).append(cell)
    rows = []
    order = {name: i for i, name in enumerate(dict.fromkeys(c["workload"] for c in cells))}
    for (workload, kv_ratio, load), group in sorted(
            groups.items(), key=lambda item: (order[item[0][0]], item[0][1], item[0][2])):
        arms: dict[str, dict[str, Any]] = {}
        for name in group[0]["arms"]:
            runs = [cell["arms"][name] for cell in group]
            arms[name] = {
                "ttft_p50_ms": _mean(r["ttft_ms"]["p50"] if r["ttft_ms"] else None
                                     for r in runs),
                "ttft_p95_ms": _mean(r["ttft_ms"]["p95"] if r["ttft_ms"] else None
                                     for r in runs),
                "goodput_per_s": _mean(r["goodput_per_s"] for r in runs),
                "hit_rate": _mean(r["hit_rate"] for r in runs),
                "max_replica_share": _mean(r["max_replica_share"] for r in runs),
                "refused": sum(sum(r["refused"].values()) for r in runs),
                "lost": sum(r["lost"] for r in runs),
            }
        rows.append({"workload": workload, "kv_ratio": kv_ratio, "load": load,
                     "seeds": len(group), "kv_ratio_sized": _mean(
                         c["regime"]["kv_ratio"] for c in group), "arms": arms})
    return rows


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    if denominator == 0:
        return 1.0 if numerator == 0 else None
    return round(numerator / denominator, 4)


def compare(row: Mapping[str, Any], roles: Mapping[str, str], replicas: int
            ) -> list[dict[str, Any]]:
    """Each new-scorer arm of a summary row against the best other arm, with its checks."""
    arms = row["arms"]
    others = [name for name in arms if roles.get(name) != "new"]
    baselines = [name for name in others if roles.get(name) == "baseline"]
    p95 = {name: arms[name]["ttft_p95_ms"] for name in arms}
    clean = all(a["refused"] == 0 and a["lost"] == 0 for a in arms.values())
    partitioned = row["kv_ratio"] < 1 <= row["kv_ratio"] * replicas
    out = []
    for name in arms:
        if roles.get(name) != "new" or not others:
            continue
        new = arms[name]
        best_p95 = min(others, key=lambda n: p95[n] if p95[n] is not None else float("inf"))
        best_goodput = max(others, key=lambda n: arms[n]["goodput_per_s"] or 0.0)
        ttft_ratio = _ratio(new["ttft_p95_ms"], p95[best_p95])
        goodput_ratio = _ratio(new["goodput_per_s"], arms[best_goodput]["goodput_per_s"])
        checks: dict[str, bool] = {
            "ttft_p95": ttft_ratio is not None and ttft_ratio <= TTFT_SLACK,
            "goodput": goodput_ratio is not None and goodput_ratio >= GOODPUT_SLACK,
            "no_refusals": clean,
        }
        comparison: dict[str, Any] = {
            "arm": name, "best_ttft_arm": best_p95, "ttft_p95_ratio": ttft_ratio,
            "best_goodput_arm": best_goodput, "goodput_ratio": goodput_ratio,
        }
        if partitioned:
            vs_round_robin = _ratio(p95.get("round_robin"), new["ttft_p95_ms"])
            best_baseline = min((p95[n] for n in baselines if p95[n] is not None),
                                default=None)
            vs_baseline = _ratio(best_baseline, new["ttft_p95_ms"])
            comparison["round_robin_over_new_p95"] = vs_round_robin
            comparison["best_baseline_over_new_p95"] = vs_baseline
            checks["vs_round_robin"] = vs_round_robin is not None and (
                vs_round_robin >= VS_ROUND_ROBIN)
            checks["vs_best_baseline"] = vs_baseline is not None and (
                vs_baseline >= VS_BEST_BASELINE)
        comparison["checks"] = checks
        comparison["met"] = all(checks.values())
        out.append(comparison)
    return out


def comparisons(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (cell, new arm) comparison of a result document, with the cell's keys."""
    roles = document["arm_roles"]
    return [{"workload": row["workload"], "kv_ratio": row["kv_ratio"], "load": row["load"],
             **comparison}
            for row in document["summary"]
            for comparison in compare(row, roles, document["replicas"])]


def target_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Cells met / checked per arm and check, and the failing cells."""
    per_check: dict[str, dict[str, int]] = {}
    for row in rows:
        for check, met in row["checks"].items():
            counts = per_check.setdefault(f"{row['arm']}.{check}", {"met": 0, "checked": 0})
            counts["checked"] += 1
            counts["met"] += int(met)
    failed = [f"{r['workload']} kv={r['kv_ratio']} load={r['load']:.0%} {r['arm']}: "
              + ", ".join(c for c, met in r["checks"].items() if not met)
              for r in rows if not r["met"]]
    return {"all_met": not failed, "per_check": per_check, "failed": failed}


HEADERS = ("workload", "KV/WS", "load", "arm", "p95 ms", "best other (p95 ms)", "p95 ratio",
           "goodput ratio", "hit rate", "RR p95 / new", "checks")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(document: Mapping[str, Any]) -> list[list[str]]:
    summary = {(r["workload"], r["kv_ratio"], r["load"]): r for r in document["summary"]}
    rows = []
    for c in comparisons(document):
        arms = summary[(c["workload"], c["kv_ratio"], c["load"])]["arms"]
        best = arms[c["best_ttft_arm"]]
        failing = [name for name, met in c["checks"].items() if not met]
        rows.append([
            c["workload"], f"{c['kv_ratio']:g}", f"{c['load']:.0%}", c["arm"],
            _fmt(arms[c["arm"]]["ttft_p95_ms"], ",.0f"),
            f"{c['best_ttft_arm']} ({_fmt(best['ttft_p95_ms'], ',.0f')})",
            _fmt(c["ttft_p95_ratio"], ".2f"), _fmt(c["goodput_ratio"], ".2f"),
            _fmt(arms[c["arm"]]["hit_rate"], ".2f"),
            _fmt(c.get("round_robin_over_new_p95"), ".2f"),
            "ok" if not failing else "FAIL " + ",".join(failing),
        ])
    return rows


#: Console shorthand: arms, and the checks a cell failed.
_SHORT_ARMS = {"round_robin": "rr", "least_busy": "lb", "prefix_kv_aware_v1": "v1",
               "prefix_kv_aware": "prefix", "precise_kv": "precise"}
_SHORT_CHECKS = {"ttft_p95": "T", "goodput": "G", "vs_round_robin": "R",
                 "vs_best_baseline": "B", "no_refusals": "E"}


def print_tables(document: Mapping[str, Any], console: Any) -> None:
    """One narrow table per workload, then the targets met per check and the failures."""
    from rich import box
    from rich.table import Table

    rows = comparisons(document)
    summary = {(r["workload"], r["kv_ratio"], r["load"]): r["arms"] for r in document["summary"]}
    for workload in dict.fromkeys(r["workload"] for r in rows):
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), title_justify="left",
                      title=f"sweep, {workload}: new scorer vs the best other arm (sim. ms)")
        for header in ("KV/WS", "load", "arm", "p95", "best other", "p95 x", "gput x", "hit",
                       "rr/new", "failed"):
            table.add_column(header, no_wrap=True, justify="left" if header in (
                "arm", "best other", "failed") else "right")
        for c in (r for r in rows if r["workload"] == workload):
            arms = summary[(workload, c["kv_ratio"], c["load"])]
            best = c["best_ttft_arm"]
            table.add_row(
                f"{c['kv_ratio']:g}", f"{c['load']:.0%}", _SHORT_ARMS.get(c["arm"], c["arm"]),
                _fmt(arms[c["arm"]]["ttft_p95_ms"], ",.0f"),
                f"{_SHORT_ARMS.get(best, best)} {_fmt(arms[best]['ttft_p95_ms'], ',.0f')}",
                _fmt(c["ttft_p95_ratio"], ".2f"), _fmt(c["goodput_ratio"], ".2f"),
                _fmt(arms[c["arm"]]["hit_rate"], ".2f"),
                _fmt(c.get("round_robin_over_new_p95"), ".2f"),
                "".join(_SHORT_CHECKS.get(n, n) for n, met in c["checks"].items() if not met))
        console.print(table)
    console.print("failed: T TTFT p95 > 1.05x best other, G goodput < 0.95x, R round robin "
                  "p95 < 1.8x new's, B best baseline < 1.3x, E refusals or lost requests")
    for name, counts in document["targets"]["per_check"].items():
        console.print(f"  {name}: {counts['met']}/{counts['checked']} cells met")


def markdown(document: Mapping[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(document)]
    return "\n".join(lines)


_SHORT_ARMS = {"round_robin": "rr", "least_busy": "lb", "prefix_kv_aware_v1": "v1"}


def grids_markdown(document: Mapping[str, Any]) -> str:
    """Per workload, a KV/WS x load grid: each new arm's TTFT p95 over the best other arm's
    (new arms in the document's order, joined by " / "), then that arm and its p95 in ms."""
    summary = {(r["workload"], r["kv_ratio"], r["load"]): r for r in document["summary"]}
    by_cell: dict[tuple[str, float, float], list[Mapping[str, Any]]] = {}
    for comparison in comparisons(document):
        key = (comparison["workload"], comparison["kv_ratio"], comparison["load"])
        by_cell.setdefault(key, []).append(comparison)
    ratios, loads = document["grid"]["kv_ratios"], document["grid"]["loads"]
    new_arms = [arm for arm, role in document["arm_roles"].items() if role == "new"]
    out = []
    for workload in dict.fromkeys(key[0] for key in by_cell):
        out += [f"**{workload}**: TTFT p95 of {' / '.join(new_arms)} over the best other arm "
                "(which arm; its p95 ms)", "",
                "| KV/WS | " + " | ".join(f"{load:.0%} load" for load in loads) + " |",
                "|---|" + "---|" * len(loads)]
        for ratio in ratios:
            row = []
            for load in loads:
                cell = by_cell[(workload, ratio, load)]
                best = cell[0]["best_ttft_arm"]
                best_ms = summary[(workload, ratio, load)]["arms"][best]["ttft_p95_ms"]
                row.append(" / ".join(_fmt(c["ttft_p95_ratio"], ".2f") for c in cell)
                           + f" ({_SHORT_ARMS.get(best, best)} {best_ms:,.0f})")
            out.append(f"| {ratio:g} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def write_heat_maps(document: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Per workload: each new arm's TTFT p95 and goodput over the best other arm, a heat map
    of KV ratio x load; a framed cell failed one of its targets."""
    rows = comparisons(document)
    ratios = sorted({r["kv_ratio"] for r in rows})
    loads = sorted({r["load"] for r in rows})
    paths = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        panels = []
        for arm in dict.fromkeys(r["arm"] for r in rows if r["workload"] == workload):
            cells = {(r["kv_ratio"], r["load"]): r for r in rows
                     if r["workload"] == workload and r["arm"] == arm}
            panels.append([_panel(cells, ratios, loads, arm, key, higher)
                           for key, higher in (("ttft_p95_ratio", False),
                                               ("goodput_ratio", True))])
        if panels:
            paths.append(plot_heat_maps(panels, out_dir / f"sweep_{workload}.png",
                                        title=f"sweep, {workload}: new scorer / best other arm"))
    return paths


#: The checks a panel's frame shows: a TTFT panel frames cells failing any TTFT target.
_TTFT_CHECKS = ("ttft_p95", "vs_round_robin", "vs_best_baseline", "no_refusals")
_GOODPUT_CHECKS = ("goodput", "no_refusals")


def _panel(cells: Mapping[tuple[float, float], Mapping[str, Any]], ratios: Sequence[float],
           loads: Sequence[float], arm: str, key: str, higher_is_better: bool) -> HeatMap:
    shown = _GOODPUT_CHECKS if higher_is_better else _TTFT_CHECKS
    values: list[list[float | None]] = []
    failed = set()
    for r, kv_ratio in enumerate(ratios):
        line: list[float | None] = []
        for c, load in enumerate(loads):
            cell = cells.get((kv_ratio, load))
            line.append(None if cell is None else cell[key])
            if cell is not None and not all(cell["checks"].get(name, True) for name in shown):
                failed.add((r, c))
        values.append(line)
    what = "goodput" if higher_is_better else "TTFT p95"
    return HeatMap(title=f"{arm}: {what} / best other", row_labels=[f"{x:g}" for x in ratios],
                   column_labels=[f"{x:.0%}" for x in loads], values=values,
                   higher_is_better=higher_is_better, row_title="per-replica KV / working set",
                   column_title="offered load (of no-cache capacity)",
                   failed=frozenset(failed))


if __name__ == "__main__":
    import orjson

    loaded = orjson.loads(Path(sys.argv[-1]).read_bytes())
    print(grids_markdown(loaded) if "--grids" in sys.argv[1:-1] else markdown(loaded))
