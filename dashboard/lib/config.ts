/**
 * The dashboard's settings, read from the environment once per request.
 *
 * This is the only module that reads `process.env`: pages and route handlers receive a frozen
 * `DashboardConfig`. It is read per request (not at import) so `npm run start` picks up a new
 * KVGATE_URL without a rebuild.
 */
import path from "node:path";

export interface DashboardConfig {
  /** The KVGate checkout: README.md and docs/ are read from here. */
  readonly repoDir: string;
  /** Benchmark result JSON files (`kvgate bench scenario ... --out`). */
  readonly resultsDir: string;
  /** Base URL of the gateway the live view polls, without a trailing slash. */
  readonly gatewayUrl: string;
  /** Sent as `Authorization: Bearer ...` to /admin/*; never reaches the browser. */
  readonly adminKey: string | null;
  /** How often the live view polls the proxy. */
  readonly pollIntervalMs: number;
  /** Budget for one request to the gateway before it counts as unreachable. */
  readonly gatewayTimeoutMs: number;
}

const DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080";

export function loadConfig(): DashboardConfig {
  const env = process.env;
  // `npm run dev|start` runs in dashboard/, so the checkout is one level up. These paths are
  // read at run time, so the bundler must not trace them into the build.
  const repoDir = path.resolve(
    /* turbopackIgnore: true */ env.KVGATE_REPO_DIR || path.join(process.cwd(), ".."),
  );
  const resultsDir = path.resolve(
    /* turbopackIgnore: true */ env.KVGATE_RESULTS_DIR ||
      path.join(repoDir, "benchmarks", "results"),
  );
  return Object.freeze({
    repoDir,
    resultsDir,
    gatewayUrl: (env.KVGATE_URL || DEFAULT_GATEWAY_URL).replace(/\/+$/, ""),
    adminKey: env.KVGATE_ADMIN_KEY || null,
    pollIntervalMs: positiveInt(env.KVGATE_POLL_MS, 2000),
    gatewayTimeoutMs: positiveInt(env.KVGATE_TIMEOUT_MS, 3000),
  });
}

function positiveInt(raw: string | undefined, fallback: number): number {
  const value = Number(raw);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}
