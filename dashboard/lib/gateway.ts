/**
 * Server side of the live view: fetch a gateway's /admin/stats and /metrics. Runs only in the
 * Next.js server (route handler), so the admin key never reaches a browser and the gateway
 * needs no CORS.
 */
import type { DashboardConfig } from "./config";
import type { AdminStats, MetricsSummary, Snapshot } from "./live";
import { parsePrometheus, sumBy } from "./prometheus";

export async function fetchSnapshot(config: DashboardConfig): Promise<Snapshot> {
  const { gatewayUrl } = config;
  const fetchedAtMs = Date.now();
  const headers: Record<string, string> = config.adminKey
    ? { authorization: `Bearer ${config.adminKey}` }
    : {};
  const get = (route: string) =>
    fetch(gatewayUrl + route, {
      headers,
      cache: "no-store",
      signal: AbortSignal.timeout(config.gatewayTimeoutMs),
    });

  const [statsResult, metricsResult] = await Promise.allSettled([get("/admin/stats"),
    get("/metrics")]);
  if (statsResult.status === "rejected") {
    return { ok: false, gatewayUrl, fetchedAtMs, problem: "unreachable",
      message: describeFetchError(statsResult.reason) };
  }
  const statsResponse = statsResult.value;
  if (statsResponse.status === 401 || statsResponse.status === 403) {
    return { ok: false, gatewayUrl, fetchedAtMs, problem: "unauthorized",
      message: `/admin/stats answered ${statsResponse.status}: ` +
        (config.adminKey ? "KVGATE_ADMIN_KEY was rejected" : "set KVGATE_ADMIN_KEY") };
  }
  let stats: AdminStats;
  try {
    if (!statsResponse.ok) throw new Error(`HTTP ${statsResponse.status}`);
    stats = (await statsResponse.json()) as AdminStats;
    if (!Array.isArray(stats.models)) throw new Error("no `models` list");
  } catch (error) {
    return { ok: false, gatewayUrl, fetchedAtMs, problem: "bad_response",
      message: `/admin/stats: ${String(error)}` };
  }

  let metrics: MetricsSummary | null = null;
  let metricsError: string | null = null;
  try {
    if (metricsResult.status === "rejected") throw metricsResult.reason;
    if (!metricsResult.value.ok) throw new Error(`HTTP ${metricsResult.value.status}`);
    metrics = summarize(await metricsResult.value.text());
  } catch (error) {
    metricsError = `/metrics: ${describeFetchError(error)}`;
  }
  return { ok: true, gatewayUrl, fetchedAtMs, stats, metrics, metricsError };
}

function summarize(text: string): MetricsSummary {
  const samples = parsePrometheus(text);
  return {
    requestsByStatus: sumBy(samples, "kvgate_requests_total", ["status"]),
    requestsByModelStatus: sumBy(samples, "kvgate_requests_total", ["model", "status"]),
    cacheLookups: sumBy(samples, "kvgate_cache_lookups_total", ["result"]),
    routingDecisions: sumBy(samples, "kvgate_routing_decisions_total", ["model", "outcome"]),
    upstreamAttempts: sumBy(samples, "kvgate_upstream_attempts_total", ["deployment", "outcome"]),
    limitRejections: sumBy(samples, "kvgate_limit_rejections_total", ["tenant", "limit"]),
  };
}

/** fetch() says only "fetch failed"; the cause (ECONNREFUSED, timeout) is what helps. */
function describeFetchError(error: unknown): string {
  if (error instanceof Error) {
    if (error.name === "TimeoutError") return "timed out";
    const cause = (error as Error & { cause?: unknown }).cause;
    if (cause instanceof Error) {
      const code = (cause as Error & { code?: string }).code;
      return code ? `${code}: ${cause.message}` : cause.message;
    }
    return error.message;
  }
  return String(error);
}
