import type { SectionSpec, SourceKind } from "../results";

/** One benchmark result file and how to chart it. */
export interface Scenario {
  /** Anchor on the page. */
  readonly id: string;
  readonly title: string;
  /** The file under the results directory. */
  readonly file: string;
  readonly source: SourceKind;
  /** What produces the file; shown when it is missing (the file's own `command` wins). */
  readonly command: string;
  readonly build: (data: unknown) => SectionSpec;
}
