import { BenchmarkSection } from "@/components/BenchmarkSection";
import { SourceBadge } from "@/components/SourceBadge";
import { SCENARIOS } from "@/lib/benchmarks";
import { loadConfig } from "@/lib/config";
import { loadResult } from "@/lib/results";

// Result files are read on every request: a rerun benchmark shows up without a rebuild.
export const dynamic = "force-dynamic";

export const metadata = { title: "Benchmarks · KVGate" };

export default async function BenchmarksPage() {
  const { resultsDir } = loadConfig();
  const loaded = await Promise.all(SCENARIOS.map((s) => loadResult(resultsDir, s.file)));
  return (
    <>
      <h1>Benchmarks</h1>
      <p className="lead">
        Before/after comparisons from the benchmark result files in <code>{resultsDir}</code>.
        Each section says where its numbers come from: <SourceBadge source="simulator" /> the{" "}
        <code>kvgate sim</code> engine model (GPU-shaped timing, not a GPU),{" "}
        <SourceBadge source="real vLLM (CPU)" /> vLLM&apos;s CPU build serving tiny models, or{" "}
        <SourceBadge source="measured here" /> real processes on this project&apos;s machine. The
        full discussion is in the <a href="/docs/BENCHMARK_REPORT.md">benchmark report</a>.
      </p>
      <nav className="toc">
        {SCENARIOS.map((s, i) => (
          <a key={s.id} href={`#${s.id}`}
            className={loaded[i].status === "ok" ? undefined : "toc-missing"}>
            {s.title}
          </a>
        ))}
      </nav>
      {SCENARIOS.map((s, i) => (
        <BenchmarkSection key={s.id} scenario={s} loaded={loaded[i]} />
      ))}
    </>
  );
}
