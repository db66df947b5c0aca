"use client";

import { useEffect, useState } from "react";

import { formatNumber, percent } from "@/lib/format";
import type { Counted, DeploymentStats, ModelStats, Snapshot, TenantStats } from "@/lib/live";

/** Counters from one successful poll, kept to turn totals into rates. */
interface Sample {
  atMs: number;
  requestsTotal: number;
  byDeployment: Record<string, number>;
}

interface Rates {
  requestsPerS: number | null;
  byDeployment: Record<string, number | null>;
}

const HISTORY = 60;

export function LiveView({ pollIntervalMs }: { pollIntervalMs: number }) {
  const [latest, setLatest] = useState<Snapshot | null>(null);
  const [lastGood, setLastGood] = useState<Extract<Snapshot, { ok: true }> | null>(null);
  const [samples, setSamples] = useState<Sample[]>([]);

  useEffect(() => {
    let cancelled = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const poll = async () => {
      const snapshot = await fetchSnapshot();
      if (cancelled) return;
      setLatest(snapshot);
      if (snapshot.ok) {
        setLastGood(snapshot);
        setSamples((prev) => [...prev, sampleOf(snapshot)].slice(-HISTORY));
      }
      timer = setTimeout(poll, pollIntervalMs);
    };
    void poll();
    return () => {
      cancelled = true;
      clearTimeout(timer);
    };
  }, [pollIntervalMs]);

  if (latest === null) {
    return <p className="muted" data-testid="live-status" data-state="loading">Connecting…</p>;
  }
  const rates = ratesOf(samples);
  const shown = latest.ok ? latest : lastGood;
  return (
    <div className="live">
      <p className="live-status" data-testid="live-status"
        data-state={latest.ok ? "connected" : latest.problem}>
        <span className={latest.ok ? "dot dot-ok" : "dot dot-bad"} />
        {latest.ok ? "connected to" : "no data from"} <code>{latest.gatewayUrl}</code> · polled{" "}
        {new Date(latest.fetchedAtMs).toLocaleTimeString()}
      </p>
      {!latest.ok && <Problem snapshot={latest} />}
      {shown && (
        <div className={latest.ok ? undefined : "stale"}>
          {!latest.ok && (
            <p className="muted">
              Last data, from {new Date(shown.fetchedAtMs).toLocaleTimeString()}:
            </p>
          )}
          {shown.metricsError && <div className="warn-box">{shown.metricsError}</div>}
          <Summary snapshot={shown} rates={rates} samples={samples} />
          {shown.stats.models.map((model) => (
            <ModelCard key={model.name} model={model} rates={rates}
              decisions={(shown.metrics?.routingDecisions ?? []).filter(
                (c) => c.labels.model === model.name)}
              attempts={shown.metrics?.upstreamAttempts ?? []} />
          ))}
          <Tenants tenants={shown.stats.tenants ?? {}}
            rejections={shown.metrics?.limitRejections ?? []} />
        </div>
      )}
    </div>
  );
}

async function fetchSnapshot(): Promise<Snapshot> {
  try {
    const response = await fetch("/api/live", { cache: "no-store" });
    return (await response.json()) as Snapshot;
  } catch (error) {
    return { ok: false, gatewayUrl: "(dashboard server)", fetchedAtMs: Date.now(),
      problem: "unreachable", message: `the dashboard server did not answer: ${String(error)}` };
  }
}

function sampleOf(snapshot: Extract<Snapshot, { ok: true }>): Sample {
  const byDeployment: Record<string, number> = {};
  let deploymentTotal = 0;
  for (const model of snapshot.stats.models) {
    for (const d of model.deployments) {
      byDeployment[`${model.name}\u0000${d.id}`] = d.requests_total;
      deploymentTotal += d.requests_total;
    }
  }
  const fromMetrics = snapshot.metrics ? total(snapshot.metrics.requestsByStatus) : null;
  return { atMs: snapshot.fetchedAtMs, requestsTotal: fromMetrics ?? deploymentTotal,
    byDeployment };
}

/** Rates over the last poll interval; null where a counter went backwards (a restart). */
function ratesOf(samples: Sample[]): Rates {
  const [prev, cur] = samples.slice(-2);
  if (!prev || !cur || cur.atMs <= prev.atMs) return { requestsPerS: null, byDeployment: {} };
  const dt = (cur.atMs - prev.atMs) / 1000;
  const rate = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined || b < a ? null : (b - a) / dt;
  const byDeployment: Record<string, number | null> = {};
  for (const key of Object.keys(cur.byDeployment)) {
    byDeployment[key] = rate(prev.byDeployment[key], cur.byDeployment[key]);
  }
  return { requestsPerS: rate(prev.requestsTotal, cur.requestsTotal), byDeployment };
}

function total(counted: readonly Counted[]): number {
  return counted.reduce((sum, c) => sum + c.value, 0);
}

function Problem({ snapshot }: { snapshot: Extract<Snapshot, { ok: false }> }) {
  const title = {
    unreachable: "Gateway unreachable",
    unauthorized: "Admin key required",
    bad_response: "Unexpected answer from the gateway",
  }[snapshot.problem];
  return (
    <div className="error-box" data-testid="live-problem" data-problem={snapshot.problem}>
      <strong>{title}</strong> at <code>{snapshot.gatewayUrl}</code>: {snapshot.message}.
      <br />
      {snapshot.problem === "unauthorized"
        ? "Start the dashboard with KVGATE_ADMIN_KEY set to the gateway's server.admin_key."
        : "Start a gateway (kvgate run) or point KVGATE_URL at one; polling continues."}
    </div>
  );
}

function Summary({ snapshot, rates, samples }: {
  snapshot: Extract<Snapshot, { ok: true }>; rates: Rates; samples: Sample[];
}) {
  const metrics = snapshot.metrics;
  const byStatus = [...(metrics?.requestsByStatus ?? [])].sort((a, b) =>
    a.labels.status.localeCompare(b.labels.status));
  const requests = total(byStatus);
  const errors = total(byStatus.filter((c) => !c.labels.status.startsWith("2")));
  const lookups = metrics?.cacheLookups ?? [];
  const hits = total(lookups.filter((c) => c.labels.result !== "miss"));
  const allLookups = total(lookups);
  const cache = snapshot.stats.cache ?? {};
  return (
    <div className="cards">
      <div className="card" data-testid="requests-card">
        <div className="card-label">Requests (kvgate_requests_total)</div>
        <div className="card-value" data-testid="requests-total" data-value={requests}>
          {formatNumber(requests, 0)}
        </div>
        <ul className="inline-list" data-testid="requests-by-status">
          {byStatus.map((c) => (
            <li key={c.labels.status} data-status={c.labels.status} data-value={c.value}>
              <span className={c.labels.status.startsWith("2") ? "ok" : "bad"}>
                {c.labels.status}
              </span>{" "}
              {formatNumber(c.value, 0)}
            </li>
          ))}
        </ul>
      </div>
      <div className="card">
        <div className="card-label">Request rate</div>
        <div className="card-value" data-testid="request-rate"
          data-value={rates.requestsPerS ?? undefined}>
          {rates.requestsPerS === null ? "–" : `${formatNumber(rates.requestsPerS, 2)} req/s`}
        </div>
        <Sparkline samples={samples} />
      </div>
      <div className="card">
        <div className="card-label">Errors (non-2xx)</div>
        <div className="card-value">
          {requests ? percent(errors / requests) : "–"}
        </div>
        <div className="muted">{formatNumber(errors, 0)} of {formatNumber(requests, 0)}</div>
      </div>
      <div className="card" data-testid="cache-card">
        <div className="card-label">Response cache hit ratio</div>
        <div className="card-value" data-testid="cache-hit-ratio">
          {allLookups ? percent(hits / allLookups) : "no lookups yet"}
        </div>
        <div className="muted">
          {lookups.map((c) => `${c.labels.result} ${formatNumber(c.value, 0)}`).join(" · ")}
          <br />
          exact entries {String(cache.exact_entries ?? "off")} · semantic entries{" "}
          {String(cache.semantic_entries ?? "off")}
          {cache.semantic_embedder ? ` (${String(cache.semantic_embedder)})` : ""}
        </div>
      </div>
    </div>
  );
}

/** Requests per second between successive polls, newest on the right. */
function Sparkline({ samples }: { samples: Sample[] }) {
  const points: number[] = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].atMs - samples[i - 1].atMs) / 1000;
    const d = samples[i].requestsTotal - samples[i - 1].requestsTotal;
    points.push(dt > 0 && d >= 0 ? d / dt : 0);
  }
  if (points.length < 2) return <div className="muted">rate history after a few polls</div>;
  const w = 160;
  const h = 32;
  const max = Math.max(...points, 1e-9);
  const step = w / (HISTORY - 1);
  const offset = w - (points.length - 1) * step;
  const path = points
    .map((p, i) => `${i ? "L" : "M"}${(offset + i * step).toFixed(1)},${(h - (p / max) * (h - 2) - 1).toFixed(1)}`)
    .join(" ");
  return (
    <svg className="sparkline" viewBox={`0 0 ${w} ${h}`} width={w} height={h}
      aria-label="request rate history">
      <path d={path} fill="none" stroke="#2563eb" strokeWidth={1.5} />
    </svg>
  );
}

function ModelCard({ model, rates, decisions, attempts }: {
  model: ModelStats; rates: Rates; decisions: Counted[]; attempts: Counted[];
}) {
  const withKv = model.deployments.some((d) => d.kv_cache);
  return (
    <section className="model" data-testid="model" data-model={model.name}>
      <h2>
        {model.name} <span className="badge">{model.strategy}</span>
      </h2>
      <p className="muted">
        up to {model.max_attempts ?? "?"} attempts per request
        {model.affinity_entries !== null && model.affinity_entries !== undefined &&
          ` · affinity table ${formatNumber(model.affinity_entries, 0)} entries`}
      </p>
      <div className="table-wrap">
        <table className="data">
          <thead>
            <tr>
              <th>deployment</th><th>circuit</th><th>in flight</th><th>requests</th>
              <th>req/s</th><th>failures</th><th>attempt outcomes</th><th>cost USD</th>
              <th>EWMA TTFT ms</th>{withKv && <th>KV cache</th>}
            </tr>
          </thead>
          <tbody>
            {model.deployments.map((d) => (
              <DeploymentRow key={d.id} model={model.name} deployment={d} withKv={withKv}
                rate={rates.byDeployment[`${model.name}\u0000${d.id}`] ?? null}
                attempts={attempts.filter((c) => c.labels.deployment === d.id)} />
            ))}
          </tbody>
        </table>
      </div>
      <DecisionMix strategy={model.strategy} decisions={decisions} />
    </section>
  );
}

function DeploymentRow({ model, deployment: d, rate, attempts, withKv }: {
  model: string; deployment: DeploymentStats; rate: number | null; attempts: Counted[];
  withKv: boolean;
}) {
  const state = d.circuit?.state ?? "unknown";
  return (
    <tr data-testid="deployment-row" data-model={model} data-deployment={d.id}>
      <td data-field="id"><code>{d.id}</code></td>
      <td data-field="circuit">
        <span className={`pill pill-${state.replace(/[^a-z_]/g, "")}`}>{state}</span>
        {d.circuit?.cooldown_left_s ? ` ${formatNumber(d.circuit.cooldown_left_s, 1)} s` : ""}
      </td>
      <td data-field="in_flight">
        {d.in_flight}{d.max_concurrency ? ` / ${d.max_concurrency}` : ""}
      </td>
      <td data-field="requests_total" data-value={d.requests_total}>
        {formatNumber(d.requests_total, 0)}
      </td>
      <td data-field="rate" data-value={rate ?? undefined}>{rate === null ? "–" : formatNumber(rate, 2)}</td>
      <td data-field="failures_total" data-value={d.failures_total}>
        {formatNumber(d.failures_total, 0)}
      </td>
      <td data-field="attempts">
        {attempts.length
          ? attempts.map((c) => `${c.labels.outcome} ${formatNumber(c.value, 0)}`).join(" · ")
          : "–"}
      </td>
      <td data-field="cost_usd_total">{formatNumber(d.cost_usd_total, 6)}</td>
      <td data-field="ewma_ttft_ms">{formatNumber(d.ewma_ttft_ms, 1)}</td>
      {withKv && <td data-field="kv_cache"><KvCache state={d.kv_cache} /></td>}
    </tr>
  );
}

function KvCache({ state }: { state: Record<string, unknown> | undefined }) {
  if (!state) return <>–</>;
  const mode = String(state.mode ?? "?");
  const blocks = state.blocks_tracked;
  const lag = state.lag_ms;
  return (
    <span title={JSON.stringify(state, null, 1)}>
      <span className={`pill pill-${mode === "precise" ? "closed" : "half_open"}`}>{mode}</span>
      {typeof blocks === "number" && ` ${formatNumber(blocks, 0)} blocks`}
      {typeof lag === "number" && ` · lag ${formatNumber(lag, 1)} ms`}
    </span>
  );
}

function DecisionMix({ strategy, decisions }: { strategy: string; decisions: Counted[] }) {
  const all = total(decisions);
  if (!all) {
    return (
      <p className="muted" data-testid="decision-mix" data-empty="true">
        Routing decisions: none recorded ({strategy} does not route by prefix, or no traffic yet).
      </p>
    );
  }
  const sorted = [...decisions].sort((a, b) => b.value - a.value);
  return (
    <div className="decision-mix" data-testid="decision-mix">
      <div className="card-label">Routing decisions (kvgate_routing_decisions_total)</div>
      <div className="mix-bar">
        {sorted.map((c, i) => (
          <span key={c.labels.outcome} className={`mix-${i % 5}`}
            style={{ width: `${(100 * c.value) / all}%` }}
            title={`${c.labels.outcome}: ${c.value}`} />
        ))}
      </div>
      <ul className="inline-list">
        {sorted.map((c, i) => (
          <li key={c.labels.outcome} data-outcome={c.labels.outcome} data-value={c.value}>
            <span className={`swatch mix-${i % 5}`} /> {c.labels.outcome}{" "}
            {formatNumber(c.value, 0)} ({percent(c.value / all)})
          </li>
        ))}
      </ul>
    </div>
  );
}

function Tenants({ tenants, rejections }: {
  tenants: Record<string, TenantStats>; rejections: Counted[];
}) {
  const names = Object.keys(tenants);
  return (
    <section className="tenants" data-testid="tenants">
      <h2>Tenants</h2>
      {names.length === 0 ? (
        <p className="muted">No tenants configured: requests are not authenticated or limited.</p>
      ) : (
        <div className="table-wrap">
          <table className="data">
            <thead>
              <tr>
                <th>tenant</th><th>rpm</th><th>tpm</th><th>budget USD</th><th>requests left</th>
                <th>tokens left</th><th>spent USD</th><th>rejections</th>
              </tr>
            </thead>
            <tbody>
              {names.map((name) => {
                const t = tenants[name];
                const refused = rejections.filter((c) => c.labels.tenant === name);
                return (
                  <tr key={name} data-testid="tenant-row" data-tenant={name}>
                    <td><code>{name}</code></td>
                    <td>{formatNumber(t.rpm, 0)}</td>
                    <td>{formatNumber(t.tpm, 0)}</td>
                    <td>
                      {t.budget_usd === null ? "–" : `${formatNumber(t.budget_usd, 2)} / ${String(t.budget_window)}`}
                    </td>
                    <td>{formatNumber(t.requests_left, 1)}</td>
                    <td>{formatNumber(t.tokens_left, 0)}</td>
                    <td data-field="spent_usd">{formatNumber(t.spent_usd, 6)}</td>
                    <td>
                      {refused.length
                        ? refused.map((c) => `${c.labels.limit} ${formatNumber(c.value, 0)}`).join(" · ")
                        : "0"}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
