import { at, chart, keysOf, nonEmpty, str, type ChartGroup } from "../results";
import type { Scenario } from "./scenario";

/** routing.json: round_robin / least_busy / prefix_kv_aware on `kvgate sim` fleets. */
export const routing: Scenario = {
  id: "routing",
  title: "KV-aware routing",
  file: "routing.json",
  source: "simulator",
  command: "kvgate bench scenario routing --out benchmarks/results/routing.json",
  build(data) {
    const groups: ChartGroup[] = keysOf(at(data, "cases")).map((name) => {
      const fleet = (s: string, ...k: string[]) => at(data, "cases", name, "strategies", s, ...k);
      const virtual = (s: string, ...k: string[]) =>
        at(data, "virtual", name, "strategies", s, ...k);
      const categories = keysOf(at(data, "cases", name, "strategies"));
      const id = `routing-${name}`;
      return {
        title: `${name}: ${str(at(data, "cases", name, "title")) ?? ""}`,
        notes: [
          str(at(data, "cases", name, "notes")),
          str(at(data, "cases", name, "fleet", "command"))
            ? `fleet: ${str(at(data, "cases", name, "fleet", "command"))}`
            : null,
        ].filter((n): n is string => n !== null),
        charts: nonEmpty([
          chart(
            { id: `${id}-ttft`, title: "TTFT (fleet)", unit: "ms", better: "lower", categories },
            ["p50", "p95"],
            (s, p) => fleet(s, "ttft_ms", p),
          ),
          chart(
            {
              id: `${id}-hit`, title: "Prefix-cache hit rate (replicas' own counters)",
              unit: "ratio", better: "higher", categories,
            },
            ["fleet", "virtual clock"],
            (s, run) => (run === "fleet" ? fleet : virtual)(s, "replica_hit_rate"),
          ),
          chart(
            { id: `${id}-rps`, title: "Requests per modelled second", unit: "req/s", better: "higher", categories },
            ["fleet", "virtual clock"],
            (s, run) => (run === "fleet" ? fleet : virtual)(s, "requests_per_s"),
          ),
        ]),
      };
    });
    return {
      source: "simulator",
      sourceDetail: str(at(data, "units")),
      command: str(at(data, "command")),
      groups,
    };
  },
};
