"""Each real replica runs on a core of its own, every process of it (API server, engine core,
worker): with only the worker's threads pinned, the other processes floated onto the other
replica's core and made one replica up to 2.8x slower than the other, run by run."""

from __future__ import annotations

import os

import pytest

from tests.realvllm.conftest import Fleet

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(900)]


def test_every_process_of_a_replica_runs_on_its_core(fleet: Fleet) -> None:
    fleet.ensure_alive()
    cores = sorted(os.sched_getaffinity(0))  # as the fleet picks them
    for replica in fleet.replicas:
        affinities = replica.affinities()
        # The API server, the engine core and the worker at least (vLLM V1's processes).
        assert len(affinities) >= 3
        assert set(affinities) == {frozenset({cores[replica.index % len(cores)]})}
    if len(cores) >= 2:
        assert fleet.replicas[0].affinities()[0] != fleet.replicas[1].affinities()[0]
