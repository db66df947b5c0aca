import { at, chart, keysOf, nonEmpty, str } from "../results";
import type { Scenario } from "./scenario";

/** realvllm.json: KVGate's strategies and vllm-router over two real vLLM (CPU) replicas. */
export const realVllm: Scenario = {
  id: "realvllm",
  title: "Real vLLM on CPU",
  file: "realvllm.json",
  source: "real vLLM (CPU)",
  command: "kvgate bench scenario realvllm --out benchmarks/results/realvllm.json",
  build(data) {
    const version = str(at(data, "engine", "vllm", "vllm"));
    const groups = keysOf(at(data, "cases")).map((name) => {
      const row = (router: string, field: string) =>
        at(data, "cases", name, "comparison", router, field);
      const categories = keysOf(at(data, "cases", name, "comparison"));
      const id = `realvllm-${name}`;
      return {
        title: name,
        notes: [
          `model ${str(at(data, "cases", name, "model", "name")) ?? "?"}, ` +
            `${String(at(data, "cases", name, "workload", "num_requests") ?? "?")} requests, ` +
            `${String(at(data, "cases", name, "workload", "concurrency") ?? "?")} in flight`,
        ],
        charts: nonEmpty([
          chart(
            { id: `${id}-hit`, title: "Engine prefix-cache hit rate", unit: "ratio", better: "higher", categories },
            ["hit rate"],
            (r) => row(r, "prefix_cache_hit_rate"),
          ),
          chart(
            { id: `${id}-rps`, title: "Throughput", unit: "req/s", better: "higher", categories },
            ["req/s"],
            (r) => row(r, "requests_per_s"),
          ),
          chart(
            { id: `${id}-ttft`, title: "TTFT (client)", unit: "ms", better: "lower", categories },
            ["p50", "p95"],
            (r, p) => row(r, `ttft_${p}_ms`),
          ),
        ]),
      };
    });
    return {
      source: "real vLLM (CPU)",
      sourceDetail:
        `two real vLLM replicas (CPU build${version ? ` ${version}` : ""}) serving tiny ` +
        "locally built models; hit rate from the replicas' own counters",
      command: null,
      groups,
    };
  },
};
