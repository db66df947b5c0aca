/**
 * Markdown to HTML for the docs tab (GitHub-flavoured: tables, fenced code).
 *
 * Relative links are rewritten as the repository would resolve them: another doc opens in the
 * docs tab, an image or source file is served by /repo-file. Headings get GitHub-style ids so
 * `#section` links land.
 */
import { Marked, type Token, type Tokens } from "marked";
import path from "node:path";

import type { DocRef } from "./docs";

export function renderMarkdown(source: string, doc: DocRef, docs: readonly DocRef[]): string {
  const byRepoPath = new Map(docs.map((d) => [d.repoPath, d]));
  const baseDir = path.posix.dirname(doc.repoPath);
  const rewrite = (href: string): string => {
    if (/^([a-z][a-z0-9+.-]*:|#|\/)/i.test(href)) return href;
    const [target, anchor] = splitAnchor(href);
    const repoPath = path.posix.normalize(path.posix.join(baseDir, target));
    if (repoPath.startsWith("..")) return href;
    const linked = byRepoPath.get(repoPath);
    if (linked) return `/docs/${encodeURIComponent(linked.name)}${anchor}`;
    return `/repo-file/${repoPath.split("/").map(encodeURIComponent).join("/")}${anchor}`;
  };

  const slugs = new Map<string, number>();
  const marked = new Marked({
    gfm: true,
    walkTokens(token: Token) {
      if (token.type === "link" || token.type === "image") {
        const link = token as Tokens.Link | Tokens.Image;
        link.href = rewrite(link.href);
      }
    },
    renderer: {
      heading({ tokens, depth, text }: Tokens.Heading) {
        const id = uniqueSlug(slugs, text);
        return `<h${depth} id="${id}">${this.parser.parseInline(tokens)}</h${depth}>\n`;
      },
    },
  });
  return marked.parse(source, { async: false });
}

function splitAnchor(href: string): [string, string] {
  const i = href.indexOf("#");
  return i === -1 ? [href, ""] : [href.slice(0, i), href.slice(i)];
}

/** GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens, -1/-2 repeats. */
function uniqueSlug(seen: Map<string, number>, text: string): string {
  const base = text
    .toLowerCase()
    .replace(/<[^>]*>/g, "")
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .trim()
    .replace(/\s/g, "-");
  const count = seen.get(base) ?? 0;
  seen.set(base, count + 1);
  return count === 0 ? base : `${base}-${count}`;
}
