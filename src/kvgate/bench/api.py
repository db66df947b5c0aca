"""The load generator as a library: what ``kvgate bench run`` and every scenario call.

    requests = build_requests("chat", WorkloadOptions(model="demo", seed=0))
    result = run_benchmark("http://127.0.0.1:8080", requests, LoadSpec(concurrency=32))
    result.summary["ttft_ms"]["p99"]; result.document()  # JSON-ready, with per-request records

Scenarios already inside an event loop await :func:`benchmark` instead.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import timeit
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from kvgate import __version__
from kvgate.bench.loadgen import LoadProgress, LoadResult, LoadSpec, run_load
from kvgate.bench.request import BenchRequest, RequestRecord
from kvgate.bench.stats import summarize

RESULT_FORMAT = 1
T = TypeVar("T")


@dataclass(slots=True)
class BenchResult:
    """One load run: its summary dict, its records, and what produced it."""

    label: str
    target: str
    load: LoadResult
    summary: dict[str, Any]
    started_at: str
    #: Workload name and parameters, or anything a scenario wants kept with the run.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> list[RequestRecord]:
        return self.load.records

    def document(self, *, include_records: bool = True) -> dict[str, Any]:
        """The run as JSON-ready data: what ``--out`` writes and the report is built from."""
        doc: dict[str, Any] = {
            "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
            "label": self.label,
            "target": self.target,
            "started_at": self.started_at,
            "host": host_info(),
            **self.meta,
            "load": self.load.spec.describe(),
            "summary": self.summary,
        }
        if include_records:
            doc["records"] = [r.to_json() for r in self.load.records]
        return doc


def host_info(*, speed: bool = False) -> dict[str, Any]:
    """The machine a run was on; with ``speed``, how fast it runs Python now
    (:func:`python_speed_us`), for the scenarios whose figures are CPU time."""
    info: dict[str, Any] = {"python": platform.python_version(),
                            "platform": platform.platform(), "cpus": os.cpu_count()}
    if speed:
        info["python_speed_us"] = python_speed_us()
    return info


def python_speed_us(loops: int = 2000, repeat: int = 5) -> float:
    """Microseconds per ``sum(range(1000))``, the best of ``repeat`` timings of ``loops``
    (what ``python -m timeit "sum(range(1000))"`` prints).

    NOTE: on the shared VMs these benchmarks run on it has read 10.8 to 30 us from one hour to
    the next (and moved 1.6x within minutes); a CPU figure without it beside it cannot be
    compared with another run's.
    """
    best_s = min(timeit.repeat("sum(range(1000))", number=loops, repeat=repeat))
    return round(best_s / loops * 1e6, 2)


async def benchmark(
    target: str,
    requests: Sequence[BenchRequest],
    load: LoadSpec,
    *,
    label: str = "run",
    headers: Mapping[str, str] | None = None,
    console: Any = None,
    meta: Mapping[str, Any] | None = None,
) -> BenchResult:
    """Run the load and summarise it; shows a progress bar when given a rich ``console``."""
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    progress = LoadProgress(total=len(requests))
    if console is None:
        result = await run_load(target, requests, load, headers=headers, progress=progress)
    else:
        from kvgate.bench.report import progress_bar

        async with progress_bar(progress, console, label):
            result = await run_load(target, requests, load, headers=headers, progress=progress)
    return BenchResult(label=label, target=target, load=result, summary=summarize(result),
                       started_at=started_at, meta=dict(meta or {}))


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on a fresh event loop, uvloop's when installed (less client overhead per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def run_benchmark(
    target: str,
    requests: Sequence[BenchRequest],
    load: LoadSpec,
    *,
    label: str = "run",
    headers: Mapping[str, str] | None = None,
    console: Any = None,
    meta: Mapping[str, Any] | None = None,
) -> BenchResult:
    """:func:`benchmark` from synchronous code (a scenario, the CLI)."""
    return run_async(benchmark(target, requests, load, label=label, headers=headers,
                               console=console, meta=meta))


def headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a comparison table shows for one run."""
    ttft, latency = summary.get("ttft_ms") or {}, summary.get("latency_ms") or {}
    throughput = summary["throughput"]
    return {
        "ok": summary["requests"]["ok"],
        "errors": summary["requests"]["errors"],
        "ttft_p50_ms": ttft.get("p50"),
        "ttft_p99_ms": ttft.get("p99"),
        "latency_p50_ms": latency.get("p50"),
        "latency_p99_ms": latency.get("p99"),
        "requests_per_s": throughput["requests_per_s"],
        "output_tokens_per_s": throughput["output_tokens_per_s"],
        "routing_affinity": summary["routing_affinity"],
        "cache_hit_ratio": summary["cache_hit_ratio"],
    }


def comparison_document(scenario: str, results: Sequence[BenchResult], *, quick: bool = False,
                        include_records: bool = True, **extra: Any) -> dict[str, Any]:
    """Several runs of one scenario (e.g. one per routing strategy) in one document: a
    ``comparison`` of headline numbers by label, then every run in full under ``runs``."""
    return {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": scenario,
        "quick": quick,
        "host": host_info(),
        **extra,
        "comparison": {r.label: headline(r.summary) for r in results},
        "runs": {r.label: r.document(include_records=include_records) for r in results},
    }


def dump_json(document: Mapping[str, Any]) -> bytes:
    """Indented JSON, except ``records``: one compact record per line, so a run of thousands
    of requests stays a readable, diffable file a fraction of the fully indented size."""
    records = document.get("records")
    head = {k: v for k, v in document.items() if k != "records"}
    text = orjson.dumps(head, option=orjson.OPT_INDENT_2)
    if records is None:
        return text + b"\n"
    lines = b",\n".join(b"    " + orjson.dumps(r) for r in records)
    opener = b',\n  "records": [' if head else b'\n  "records": ['
    body = text[:-1].rstrip()
    return body + opener + (b"\n" + lines + b"\n  ]" if records else b"]") + b"\n}\n"


def write_json(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Write a result document (see :func:`dump_json`) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump_json(document))
    return path


def read_records(document: Mapping[str, Any]) -> list[RequestRecord]:
    """The request records of a written run document (to re-plot or re-summarise it)."""
    return [RequestRecord.from_json(r) for r in document.get("records", ())]
