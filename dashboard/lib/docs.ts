/**
 * The repository's markdown docs: README.md and docs/*.md, addressed by file name
 * (`/docs/SIMULATOR.md`), so the docs' own relative links between each other keep working.
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";

export interface DocRef {
  /** URL segment and display name: "README.md", "SIMULATOR.md". */
  readonly name: string;
  /** Path inside the repository, POSIX separators: "docs/SIMULATOR.md". */
  readonly repoPath: string;
}

/** The order the docs read best in; any other docs/*.md follow alphabetically. */
const FIRST = ["README.md", "HOW_ROUTING_WORKS.md", "PRECISE_ROUTING.md", "BENCHMARK_REPORT.md",
  "SIMULATOR.md"];

export async function listDocs(repoDir: string): Promise<DocRef[]> {
  const docs: DocRef[] = [{ name: "README.md", repoPath: "README.md" }];
  let names: string[] = [];
  try {
    names = await readdir(path.join(repoDir, "docs"));
  } catch {
    // No docs/ folder: README alone.
  }
  for (const name of names.filter((n) => n.endsWith(".md") && n !== "README.md")) {
    docs.push({ name, repoPath: `docs/${name}` });
  }
  const rank = (d: DocRef) => {
    const i = FIRST.indexOf(d.name);
    return i === -1 ? FIRST.length : i;
  };
  return docs.sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
}

export async function readDoc(repoDir: string, doc: DocRef): Promise<string | null> {
  try {
    return await readFile(path.join(repoDir, doc.repoPath), "utf8");
  } catch {
    return null;
  }
}
