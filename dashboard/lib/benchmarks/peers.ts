import { at, chart, keysOf, nonEmpty, str } from "../results";
import type { Scenario } from "./scenario";

/** peers.json: KVGate's strategies next to vllm-router and sglang-router on the same fleet. */
export const peers: Scenario = {
  id: "peers",
  title: "KV-aware routers side by side",
  file: "peers.json",
  source: "simulator",
  command: "kvgate bench scenario peers",
  build(data) {
    const groups = keysOf(at(data, "cases")).map((name) => {
      const row = (router: string, ...k: string[]) =>
        at(data, "cases", name, "routers", router, ...k);
      const categories = keysOf(at(data, "cases", name, "routers")).sort();
      const id = `peers-${name}`;
      return {
        title: `${name}: ${str(at(data, "cases", name, "title")) ?? ""}`,
        notes: [],
        charts: nonEmpty([
          chart(
            { id: `${id}-hit`, title: "Prefix-cache hit rate", unit: "ratio", better: "higher", categories },
            ["hit rate"],
            (r) => row(r, "replica_hit_rate"),
          ),
          chart(
            { id: `${id}-ttft`, title: "TTFT p95", unit: "ms", better: "lower", categories },
            ["p95"],
            (r) => row(r, "ttft_ms", "p95"),
          ),
          chart(
            { id: `${id}-rps`, title: "Requests per modelled second", unit: "req/s", better: "higher", categories },
            ["req/s"],
            (r) => row(r, "requests_per_s"),
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
