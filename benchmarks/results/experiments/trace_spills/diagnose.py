"""Why the scorer's spills lose on the sweep's trace cells where KV is plentiful.

python diagnose.py WORKLOAD SEED LOAD KV_RATIO [ARM ...] (virtual time; default arms
prefix_kv_aware and prefix_kv_aware_v1): every routed request's outcome label (cold / hit /
spill), the pick's predicted TTFT and its simulated TTFT, joined by request id. Per arm and
outcome: count, the correlation and mean absolute error of predicted against observed TTFT,
their means, the observed p95 and how many of the arm's slowest 5% the outcome has; per arm,
for all requests and the slowest 5%: time queued before the first schedule, from there to
the first token, the engine's cached share, preemptions and prompt size.
"""

from __future__ import annotations

import sys
from typing import Any

from kvgate.bench import virtual_fleet
from kvgate.bench.scenarios.sweep import Task, run_task
from kvgate.bench.scenarios.sweep_workloads import sweep_workloads

decisions: dict[str, dict[str, tuple[str, float, str]]] = {}
_route = virtual_fleet.VirtualFleet.route
fleets: list[Any] = []


async def _logged_route(self: Any, body: bytes, request_id: str) -> int:
    if self not in fleets:
        fleets.append(self)
    seen: dict[str, Any] = {}
    choose = self.strategy.choose

    def spy(call: Any, candidates: Any) -> Any:
        decision = choose(call, candidates)
        seen["explanation"] = decision.explanation
        return decision

    self.strategy.choose = spy
    try:
        index = await _route(self, body, request_id)
    finally:
        del self.strategy.choose
    explanation = seen.get("explanation") or {"outcome": "-"}
    decisions.setdefault(self.strategy.name, {})[request_id] = (
        explanation.get("outcome", "?"), float(explanation.get("predicted_ttft_ms") or 0.0),
        str(index))
    return index


def main(argv: list[str]) -> None:
    virtual_fleet.VirtualFleet.route = _logged_route  # type: ignore[method-assign]
    workload, seed, load, kv_ratio = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    arms = tuple(argv[4:]) or ("prefix_kv_aware", "prefix_kv_aware_v1")
    names = [w.name for w in sweep_workloads(False)]
    cells = run_task(Task(False, names.index(workload), seed, load, (kv_ratio,), arms))
    for fleet in fleets:
        name = fleet.strategy.name
        mine = decisions[name]
        rows = [(mine[s.request_id], s.ttft_s * 1000, s) for _, s in fleet.finished
                if s.ttft_s is not None and s.request_id in mine]
        ordered = sorted(actual for _, actual, _ in rows)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        figures = cells[0]["arms"][name]
        print(f"{name}: p95 {figures['ttft_ms']['p95']} hit {figures['hit_rate']} "
              f"outcomes {figures['route_outcomes']}")
        for outcome in ("cold", "hit", "spill", "-"):
            group = [(p, a) for (o, p, _), a, _ in rows if o == outcome]
            if not group:
                continue
            actual = sorted(a for _, a in group)
            tail = sum(1 for _, a in group if a >= p95)
            mp = sum(p for p, _ in group) / len(group)
            ma = sum(a for _, a in group) / len(group)
            cov = sum((p - mp) * (a - ma) for p, a in group)
            sp = sum((p - mp) ** 2 for p, _ in group) ** 0.5
            sa = sum((a - ma) ** 2 for _, a in group) ** 0.5
            corr = cov / (sp * sa) if sp and sa else float("nan")
            mae = sum(abs(p - a) for p, a in group) / len(group)
            print(f"  {outcome:5s} predicted vs actual: correlation {corr:.2f}, "
                  f"mean abs error {mae:6.1f}")
            print(f"  {outcome:5s} n {len(group):4d} predicted mean "
                  f"{sum(p for p, _ in group) / len(group):6.1f} actual mean "
                  f"{sum(actual) / len(actual):6.1f} p95 "
                  f"{actual[int(0.95 * (len(actual) - 1))]:6.1f}"
                  f" in slowest 5%: {tail}")
        for label, subset in (("all", [s for _, _, s in rows]),
                              ("slowest 5%", [s for _, a, s in rows if a >= p95])):
            n = len(subset)
            queued = sum((s.first_scheduled_s or s.arrival_s) - s.arrival_s for s in subset) / n
            prefill = sum(s.first_token_s - (s.first_scheduled_s or s.arrival_s)
                          for s in subset) / n
            cached = sum(s.num_cached_tokens for s in subset) / max(
                1, sum(s.num_prompt_tokens for s in subset))
            print(f"  {label:10s} n {n:4d}: queued before first schedule {queued * 1000:7.1f} ms, "
                  f"scheduled to first token {prefill * 1000:7.1f} ms, cached share "
                  f"{cached:.3f}, preempted {sum(1 for s in subset if s.num_preemptions)}, "
                  f"prompt tokens {sum(s.num_prompt_tokens for s in subset) / n:7.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
