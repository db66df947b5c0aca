import { at, chart, listOf, nonEmpty, str } from "../results";
import type { Scenario } from "./scenario";

/** scale.json: the routing strategies on fleets of 8 to 256 in-process engines. */
export const scale: Scenario = {
  id: "scale",
  title: "Fleet scale",
  file: "scale.json",
  source: "simulator",
  command: "kvgate bench scenario scale --out benchmarks/results/scale.json",
  build(data) {
    const fleets = listOf(at(data, "fleets"));
    const categories = fleets.map((f) => `${String(at(f, "replicas") ?? "?")} replicas`);
    const strategies = [
      ...new Set(fleets.flatMap((f) => listOf(at(f, "runs")).map((r) => String(at(r, "strategy"))))),
    ];
    const run = (fleet: string, strategy: string) =>
      listOf(at(fleets[categories.indexOf(fleet)], "runs")).find(
        (r) => at(r, "strategy") === strategy,
      );
    return {
      source: "simulator",
      sourceDetail: str(at(data, "source")),
      command: str(at(data, "command")),
      groups: [
        {
          title: "strategies as the fleet grows",
          notes: [],
          charts: nonEmpty([
            chart(
              { id: "scale-hit", title: "Prefix-cache hit ratio", unit: "ratio", better: "higher", categories },
              strategies,
              (f, s) => at(run(f, s), "hit_ratio"),
            ),
            chart(
              { id: "scale-ttft", title: "TTFT p95", unit: "ms", better: "lower", categories },
              strategies,
              (f, s) => at(run(f, s), "ttft_ms", "p95"),
            ),
          ]),
        },
      ],
    };
  },
};
