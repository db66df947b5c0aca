import type { SourceKind } from "@/lib/results";

const CLASS: Record<SourceKind, string> = {
  simulator: "badge badge-sim",
  "real vLLM (CPU)": "badge badge-vllm",
  "measured here": "badge badge-here",
};

export function SourceBadge({ source }: { source: SourceKind }) {
  return <span className={CLASS[source]} data-testid="source">{source}</span>;
}
