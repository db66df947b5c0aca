import { notFound } from "next/navigation";

import { loadConfig } from "@/lib/config";
import { listDocs, readDoc } from "@/lib/docs";
import { renderMarkdown } from "@/lib/markdown";

/** The docs tab: the list of docs on the left, one rendered on the right. */
export async function DocView({ name }: { name: string }) {
  const { repoDir } = loadConfig();
  const docs = await listDocs(repoDir);
  const doc = docs.find((d) => d.name === name);
  if (!doc) notFound();
  const source = await readDoc(repoDir, doc);
  return (
    <div className="docs-layout">
      <nav className="docs-nav" aria-label="Documents">
        {docs.map((d) => (
          <a key={d.name} href={`/docs/${encodeURIComponent(d.name)}`}
            className={d.name === doc.name ? "active" : undefined}>
            {d.repoPath}
          </a>
        ))}
      </nav>
      {source === null ? (
        <div className="error-box">{doc.repoPath} could not be read from {repoDir}.</div>
      ) : (
        <article
          className="markdown"
          data-testid="doc"
          data-doc={doc.repoPath}
          // The docs are this repository's own files, rendered on the server.
          dangerouslySetInnerHTML={{ __html: renderMarkdown(source, doc, docs) }}
        />
      )}
    </div>
  );
}
