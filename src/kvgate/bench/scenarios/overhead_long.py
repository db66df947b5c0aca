"""The ``overhead`` scenario's long-prompt case: KV-aware routing on the hot path.

Run after the plain case, in the same run and in front of the same zero upstream: ~8k-token
prompts (a ~7k-token system prompt every request shares, then a ~1k-token user turn that starts
with the request's number, so no two requests are equal) and KVGate with :data:`DEPLOYMENTS`
deployments of one provider, once with ``round_robin`` and once with ``prefix_kv_aware``
(two gateways, the two arms). ``direct`` is the baseline; nginx and vllm-router, which forward
the body as it is, join when the plain case ran them. Tokens are estimated at 4 characters.

Measured per target as in the plain case, blocking only: concurrency 1 (interleaved blocks,
``added`` = target - direct) and concurrency 32 (wrk posting a new user turn per request;
req/s and the hop's CPU per request). Per KVGate arm: the routing outcomes it counted
(``kvgate_routing_decisions_total``: hit / spill / cold; round_robin counts none) and how many
deployments took requests (``kvgate_upstream_attempts_total``), and the cyclic collector's
passes and their time per request (``kvgate_gc_pause_seconds``). ``prefix_vs_round_robin`` is
the difference issue 15 targets: added p50 in microseconds and the CPU-per-request ratio.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from typing import Any

import orjson

from kvgate.bench.rawhttp import rss_mb
from kvgate.bench.scenarios.overhead_measure import (
    Sizes,
    client_pinned,
    latency_c1,
    throughput_c32,
)
from kvgate.bench.scenarios.overhead_report import summarise_c32, with_added
from kvgate.bench.scenarios.overhead_targets import MODEL, Target, Targets

DEPLOYMENTS = 64
STRATEGIES: tuple[str, ...] = ("round_robin", "prefix_kv_aware")
ARMS: tuple[str, ...] = tuple(f"kvgate-{s}" for s in STRATEGIES)
#: Peers from the plain case that also take the long prompts (they only forward the body).
PEERS: tuple[str, ...] = ("nginx", "vllm-router")
SYSTEM_CHARS = 28_000
USER_CHARS = 4_000
CHARS_PER_TOKEN = 4
_PLACEHOLDER = "@@N@@"
_DECISION = re.compile(r'^kvgate_routing_decisions_total\{[^}]*outcome="(\w+)"[^}]*\} ([\d.e+]+)',
                       re.M)
_ATTEMPT = re.compile(r'^kvgate_upstream_attempts_total\{[^}]*deployment="([^"]+)"[^}]*\} '
                      r'([\d.e+]+)', re.M)
_GC = re.compile(r'^kvgate_gc_pause_seconds_(count|sum)\{generation="\d+"\} ([\d.e+-]+)', re.M)


def _text(chars: int, label: str) -> str:
    """Deterministic prose of exactly ``chars`` characters, no JSON escapes, no ``]]``."""
    sentences: list[str] = []
    size, i = 0, 0
    while size < chars:
        sentence = (f"{label} rule {i}: answer the question that follows with care, cite the "
                    f"section it rests on and keep the reply short. ")
        sentences.append(sentence)
        size += len(sentence)
        i += 1
    return "".join(sentences)[:chars]


def long_body() -> tuple[bytes, bytes]:
    """(head, tail): request ``n``'s body is ``head + str(n) + tail``."""
    user = f"Question {_PLACEHOLDER}: " + _text(USER_CHARS, "user")
    body = orjson.dumps({
        "model": MODEL, "max_tokens": 8,
        "messages": [{"role": "system", "content": _text(SYSTEM_CHARS, "system")},
                     {"role": "user", "content": user[:USER_CHARS]}],
    })
    head, tail = body.split(_PLACEHOLDER.encode())
    return head, tail


def prompt_facts() -> dict[str, Any]:
    head, tail = long_body()
    return {"system_chars": SYSTEM_CHARS, "user_chars": USER_CHARS,
            "approx_tokens": (SYSTEM_CHARS + USER_CHARS) // CHARS_PER_TOKEN,
            "chars_per_token": CHARS_PER_TOKEN, "body_bytes": len(head) + len(tail) + 1,
            "distinct_user_turn": "starts with the request's number, per target"}


def gateway_counts(target: Target) -> dict[str, Any]:
    """Routing outcomes, deployments that took attempts and the cyclic collector's passes,
    from the gateway's /metrics."""
    with urllib.request.urlopen(target.process.url + "/metrics", timeout=10) as response:
        return counts_from_metrics(response.read().decode())


def counts_from_metrics(text: str) -> dict[str, Any]:
    """:func:`gateway_counts` from a /metrics exposition."""
    collector: dict[str, float] = {"count": 0.0, "sum": 0.0}
    for kind, value in _GC.findall(text):
        collector[kind] += float(value)
    outcomes: Counter[str] = Counter()
    for outcome, value in _DECISION.findall(text):
        outcomes[outcome] += int(float(value))
    attempts: Counter[str] = Counter()
    for deployment, value in _ATTEMPT.findall(text):
        attempts[deployment] += int(float(value))
    return {"outcomes": dict(outcomes), "attempts": dict(attempts),
            "gc_passes": int(collector["count"]), "gc_s": collector["sum"]}


def counts_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What happened between two :func:`gateway_counts`: outcomes, attempts, deployments
    used, and the collector's passes with their time per attempt."""
    outcomes = {k: v - before["outcomes"].get(k, 0) for k, v in after["outcomes"].items()}
    attempts = {k: v - before["attempts"].get(k, 0) for k, v in after["attempts"].items()}
    total = sum(attempts.values())
    gc_s = after["gc_s"] - before["gc_s"]
    return {"outcomes": {k: v for k, v in sorted(outcomes.items()) if v},
            "attempts": total,
            "deployments_used": sum(1 for v in attempts.values() if v > 0),
            "gc_passes": after["gc_passes"] - before["gc_passes"],
            "gc_us_per_attempt": round(gc_s / total * 1e6, 2) if total else None}


def measure_long(targets: Targets, plain: list[Target], sizes: Sizes, *, use_wrk: bool,
                 console: Any) -> dict[str, Any]:
    """Start the two KVGate arms into ``targets``' stack and measure them next to ``direct``
    and the plain case's surviving nginx and vllm-router (``plain``)."""
    first_arm = len(targets.running)
    for strategy, name in zip(STRATEGIES, ARMS, strict=True):
        targets.add(name, targets.kvgate_routed(strategy, DEPLOYMENTS), console)
    arms = targets.running[first_arm:]
    running = ([t for t in plain if t.name == "direct"] + arms
               + [t for t in plain if t.name in PEERS])
    rss = {t.name: {"idle": rss_mb(t.pid)} for t in running}
    if console is not None:
        console.print(f"long prompts: measuring {', '.join(t.name for t in running)} ...")
    body = long_body()
    failed: dict[str, str] = {}
    reconnects: dict[str, int] = {}
    counts = {t.name: [gateway_counts(t)] for t in arms}
    with client_pinned():
        c1 = latency_c1(running, body, sizes.requests_c1, sizes, stream=False, failed=failed,
                        reconnects=reconnects)
        for target in arms:
            counts[target.name].append(gateway_counts(target))
        c32 = throughput_c32(running, body, sizes, use_wrk=use_wrk, failed=failed)
    for target in arms:
        counts[target.name].append(gateway_counts(target))
    for target in running:
        rss[target.name]["after_load"] = rss_mb(target.pid)
    document: dict[str, Any] = {
        "prompt": prompt_facts(),
        "deployments": DEPLOYMENTS,
        "targets": {t.name: t.facts for t in running},
        "failed": failed,
        "c1_idle_reconnects": reconnects,
        "routing": {name: {"c1": counts_delta(seen[1], seen[0]),
                           "c32": counts_delta(seen[2], seen[1])}
                    for name, seen in counts.items()},
        "c1_blocking_ms": with_added(c1),
        "c32_blocking": summarise_c32(c32),
        "rss_mb": rss,
    }
    document["comparison"] = long_comparison(document)
    document["prefix_vs_round_robin"] = prefix_vs_round_robin(document)
    return document


def long_comparison(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name in document["rss_mb"]:
        c1 = document["c1_blocking_ms"].get(name, {})
        c32 = document["c32_blocking"].get(name, {})
        cpu = c32.get("cpu_us_per_request")
        rows[name] = {
            "c1_p50_ms": c1.get("p50"), "c1_p99_ms": c1.get("p99"),
            "added_p50_ms": c1.get("added_p50"), "added_p99_ms": c1.get("added_p99"),
            "c32_requests_per_s": c32.get("requests_per_s"), "cpu_us_per_request": cpu,
            "one_core_requests_per_s": round(1e6 / cpu) if cpu else None,
            "errors": {"failed": document["failed"].get(name),
                       "non_2xx": c32.get("non_2xx"), "socket_errors": c32.get("socket_errors")},
            "rss_idle_mb": document["rss_mb"][name].get("idle"),
            "rss_after_load_mb": document["rss_mb"][name].get("after_load"),
        }
    return rows


def _clean(row: dict[str, Any] | None) -> bool:
    if row is None:
        return False
    errors = row["errors"]
    return errors["failed"] is None and errors["non_2xx"] == 0 and errors["socket_errors"] == 0


def prefix_vs_round_robin(document: dict[str, Any]) -> dict[str, Any]:
    """prefix_kv_aware minus round_robin: what KV-aware routing adds on the hot path."""
    rr = document["comparison"].get("kvgate-round_robin")
    px = document["comparison"].get("kvgate-prefix_kv_aware")
    if rr is None or px is None or rr["c1_p50_ms"] is None or px["c1_p50_ms"] is None:
        return {"measured": False}

    def us(key: str) -> float:
        return round((float(px[key]) - float(rr[key])) * 1000, 1)

    cpu_ratio = (round(px["cpu_us_per_request"] / rr["cpu_us_per_request"], 3)
                 if px["cpu_us_per_request"] and rr["cpu_us_per_request"] else None)
    rps_ratio = (round(px["c32_requests_per_s"] / rr["c32_requests_per_s"], 3)
                 if px["c32_requests_per_s"] and rr["c32_requests_per_s"] else None)
    clean = _clean(rr) and _clean(px)
    return {
        "measured": True,
        "added_p50_us": us("c1_p50_ms"), "added_p99_us": us("c1_p99_ms"),
        "cpu_us_per_request": (round(px["cpu_us_per_request"] - rr["cpu_us_per_request"], 1)
                               if cpu_ratio is not None else None),
        "cpu_ratio": cpu_ratio, "c32_requests_per_s_ratio": rps_ratio,
        # A run with any error or refusal in either arm is not a result.
        "clean": clean,
        "issue_15_targets": {"added_p50_us_max": 50, "cpu_ratio_max": 1.2,
                             "met": (clean and us("c1_p50_ms") <= 50 and cpu_ratio is not None
                                     and cpu_ratio <= 1.2)},
    }


def print_long_table(long: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    prompt = long["prompt"]
    table = Table(title=f"overhead, long prompts (~{prompt['approx_tokens']:,} tokens, shared "
                        f"system prompt + distinct user turn), KVGate over {long['deployments']} "
                        "deployments: c=1 added ms (target - direct); c=32 blocking req/s and "
                        "hop CPU per request", title_justify="left")
    columns = (("+p50", "added_p50_ms"), ("+p99", "added_p99_ms"),
               ("rps", "c32_requests_per_s"), ("CPU us/req", "cpu_us_per_request"))
    table.add_column("target", no_wrap=True)
    for title, _ in columns:
        table.add_column(title, justify="right")
    table.add_column("errors", justify="right")
    for name, row in long["comparison"].items():
        cells = [name]
        for _, key in columns:
            value = row.get(key)
            cells.append("-" if value is None else f"{value:,.3f}" if abs(value) < 10
                         else f"{value:,.0f}")
        errors = row["errors"]
        cells.append("refused" if errors["failed"] else
                     str((errors["non_2xx"] or 0) + (errors["socket_errors"] or 0)))
        table.add_row(*cells)
    console.print(table)
    for name, seen in long["routing"].items():
        console.print(f"{name}: c=1 {seen['c1']}; c=32 {seen['c32']}")
    for name, error in long["failed"].items():
        console.print(f"[yellow]{name}[/]: {error.strip().splitlines()[0] if error else error}")
    console.print(f"prefix_kv_aware - round_robin: {long['prefix_vs_round_robin']}")
