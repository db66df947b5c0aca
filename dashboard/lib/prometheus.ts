/**
 * A parser for the Prometheus text exposition format (version 0.0.4), enough for /metrics:
 * `name{label="value",...} number [timestamp]`, comments skipped.
 */

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const sample = parseLine(line);
    if (sample) samples.push(sample);
  }
  return samples;
}

function parseLine(line: string): Sample | null {
  const nameEnd = line.search(/[{\s]/);
  if (nameEnd <= 0) return null;
  const name = line.slice(0, nameEnd);
  const labels: Record<string, string> = {};
  let i = nameEnd;
  if (line[i] === "{") {
    i += 1;
    while (i < line.length && line[i] !== "}") {
      const eq = line.indexOf("=", i);
      if (eq === -1 || line[eq + 1] !== '"') return null;
      const key = line.slice(i, eq).trim();
      let value = "";
      let j = eq + 2;
      // Label values escape only backslash, double quote and newline.
      for (; j < line.length && line[j] !== '"'; j++) {
        if (line[j] === "\\" && j + 1 < line.length) {
          j += 1;
          value += line[j] === "n" ? "\n" : line[j];
        } else {
          value += line[j];
        }
      }
      labels[key] = value;
      i = j + 1;
      if (line[i] === ",") i += 1;
    }
    i += 1;
  }
  const [valueText] = line.slice(i).trim().split(/\s+/);
  const value = parseValue(valueText);
  return value === null ? null : { name, labels, value };
}

function parseValue(text: string | undefined): number | null {
  if (text === undefined) return null;
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  const value = Number(text);
  return Number.isNaN(value) && text !== "NaN" ? null : value;
}

/** Sums `name`'s samples grouped by the given labels, e.g. requests by status. */
export function sumBy(samples: readonly Sample[], name: string, labels: readonly string[],
): { labels: Record<string, string>; value: number }[] {
  const groups = new Map<string, { labels: Record<string, string>; value: number }>();
  for (const s of samples) {
    if (s.name !== name) continue;
    const picked = Object.fromEntries(labels.map((l) => [l, s.labels[l] ?? ""]));
    const key = JSON.stringify(picked);
    const group = groups.get(key);
    if (group) group.value += s.value;
    else groups.set(key, { labels: picked, value: s.value });
  }
  return [...groups.values()];
}
