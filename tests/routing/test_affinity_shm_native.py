"""The shared-memory index's C kernel: built by the install (CI requires it), and the same
table, byte for byte, and the same answers as the Python methods over long random runs with
full buckets, expiry, quanta that wrap, many columns and chains past 255 links."""

from __future__ import annotations

import random

import pytest

from kvgate.routing import affinity_shm
from kvgate.routing._shm_native import ShmKernel
from kvgate.routing.affinity_shm import SharedMemoryAffinityIndex
from kvgate.routing.shm_table import AffinityTable
from tests.support.clock import FakeClock


def test_the_install_built_the_kernel_and_the_index_uses_it() -> None:
    assert affinity_shm.NATIVE_AVAILABLE
    index = SharedMemoryAffinityIndex(AffinityTable.private(1000), namespace="m", ttl_s=60)
    assert isinstance(index._kernel, ShmKernel)


def pair(entries: int, columns: int, ttl_s: float, clock: FakeClock
         ) -> tuple[SharedMemoryAffinityIndex, SharedMemoryAffinityIndex]:
    return tuple(  # type: ignore[return-value]
        SharedMemoryAffinityIndex(AffinityTable.private(entries, columns), namespace="m",
                                  ttl_s=ttl_s, clock=clock, native=native)
        for native in (True, False))


@pytest.mark.parametrize(("seed", "entries", "columns", "ttl_s"), [
    (1, 64, 5, 30),          # 8 buckets: nearly every record evicts
    (2, 4000, 70, 30),       # 9 tick words
    (3, 400, 130, 600),      # a quantum of 5 s, ticks that wrap mod 255
    (4, 100_000, 8, 20),
])
def test_same_table_and_answers_as_the_python_methods(seed: int, entries: int, columns: int,
                                                       ttl_s: float) -> None:
    rng = random.Random(seed)
    clock = FakeClock(1000.0)
    c_index, py_index = pair(entries, columns, ttl_s, clock)
    deployments = [f"d{i}" for i in range(columns + 3)]  # the last 3 are never tracked
    roots = [[rng.getrandbits(64) for _ in range(rng.randint(1, 20))] for _ in range(6)]
    prompts = [root + [rng.getrandbits(64) for _ in range(rng.randint(0, 300))]
               for root in roots for _ in range(4)]
    for step in range(1500):
        roll = rng.random()
        prompt = rng.choice(prompts)[:rng.randint(0, 320)]
        if roll < 0.5:
            deployment = rng.choice(deployments)
            c_index.record(deployment, prompt)
            py_index._record_py(deployment, prompt)
        elif roll < 0.6:
            clock.now_s += rng.choice([0.3, 1.0, 7.0, ttl_s / 2, ttl_s * 3])
        queried = rng.sample(deployments, rng.randint(1, len(deployments)))
        assert c_index.match_now(prompt, queried) == py_index._match_py(prompt, queried), step
        if entries < 10_000 or step % 100 == 0:  # whole tables: every step where small
            assert c_index._table.buffer[:] == py_index._table.buffer[:], step
    assert c_index._table.buffer[:] == py_index._table.buffer[:]


def test_bad_input_changes_nothing() -> None:
    clock = FakeClock(50.0)
    index, _ = pair(1000, 8, 30, clock)
    index.record("a", [1, 2, 3])
    before = index._table.buffer[:]
    with pytest.raises(TypeError):
        index.record("a", [4, "5", 6])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        index.match_now([1, 2.0], ["a"])  # type: ignore[list-item]
    assert index._table.buffer[:] == before
    assert index.match_now([1, 2, 3, 4], ["a", "b"]) == [3, 0]
    # Hashes are taken mod 2**64, as the Python methods take them.
    index.record("b", [-1, 2**70 + 5])
    assert index.match_now([2**64 - 1, 5], ["b"]) == [2]


def test_a_kernel_refuses_a_table_that_does_not_fit_its_buffer() -> None:
    table = AffinityTable.private(1000)
    with pytest.raises(ValueError):
        ShmKernel(table.buffer, table.keys_word, table.records_word, table.tick_words,
                  table.num_buckets * 4, 1)
    with pytest.raises(ValueError):
        ShmKernel(table.buffer, table.keys_word, table.records_word, table.tick_words, 3, 1)
    with pytest.raises(BufferError):
        ShmKernel(b"read-only", 0, 0, 1, 1, 1)
    kernel = ShmKernel.__new__(ShmKernel)
    with pytest.raises(RuntimeError):
        kernel.match([1], [0], 0, 1, 1)


def test_an_install_without_the_kernel_says_so_once_and_routes_in_python(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from kvgate import native

    monkeypatch.setattr(affinity_shm, "NATIVE_AVAILABLE", False)
    monkeypatch.setattr(native, "_warned", set())
    with caplog.at_level("WARNING", logger="kvgate.routing"):
        first, second = (SharedMemoryAffinityIndex(AffinityTable.private(1000), namespace="m",
                                                   ttl_s=60) for _ in range(2))
    assert first._kernel is None and second._kernel is None
    warnings = [r for r in caplog.records if "_shm_native is not built" in r.message]
    assert len(warnings) == 1
    first.record("a", [1, 2])
    assert first.match_now([1, 2, 3], ["a"]) == [2]
