/**
 * Benchmark result files and the shapes the charts are built from.
 *
 * Result JSON is written by `kvgate bench scenario ...` and changes as scenarios grow, so
 * extractors read it through `at()`/`num()`: a missing or renamed field becomes a missing bar,
 * never an exception that takes the page down.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";

/** Where a figure comes from, as docs/BENCHMARK_REPORT.md labels it. */
export type SourceKind = "simulator" | "real vLLM (CPU)" | "measured here";

export type Unit = "ms" | "ratio" | "req/s" | "tok/s" | "MB";

export interface Series {
  readonly name: string;
  /** One value per category, in the chart's category order; null = not measured. */
  readonly values: readonly (number | null)[];
}

export interface ChartSpec {
  readonly id: string;
  readonly title: string;
  readonly unit: Unit;
  readonly better: "lower" | "higher";
  readonly categories: readonly string[];
  readonly series: readonly Series[];
  /** A goal drawn as a dashed line (e.g. the overhead targets). */
  readonly target?: { readonly value: number; readonly label: string };
  readonly note?: string;
}

export interface ChartGroup {
  readonly title: string;
  readonly notes: readonly string[];
  readonly charts: readonly ChartSpec[];
}

export interface SectionSpec {
  readonly source: SourceKind;
  /** The file's own words on provenance (its `source` or `units` field), when it has them. */
  readonly sourceDetail: string | null;
  readonly command: string | null;
  readonly groups: readonly ChartGroup[];
}

/** One result file, read: a parsed document, or why there is none. */
export type Loaded =
  | { readonly status: "ok"; readonly file: string; readonly data: unknown }
  | { readonly status: "missing"; readonly file: string }
  | { readonly status: "error"; readonly file: string; readonly message: string };

export async function loadResult(resultsDir: string, file: string): Promise<Loaded> {
  let text: string;
  try {
    text = await readFile(path.join(resultsDir, file), "utf8");
  } catch (error) {
    if (isErrno(error, "ENOENT")) return { status: "missing", file };
    return { status: "error", file, message: String(error) };
  }
  try {
    return { status: "ok", file, data: JSON.parse(text) as unknown };
  } catch (error) {
    return { status: "error", file, message: `not valid JSON: ${String(error)}` };
  }
}

function isErrno(error: unknown, code: string): boolean {
  return typeof error === "object" && error !== null && (error as { code?: unknown }).code === code;
}

/** `data[k0][k1]...`, or undefined as soon as a step is missing or not an object. */
export function at(data: unknown, ...keys: (string | number)[]): unknown {
  let node = data;
  for (const key of keys) {
    if (typeof node !== "object" || node === null) return undefined;
    node = (node as Record<string | number, unknown>)[key];
  }
  return node;
}

export function num(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

export function str(value: unknown): string | null {
  return typeof value === "string" && value !== "" ? value : null;
}

/** The keys of an object node, in file order ([] when it is not an object). */
export function keysOf(value: unknown): string[] {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? Object.keys(value)
    : [];
}

export function listOf(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** A chart whose series all read `pick(category, seriesName)`. */
export function chart(
  spec: Omit<ChartSpec, "series">,
  seriesNames: readonly string[],
  pick: (category: string, series: string) => unknown,
): ChartSpec {
  return {
    ...spec,
    series: seriesNames.map((name) => ({
      name,
      values: spec.categories.map((category) => num(pick(category, name))),
    })),
  };
}

/** Drops charts with no value at all, so a renamed field does not leave an empty frame. */
export function nonEmpty(charts: ChartSpec[]): ChartSpec[] {
  return charts.filter((c) => c.series.some((s) => s.values.some((v) => v !== null)));
}
