/**
 * What the live view shows: the gateway's /admin/stats as it sends it, and the few /metrics
 * series the page needs, already summed. Shared by the proxy route and the browser.
 */

export interface CircuitState {
  state: string;
  cooldown_left_s?: number;
  consecutive_failures?: number;
  times_opened?: number;
}

export interface DeploymentStats {
  id: string;
  provider: string;
  model: string;
  in_flight: number;
  max_concurrency: number | null;
  weight?: number;
  requests_total: number;
  failures_total: number;
  cost_usd_total: number;
  ewma_ttft_ms: number | null;
  ewma_ms_per_token?: number | null;
  circuit: CircuitState;
  /** precise_kv only: what the gateway knows of this replica's KV cache. */
  kv_cache?: Record<string, unknown>;
}

export interface ModelStats {
  name: string;
  strategy: string;
  max_attempts?: number;
  affinity_entries?: number | null;
  deployments: DeploymentStats[];
}

export interface TenantStats {
  rpm: number | null;
  tpm: number | null;
  budget_usd: number | null;
  budget_window: string | number | null;
  requests_left: number | null;
  tokens_left: number | null;
  spent_usd: number | null;
}

export interface AdminStats {
  models: ModelStats[];
  cache: Record<string, unknown>;
  tenants: Record<string, TenantStats>;
}

export interface Counted {
  labels: Record<string, string>;
  value: number;
}

export interface MetricsSummary {
  /** kvgate_requests_total summed over models and endpoints. */
  requestsByStatus: Counted[];
  /** kvgate_requests_total per model and status. */
  requestsByModelStatus: Counted[];
  /** kvgate_cache_lookups_total by result (exact, semantic, miss). */
  cacheLookups: Counted[];
  /** kvgate_routing_decisions_total per model and outcome (hit, spill, cold, ...). */
  routingDecisions: Counted[];
  /** kvgate_upstream_attempts_total per deployment and outcome. */
  upstreamAttempts: Counted[];
  /** kvgate_limit_rejections_total per tenant and limit. */
  limitRejections: Counted[];
}

export type Snapshot =
  | {
      ok: true;
      gatewayUrl: string;
      fetchedAtMs: number;
      stats: AdminStats;
      metrics: MetricsSummary | null;
      metricsError: string | null;
    }
  | {
      ok: false;
      gatewayUrl: string;
      fetchedAtMs: number;
      problem: "unreachable" | "unauthorized" | "bad_response";
      message: string;
    };
