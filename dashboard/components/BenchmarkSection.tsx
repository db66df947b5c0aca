import type { Scenario } from "@/lib/benchmarks";
import type { Loaded, SectionSpec } from "@/lib/results";
import { BarChart } from "./BarChart";
import { SourceBadge } from "./SourceBadge";

/** One result file: its charts, where the numbers come from, or why there are none. */
export function BenchmarkSection({ scenario, loaded }: { scenario: Scenario; loaded: Loaded }) {
  let spec: SectionSpec | null = null;
  let problem: string | null = null;
  if (loaded.status === "ok") {
    try {
      spec = scenario.build(loaded.data);
    } catch (error) {
      // NOTE: a result file of an unexpected shape costs its own section, not the page.
      problem = `could not chart it: ${String(error)}`;
    }
  } else if (loaded.status === "error") {
    problem = loaded.message;
  }

  return (
    <section className="bench" id={scenario.id} data-testid="bench-section"
      data-scenario={scenario.id} data-file={scenario.file} data-status={spec ? "ok" : loaded.status}>
      <header>
        <h2>{scenario.title}</h2>
        <SourceBadge source={spec?.source ?? scenario.source} />
      </header>
      <p className="provenance">
        <code>benchmarks/results/{scenario.file}</code>
        {spec?.sourceDetail && <> · {spec.sourceDetail}</>}
      </p>
      {loaded.status === "missing" && (
        <div className="not-run" data-testid="not-run">
          Not run yet: <code>{scenario.file}</code> is not in the results directory. Run{" "}
          <code>{scenario.command}</code>.
        </div>
      )}
      {problem && <div className="error-box">{scenario.file}: {problem}</div>}
      {spec && (
        <>
          {spec.command && (
            <p className="command">
              reproduce: <code>{spec.command}</code>
            </p>
          )}
          {spec.groups.map((group) => (
            <div className="chart-group" key={group.title}>
              <h3>{group.title}</h3>
              {group.notes.map((note) => (
                <p className="group-note" key={note}>{note}</p>
              ))}
              <div className="charts">
                {group.charts.map((c) => <BarChart key={c.id} spec={c} />)}
              </div>
            </div>
          ))}
          {spec.groups.every((g) => g.charts.length === 0) && (
            <div className="error-box">no figures found in {scenario.file}</div>
          )}
        </>
      )}
    </section>
  );
}
