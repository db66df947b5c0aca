import { at, chart, keysOf, nonEmpty, str } from "../results";
import type { Scenario } from "./scenario";

const RUNS = ["fleet", "virtual (fan-outs)", "virtual (steady)"] as const;

/** precise.json: approximate (prefix_kv_aware) against precise_kv, same workload. */
export const precise: Scenario = {
  id: "precise",
  title: "Precise routing from KV events",
  file: "precise.json",
  source: "simulator",
  command: "kvgate bench scenario precise --out benchmarks/results/precise.json",
  build(data) {
    const categories = keysOf(at(data, "engine"));
    const hitRate = (arm: string, run: string) =>
      run === "fleet"
        ? at(data, "engine", arm, "prefix_cache_hit_rate")
        : at(data, run === RUNS[1] ? "virtual" : "virtual_steady", "arms", arm,
          "prefix_cache_hit_rate");
    const ttftP95 = (arm: string, run: string) =>
      run === "fleet"
        ? at(data, "runs", arm, "summary", "ttft_ms", "p95")
        : at(data, run === RUNS[1] ? "virtual" : "virtual_steady", "arms", arm, "ttft_ms", "p95");
    const setup = at(data, "setup");
    return {
      source: "simulator",
      sourceDetail:
        "kvgate sim replicas with KV events behind kvgate run (fleet), and the same engines " +
        "on a virtual clock; hit rate = the replicas' prefix_cache_hits / queries (tokens)",
      command: str(at(data, "command")),
      groups: [
        {
          title: "approximate (prefix_kv_aware) vs precise_kv",
          notes: [
            `${at(setup, "replicas") ?? "?"} replicas of ${str(at(setup, "profile")) ?? "?"}, ` +
              `${at(setup, "kv_blocks") ?? "?"} KV blocks each; working set ` +
              `${at(setup, "working_set_tokens") ?? "?"} tokens vs ${at(setup, "capacity_tokens") ?? "?"} ` +
              `of KV; ${at(setup, "num_requests") ?? "?"} requests`,
          ],
          charts: nonEmpty([
            chart(
              { id: "precise-hit", title: "Prefix-cache hit rate", unit: "ratio", better: "higher", categories },
              RUNS,
              hitRate,
            ),
            chart(
              { id: "precise-ttft", title: "TTFT p95", unit: "ms", better: "lower", categories },
              RUNS,
              ttftP95,
            ),
          ]),
        },
      ],
    };
  },
};

/** precise_seeds.json: the virtual-clock comparison averaged over seeds. */
export const preciseSeeds: Scenario = {
  id: "precise-seeds",
  title: "Precise routing over many seeds",
  file: "precise_seeds.json",
  source: "simulator",
  command: "kvgate bench scenario precise-seeds --out benchmarks/results/precise_seeds.json",
  build(data) {
    const workloads = keysOf(data).filter((k) => at(data, k, "summary") !== undefined);
    const categories = keysOf(at(data, workloads[0] ?? "", "summary"));
    const seeds = at(data, "seeds");
    return {
      source: "simulator",
      sourceDetail: `engine model on a virtual clock, mean over ${String(seeds ?? "?")} seeds`,
      command: null,
      groups: [
        {
          title: "means over seeds",
          notes: [],
          charts: nonEmpty([
            chart(
              { id: "seeds-hit", title: "Prefix-cache hit rate (mean)", unit: "ratio", better: "higher", categories },
              workloads,
              (arm, w) => at(data, w, "summary", arm, "hit_rate_mean"),
            ),
            chart(
              { id: "seeds-ttft", title: "TTFT p95 (mean)", unit: "ms", better: "lower", categories },
              workloads,
              (arm, w) => at(data, w, "summary", arm, "ttft_p95_ms_mean"),
            ),
          ]),
        },
      ],
    };
  },
};
