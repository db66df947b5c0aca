"""VirtualCluster: many engines on one virtual clock."""

from __future__ import annotations

import random

import pytest

from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.virtual import VirtualCluster
from tests.sim.conftest import LLAMA, request


def _cluster(n: int) -> VirtualCluster:
    return VirtualCluster([Engine(LLAMA, EngineConfig(num_gpu_blocks=2000)) for _ in range(n)])


def _workload(seed: int) -> list[tuple[float, int, list[int]]]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(300, 20000) for _ in range(512)] for _ in range(4)]
    t, out = 0.0, []
    for _ in range(200):
        t += rng.expovariate(100)
        out.append((t, rng.randrange(8), rng.choice(prefixes) + [rng.randrange(300, 900)] * 20))
    return out


def _run(seed: int) -> list[float]:
    cluster = _cluster(8)
    for arrival, target, prompt in _workload(seed):
        cluster.advance_to(arrival)
        cluster.submit(target, request(prompt, num_output=16))
    cluster.run_until_idle()
    assert len(cluster.finished) == 200
    assert not any(engine.has_unfinished_requests() for engine in cluster.engines)
    # In submission order: ids come from a counter shared by the whole test session, so
    # sorting them as strings ("r99" > "r100") would order two runs differently.
    return [stats.ttft_s or 0.0 for _, stats in sorted(cluster.finished,
                                                         key=lambda x: int(x[1].request_id[1:]))]


def test_runs_are_deterministic_and_complete() -> None:
    assert _run(3) == _run(3)


def test_affinity_beats_random_placement() -> None:
    def mean_ttft(sticky: bool) -> float:
        cluster = _cluster(4)
        for arrival, target, prompt in _workload(5):
            cluster.advance_to(arrival)
            index = (prompt[0] % 4) if sticky else target % 4
            cluster.submit(index, request(prompt, num_output=8))
        cluster.run_until_idle()
        ttfts = [stats.ttft_s or 0.0 for _, stats in cluster.finished]
        return sum(ttfts) / len(ttfts)
    assert mean_ttft(sticky=True) < mean_ttft(sticky=False)


def test_clock_only_moves_forward_and_abort_works() -> None:
    cluster = _cluster(2)
    r = request([5] * 100, num_output=500)
    cluster.submit(1, r)
    cluster.advance_to(0.2)
    assert cluster.engines[1].num_running == 1
    assert cluster.abort(1, r.request_id)
    assert r.finish_reason == "abort"
    cluster.run_until_idle()
    with pytest.raises(ValueError):
        cluster.advance_to(0.1)


def test_outputs_arrive_in_time_order() -> None:
    cluster = _cluster(3)
    for k in range(3):
        cluster.submit(k, request([k + 300] * (1000 * (k + 1)), num_output=4))
    outputs = cluster.run_until_idle()
    firsts = {o.request_id: i for i, (_, o) in enumerate(outputs) if o.first_output_index == 0}
    ordered = sorted(firsts, key=firsts.get)  # type: ignore[arg-type]
    assert len(ordered) == 3
    ttft = {stats.request_id: stats.ttft_s for _, stats in cluster.finished}
    assert [ttft[i] for i in ordered] == sorted(ttft[i] for i in ordered)  # type: ignore[type-var]
