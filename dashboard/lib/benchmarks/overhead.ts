import { at, chart, keysOf, nonEmpty, num, str } from "../results";
import type { Scenario } from "./scenario";

/** gateway_overhead.json: one gateway worker over a zero-latency upstream vs calling it direct. */
export const gatewayOverhead: Scenario = {
  id: "overhead",
  title: "Gateway overhead",
  file: "gateway_overhead.json",
  source: "measured here",
  command: "python -m kvgate.bench.gateway_overhead --requests 3000 --duration-s 8",
  build(data) {
    const targets = (key: string) => num(at(data, "targets", key));
    const addedP50 = targets("added_p50_ms");
    const addedP99 = targets("added_p99_ms");
    const rpsTarget = targets("requests_per_s_c32");
    const modes = ["concurrency_1_blocking_ms", "concurrency_1_stream_ttft_ms"];
    const modeName = (m: string) => (m.includes("stream") ? "stream TTFT" : "blocking");
    return {
      source: "measured here",
      sourceDetail: str(at(data, "source")),
      command: str(at(data, "command")),
      groups: [
        {
          title: "added latency and throughput",
          notes: [
            `HTTP server ${str(at(data, "http_server")) ?? "?"}, ` +
              `${String(at(data, "machine", "cpus") ?? "?")} CPUs; idle RSS ` +
              `${String(at(data, "gateway_rss_mb", "idle", "total") ?? "?")} MB`,
          ],
          charts: nonEmpty([
            chart(
              {
                id: "overhead-added", title: "Added latency at concurrency 1", unit: "ms",
                better: "lower", categories: modes.map(modeName),
                target: addedP99 === null ? undefined : { value: addedP99, label: "p99 target" },
                note: addedP50 === null ? undefined : `targets: p50 <= ${addedP50} ms, p99 <= ${addedP99} ms`,
              },
              ["added p50", "added p99"],
              (mode, p) =>
                at(data, modes.find((m) => modeName(m) === mode) ?? "", p.replace(" ", "_")),
            ),
            chart(
              {
                id: "overhead-latency", title: "Blocking latency at concurrency 1, before/after",
                unit: "ms", better: "lower", categories: ["p50", "p99"],
              },
              ["direct", "gateway"],
              (p, who) => at(data, "concurrency_1_blocking_ms", who, p),
            ),
            chart(
              {
                id: "overhead-rps", title: "Throughput at concurrency 32", unit: "req/s",
                better: "higher", categories: ["direct", "gateway"],
                target: rpsTarget === null ? undefined : { value: rpsTarget, label: "target" },
              },
              ["req/s"],
              (who) => at(data, "concurrency_32_blocking", who, "requests_per_s"),
            ),
          ]),
        },
      ],
    };
  },
};

/** overhead.json: the same measurement for KVGate and its peers, side by side. */
export const overheadPeers: Scenario = {
  id: "overhead-peers",
  title: "Proxy overhead next to peers",
  file: "overhead.json",
  source: "measured here",
  command: "kvgate bench scenario overhead",
  build(data) {
    const categories = keysOf(at(data, "comparison"));
    const proxies = categories.filter((c) => c !== "direct");
    const row = (who: string, field: string) => at(data, "comparison", who, field);
    return {
      source: "measured here",
      sourceDetail:
        "each proxy in front of the same zero-latency upstream on this machine, " +
        `load from ${str(at(data, "load_generator")) ?? "?"}`,
      command: str(at(data, "command")),
      groups: [
        {
          title: "KVGate, nginx, LiteLLM, vllm-router",
          notes: [],
          charts: nonEmpty([
            chart(
              { id: "peers-added", title: "Added latency at concurrency 1", unit: "ms", better: "lower", categories: proxies },
              ["added p50", "added p99"],
              (who, p) => row(who, p === "added p50" ? "added_p50_ms" : "added_p99_ms"),
            ),
            chart(
              { id: "peers-rps", title: "Throughput at concurrency 32", unit: "req/s", better: "higher", categories },
              ["blocking", "stream"],
              (who, mode) =>
                row(who, mode === "blocking" ? "c32_requests_per_s" : "c32_stream_requests_per_s"),
            ),
            chart(
              { id: "peers-rss", title: "Idle memory", unit: "MB", better: "lower", categories },
              ["RSS"],
              (who) => row(who, "rss_idle_mb"),
            ),
          ]),
        },
      ],
    };
  },
};
