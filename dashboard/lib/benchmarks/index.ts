import { gatewayOverhead, overheadPeers } from "./overhead";
import { offload } from "./offload";
import { peers } from "./peers";
import { precise, preciseSeeds } from "./precise";
import { realVllm } from "./realvllm";
import { routing } from "./routing";
import { scale } from "./scale";
import type { Scenario } from "./scenario";

export type { Scenario } from "./scenario";

/** Page order: the headline comparisons first, as in docs/BENCHMARK_REPORT.md. */
export const SCENARIOS: readonly Scenario[] = [
  routing,
  precise,
  preciseSeeds,
  realVllm,
  gatewayOverhead,
  overheadPeers,
  offload,
  scale,
  peers,
];
