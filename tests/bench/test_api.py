"""The library entry points scenarios use: benchmark(), result documents, tables."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from kvgate.bench.api import (
    benchmark,
    comparison_document,
    dump_json,
    read_records,
    write_json,
)
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.plots import plot_latency_cdfs
from kvgate.bench.report import comparison_table, print_summary
from tests.bench.fake_server import fake_server, instructed


async def test_runs_compare_in_one_document_and_table(tmp_path: Path) -> None:
    output = io.StringIO()
    console = Console(file=output, width=160, force_terminal=False)
    async with fake_server() as (url, _):
        fast = await benchmark(url, [instructed(ttft_ms=5)] * 6, LoadSpec(concurrency=3),
                               label="fast", console=console, meta={"workload": {"name": "x"}})
        slow = await benchmark(url, [instructed(ttft_ms=25)] * 6, LoadSpec(concurrency=3),
                               label="slow")
    document = comparison_document("compare", [fast, slow], quick=True, strategy="test")
    assert list(document["comparison"]) == ["fast", "slow"]
    assert document["comparison"]["fast"]["ttft_p50_ms"] < document["comparison"]["slow"][
        "ttft_p50_ms"]
    assert document["runs"]["fast"]["workload"] == {"name": "x"}
    assert document["strategy"] == "test"

    path = write_json(tmp_path / "r.json", document)
    again = json.loads(path.read_text())
    assert again == json.loads(dump_json(document))
    assert [r.to_json() for r in read_records(again["runs"]["slow"])] == [
        r.to_json() for r in slow.records]

    print_summary(fast.summary, console)
    console.print(comparison_table(document["comparison"], "compare"))
    text = output.getvalue()
    assert "requests ok / sent" in text and "slow" in text and "TTFT" in text

    png = plot_latency_cdfs({"fast": fast.records, "slow": slow.records}, tmp_path / "c.png")
    assert png.read_bytes().startswith(b"\x89PNG")
