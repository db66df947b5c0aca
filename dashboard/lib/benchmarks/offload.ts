import { at, chart, keysOf, listOf, nonEmpty, num, str } from "../results";
import type { Scenario } from "./scenario";

/** offload.json: one replica with the CPU KV tier off and on, under memory pressure. */
export const offload: Scenario = {
  id: "offload",
  title: "CPU offload tier",
  file: "offload.json",
  source: "simulator",
  command: "kvgate bench scenario offload --out benchmarks/results/offload.json",
  build(data) {
    const groups = keysOf(at(data, "cases")).map((name) => {
      const runs = listOf(at(data, "cases", name, "runs"));
      const label = (run: unknown) => {
        const gb = num(at(run, "cpu_tier_gb"));
        return !gb ? "CPU tier off" : `CPU tier ${gb} GB`;
      };
      const categories = runs.map(label);
      const summary = (tier: string, ...k: string[]) =>
        at(runs[categories.indexOf(tier)], "summary", ...k);
      const id = `offload-${name}`;
      const overGpu = at(data, "cases", name, "working_set_over_gpu_kv");
      return {
        title: `${name} (${str(at(data, "cases", name, "workload", "name")) ?? "?"} workload)`,
        notes: [`working set ${String(overGpu ?? "?")}x the GPU KV`],
        charts: nonEmpty([
          chart(
            { id: `${id}-ttft`, title: "TTFT", unit: "ms", better: "lower", categories },
            ["p50", "p95"],
            (tier, p) => summary(tier, "ttft_ms", p),
          ),
          chart(
            { id: `${id}-hit`, title: "Share of prompt tokens from cache", unit: "ratio", better: "higher", categories },
            ["GPU", "CPU tier", "all"],
            (tier, where) =>
              summary(tier, { GPU: "gpu_hit_ratio", "CPU tier": "cpu_hit_ratio" }[where] ?? "hit_ratio"),
          ),
          chart(
            { id: `${id}-tok`, title: "Output tokens per simulated second", unit: "tok/s", better: "higher", categories },
            ["tok/s"],
            (tier) => summary(tier, "output_tokens_per_s"),
          ),
        ]),
      };
    });
    return {
      source: "simulator",
      sourceDetail: str(at(data, "source")),
      command: str(at(data, "command")),
      groups,
    };
  },
};
