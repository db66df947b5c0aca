"""The affinity index's tables: a C core when the package was built with it, else Python.

:class:`~kvgate.routing.affinity.MemoryAffinityIndex` keeps the clock, the TTL and which slot
(bit) each deployment has; a core keeps the tables, by slot: per slot, the blocks it served in
LRU order with the whole second each was last served (its tick), and per block, the slots that
hold it. Both cores mean the same (``tests/routing/test_affinity_memory.py`` holds each to a
walk per deployment); the C one (``_affinity_native.c``, built by ``pip install``) keeps flat
arrays instead of dicts of Python ints, which is what a lookup or an insert per link costs in
Python (issue 15). The Python one is for a machine where the extension could not be compiled.
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from itertools import accumulate, compress, islice, repeat, takewhile
from operator import and_, is_, neg, not_
from typing import Protocol, cast

from kvgate.native import warn_missing

try:
    from kvgate.routing._affinity_native import NativeAffinityCore
except ImportError:  # built without a C compiler: the Python core serves
    NativeAffinityCore = None  # type: ignore[assignment,misc]

#: Whether this installation has the C core.
NATIVE_AVAILABLE = NativeAffinityCore is not None



class AffinityCore(Protocol):
    """Per-slot LRU tables of served blocks and per-block holder sets (no clock: ticks are
    given)."""

    def record(self, slot: int, hashes: Sequence[int], tick: int, /) -> None:
        """``slot`` served ``hashes`` at ``tick``: each moves to the newest end of the slot's
        LRU order, the last hash first (a prompt's tail is evicted before its head); then the
        oldest entries go until the slot holds at most the bound."""
        ...

    def prepare_query(self, slots: Sequence[int], /) -> object:
        """``slots`` in the form :meth:`match` takes (callers keep it for repeated queries)."""
        ...

    def match(self, hashes: Sequence[int], query: object, /) -> list[int]:
        """For each queried slot, how many leading ``hashes`` it holds."""
        ...

    def expire(self, oldest_fresh: int, /) -> int:
        """Drop every entry served before tick ``oldest_fresh``; the oldest tick left (or a
        value above any tick when nothing is left)."""
        ...

    def forget(self, slot: int, /) -> None:
        ...

    def served(self, slot: int, block_hash: int, /) -> int | None:
        """The tick ``slot`` last served the block, if it holds it."""
        ...

    def size(self) -> int:
        """(slot, block) entries held."""
        ...

    def memory_bytes(self) -> int:
        """Bytes the tables take (what the entries' bound costs in memory)."""
        ...


def new_core(max_blocks_per_slot: int, *, native: bool | None = None) -> AffinityCore:
    """The C core where it was built (``native=None``), or the one asked for."""
    if native is None:
        native = NATIVE_AVAILABLE
        if not native:  # routing is the same, but each KV-aware request costs more
            warn_missing("_affinity_native", "the affinity index runs on its Python core, "
                         "60-90 us more CPU per KV-aware request", logger="kvgate.affinity")
    if native:
        if NativeAffinityCore is None:
            raise RuntimeError("kvgate was installed without its C extension "
                               "(kvgate.routing._affinity_native): reinstall with a C compiler")
        return NativeAffinityCore(max_blocks_per_slot)
    return PyAffinityCore(max_blocks_per_slot)


class PyAffinityCore:
    """The tables as dicts. Per slot an insertion-ordered dict, block key -> tick: re-inserting
    a key moves it to the end, so iteration order is LRU order (and, ticks never decreasing,
    oldest first). Per block a bitmask of its holders' slots: a lookup walks the prompt's chain
    once, ANDing masks, instead of once per slot.

    NOTE: memory: the holder masks add one dict entry per *distinct* block (key objects are
    shared), about 40 bytes; 1 million entries with no block shared take about 120 MB.
    """

    def __init__(self, max_blocks_per_slot: int) -> None:
        self._max_blocks = max_blocks_per_slot
        self._blocks: dict[int, dict[int, int]] = {}
        self._holders: dict[int, int] = {}
        self._num_slots = 0
        # One int object per second, shared by every entry written in that second.
        self._tick_object = -1

    def record(self, slot: int, hashes: Sequence[int], tick: int, /) -> None:
        self._num_slots = max(self._num_slots, slot + 1)
        blocks = self._blocks.get(slot)
        if blocks is None:
            blocks = self._blocks[slot] = {}
        if tick == self._tick_object:
            tick = self._tick_object
        else:
            self._tick_object = tick
        keys = list(reversed(hashes))
        previous = list(map(blocks.pop, keys, repeat(None)))
        num_kept = len(blocks)
        blocks.update(zip(keys, repeat(tick)))
        if len(blocks) - num_kept != len(keys):
            # A key listed twice (only arbitrary lists, not chains): it takes the place of its
            # first occurrence in ``hashes``, as re-inserting link by link would.
            unique = list(reversed(dict.fromkeys(hashes)))
            deque(map(blocks.pop, unique), maxlen=0)
            blocks.update(zip(unique, repeat(tick)))
        new_keys = list(compress(keys, map(is_, previous, repeat(None))))
        if new_keys:
            holders, bit = self._holders, 1 << slot
            masks = map(bit.__or__, map(holders.get, new_keys, repeat(0)))
            holders.update(zip(new_keys, masks, strict=True))
        excess = len(blocks) - self._max_blocks
        if excess > 0:
            self._drop(slot, list(islice(blocks, excess)))

    def prepare_query(self, slots: Sequence[int], /) -> object:
        slot_list = list(slots)
        self._num_slots = max(self._num_slots, max(slot_list, default=-1) + 1)
        mask = 0
        for slot in slot_list:
            mask |= 1 << slot
        return slot_list, mask

    def match(self, hashes: Sequence[int], query: object, /) -> list[int]:
        slots, query_mask = cast(tuple[list[int], int], query)
        # alive[k]: the queried slots holding links 0..k-1 (alive[0]: all of them), by C loops
        # that stop at the first empty mask. The sets only shrink, so the masks (as ints)
        # never grow and equal masks form runs, found by bisection.
        alive = list(takewhile(bool, accumulate(map(self._holders.get, hashes, repeat(0)),
                                                and_, initial=query_mask)))
        if not alive or alive[-1] == alive[0]:
            # Nobody, or every queried slot alike (cold prompts; a shared prefix only).
            return [len(alive) - 1 if alive else 0] * len(slots)
        runs = []  # (mask, links matched by the slots whose last run this is)
        start = 0
        while start < len(alive):
            end = bisect_right(alive, -alive[start], lo=start, key=neg)
            runs.append((alive[start], end - 1))
            start = end
        by_slot = _matched_by_slot(runs, self._num_slots)
        return [by_slot[slot] for slot in slots]

    def _drop(self, slot: int, keys: Sequence[int]) -> None:
        """Remove ``keys`` from the slot's LRU dict and its bit from their masks (C loops: a
        cold long prompt on a full slot evicts thousands of keys)."""
        blocks, holders = self._blocks[slot], self._holders
        deque(map(blocks.__delitem__, keys), maxlen=0)
        clear = ~(1 << slot)
        masks = list(map(clear.__and__, map(holders.__getitem__, keys)))
        holders.update(zip(compress(keys, masks), filter(None, masks), strict=True))
        deque(map(holders.__delitem__, compress(keys, map(not_, masks))), maxlen=0)

    def expire(self, oldest_fresh: int, /) -> int:
        oldest_left = NO_TICK
        for slot, blocks in self._blocks.items():
            stale = []
            for key, tick in blocks.items():
                if tick >= oldest_fresh:
                    oldest_left = min(oldest_left, tick)
                    break
                stale.append(key)
            if stale:
                self._drop(slot, stale)
        return oldest_left

    def forget(self, slot: int, /) -> None:
        blocks = self._blocks.get(slot)
        if blocks is not None:
            self._drop(slot, list(blocks))
            del self._blocks[slot]

    def served(self, slot: int, block_hash: int, /) -> int | None:
        blocks = self._blocks.get(slot)
        return None if blocks is None else blocks.get(block_hash)

    def size(self) -> int:
        return sum(len(b) for b in self._blocks.values())

    def memory_bytes(self) -> int:
        """The dicts' tables and the objects they point to, each counted once (keys are
        shared between the two; ticks are shared per-second int objects)."""
        tables = [*self._blocks.values(), self._holders]
        objects = {id(o): o for t in tables for item in t.items() for o in item}
        return (sum(map(sys.getsizeof, tables))
                + sum(map(sys.getsizeof, objects.values())))


def _matched_by_slot(runs: list[tuple[int, int]], num_slots: int) -> list[int]:
    """Leading links matched per slot, from the runs of the shrinking alive masks.

    A slot's count is where the last run holding it ends. Summing each run's mask spread to
    one byte per slot (via its binary digits, in C) counts the runs holding each slot; a slot
    in ``r`` runs matched ``ends[r]`` links.
    """
    if len(runs) > 255:  # a byte per slot would overflow: more runs than happen in practice
        by_slot = [0] * num_slots
        for mask, end in runs:
            for slot in range(num_slots):
                if mask >> slot & 1:
                    by_slot[slot] = end
        return by_slot
    ends = [0, *(end for _, end in runs)]
    spread_sum = sum(int.from_bytes(format(mask, "b").encode().translate(_DIGIT_TO_BYTE), "big")
                     for mask, _ in runs)
    return list(map(ends.__getitem__, spread_sum.to_bytes(num_slots, "little")))


#: Greater than any tick: no entries.
NO_TICK = 1 << 62
#: b"0" -> 0, b"1" -> 1: binary digits to one byte per bit.
_DIGIT_TO_BYTE = bytes.maketrans(b"01", b"\x00\x01")
