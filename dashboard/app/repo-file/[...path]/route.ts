import { readFile } from "node:fs/promises";
import path from "node:path";

import { loadConfig } from "@/lib/config";

export const dynamic = "force-dynamic";

// Files the docs link to (plots, config examples, source): only these kinds, only inside the
// checkout. Anything else, dotfiles included, is a 404.
const CONTENT_TYPES: Record<string, string> = {
  ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
  ".svg": "image/svg+xml", ".webp": "image/webp",
  ".py": "text/plain; charset=utf-8", ".yaml": "text/plain; charset=utf-8",
  ".yml": "text/plain; charset=utf-8", ".toml": "text/plain; charset=utf-8",
  ".json": "text/plain; charset=utf-8", ".txt": "text/plain; charset=utf-8",
  ".md": "text/plain; charset=utf-8", ".sh": "text/plain; charset=utf-8",
};

export async function GET(_request: Request, { params }: { params: Promise<{ path: string[] }> }) {
  const { path: segments } = await params;
  const { repoDir } = loadConfig();
  const file = path.resolve(repoDir, ...segments.map((s) => decodeURIComponent(s)));
  const type = CONTENT_TYPES[path.extname(file).toLowerCase()];
  const inside = file.startsWith(repoDir + path.sep);
  const hidden = path.relative(repoDir, file).split(path.sep).some((s) => s.startsWith("."));
  if (!type || !inside || hidden) return new Response("not found", { status: 404 });
  try {
    return new Response(new Uint8Array(await readFile(file)), {
      headers: { "content-type": type, "cache-control": "no-cache" },
    });
  } catch {
    return new Response("not found", { status: 404 });
  }
}
