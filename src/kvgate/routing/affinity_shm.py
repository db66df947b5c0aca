"""The affinity index in shared memory, so ``kvgate run --workers N`` routes as one process.

Every worker maps one table that the parent process created before starting them
(:class:`AffinitySegment`): a record made by any worker is seen by every worker's next match,
with no round trip (Redis costs one per request, and is for gateways on several hosts).

Layout (:mod:`kvgate.routing.shm_table`: 8-byte words, a header, a directory of deployments,
every slot's key, every record, then the workers' placed-KV board)::

    directory entry = (model tag, deployment tag); a deployment's column is its rank among
                      its model's entries (first come, first served under ``flock``, kept)
    key    = (block hash XOR model tag) mod 2**64, 0 = empty
    record = meta: newest second (32 bits) | depth rank (8 bits) | key check (24 bits),
             then a tick byte per column (``ceil(columns / 8)`` words): the quantum in
             which that deployment last served the block, mod 255, + 1; 0 = not held

One entry per (model, block) holds every deployment's tick, like the memory index's holder
masks, so ``match`` walks the prompt's chain once for all deployments, dropping them as they
stop matching (``match`` + ``record`` of 128 links: 600 -> 120 us at 64 deployments).
It gallops (links 1, 2, 4, ... then bisects) over the runs where nobody drops out: exact while
what a deployment holds of a prompt is a leading run, which ``record`` keeps true (a chain is
written whole, heads outrank tails on eviction). A key lives in the bucket of 8 slots its low
bits name; a bucket's keys are 64 contiguous bytes that one C-speed ``mmap.find`` searches.

No locks on the request path: every store is one aligned 8-byte word (``memoryview.cast('Q')``
item assignment is one ``memcpy`` of 8 bytes, a single move on x86-64 and arm64). A writer
replacing a slot clears the key, writes the record, then the new key; a reader re-reads the
key after the record and checks the key check. Two workers writing one entry at once may
overwrite each other's byte (a word is read, changed, stored) or store one key twice: a lost
or duplicated hint, never a wrong structure. A tick byte compares modulo 255, so none may live
255 quanta: a write zeroes its entry's expired bytes and a reader ignores an entry whose
newest second expired, so no byte trusted is older than two TTLs (the quantum sees to it).

Differences from the memory index (same contract):

* TTL counts whole quanta: exact to the second up to a 125 s TTL, else up to one quantum
  (3 s at the default 300 s) late;
* the bound is the table's: slots = the sharing models' ``max_tracked_blocks`` summed, rounded
  up to a power of two, one slot per block with all its holders (a prefix every deployment
  holds takes one slot, not one per deployment); columns = the largest model's deployments
  (64 for a private table): a deployment past them is never tracked and matches 0. A slot
  takes 16 + columns bytes (rounded up to 8): 1M slots are 24 MiB up to 8 deployments, 80
  MiB at 64 (more than Docker's default /dev/shm: ``kvgate run`` then falls back, below);
* eviction replaces the stalest slot of the full bucket (oldest second, then the deepest link)
  instead of the exact least recently used entry; a head lost to a race can be skipped over;
  ``size()`` is -1 (counting would scan the table); ``forget`` scans the whole table (rare).

Linux only (a file under ``/dev/shm``); ``kvgate run`` falls back to a memory index per worker,
with a warning, where there is no room for it.

``match_now`` and ``record`` run in C (``_shm_native.c``: the same steps and stores over the
mapping's words, no bytes objects per link) where the package was built with it on a
little-endian host; ``_match_py`` and ``_record_py`` are the same in Python, the fallback and
the tests' reference (the tables they leave are compared byte for byte).
"""

from __future__ import annotations

import mmap
import sys
import time
from collections.abc import Callable, Sequence
from itertools import chain, repeat

import xxhash

from kvgate.native import warn_missing
from kvgate.routing.placed_shm import SharedPlacements
from kvgate.routing.shm_table import SLOTS_PER_BUCKET, AffinityTable

try:
    from kvgate.routing._shm_native import ShmKernel
except ImportError:  # no C compiler at install, or a big-endian host: the Python methods serve
    ShmKernel = None  # type: ignore[assignment,misc]

#: Whether this installation has the C kernel.
NATIVE_AVAILABLE = ShmKernel is not None

_BUCKET_BYTES = 8 * SLOTS_PER_BUCKET
_MASK64 = (1 << 64) - 1
_CHECK_MASK = (1 << 24) - 1
_TICK_MASK = (1 << 32) - 1
#: A link's rank bits in its meta word, by depth: deeper links rank lower (255 and beyond: 0).
_RANKS = [(255 - depth) << 24 for depth in range(255)]
_BYTE_ORDER = sys.byteorder  # memoryview.cast("Q") stores native-endian words
_LITTLE = _BYTE_ORDER == "little"


class SharedMemoryAffinityIndex:
    """Implements :class:`~kvgate.routing.affinity.AffinityIndex` on an :class:`AffinityTable`.

    ``namespace`` (the model's name) keeps models apart in a table they share; every process
    that maps the table sees every other's records at once.
    """

    def __init__(self, table: AffinityTable, *, namespace: str, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 native: bool | None = None) -> None:
        """``native``: the C kernel (None: where it was built)."""
        # NOTE: time.monotonic is CLOCK_MONOTONIC, one clock for every process on the host,
        # so seconds written by one worker compare with another's.
        self._table = table
        self._buffer, self._find, self._words = table.buffer, table.buffer.find, table.words
        self._bucket_mask = table.num_buckets - 1
        self._first_key, self._first_record = table.keys_word, table.records_word
        self._stride, self._tick_bytes = 1 + table.tick_words, 8 * table.tick_words
        self._namespace = namespace.encode()
        self._model_tag = xxhash.xxh3_64_intdigest(b"model\0" + self._namespace) or 1
        self._ttl_s = ttl_s
        self._quantum = max(1, -(-int(2 * ttl_s) // 250))
        self._clock = clock
        self._columns: dict[str, int | None] = {}
        self._queries: dict[tuple[str, ...], tuple[list[int], int]] = {}
        self._tables_at: tuple[int, int] = (-1, -1)
        self._fresh_table = self._keep_table = bytes(256)
        #: Quanta a tick byte may lag this one's and still be fresh (the C kernel's form of
        #: the byte tables).
        self._max_age = 0
        if native is None:
            native = NATIVE_AVAILABLE
            if not native:  # the same index, at several times the CPU per lookup
                warn_missing("_shm_native", "the workers' shared affinity index runs in "
                             "Python, about 100 us more CPU per KV-aware request")
        if native and ShmKernel is None:
            raise RuntimeError("kvgate was installed without its C extension "
                               "(kvgate.routing._shm_native): reinstall with a C compiler")
        self._kernel = ShmKernel(
            table.buffer, table.keys_word, table.records_word, table.tick_words,
            table.num_buckets, self._model_tag) if native else None

    def _column(self, deployment_id: str) -> int | None:
        """The deployment's byte in every entry: registered once, then read per request."""
        if deployment_id not in self._columns:
            self._columns[deployment_id] = self._table.column(self._model_tag,
                                                              self._tag(deployment_id))
        return self._columns[deployment_id]

    def _tag(self, deployment_id: str) -> int:
        return xxhash.xxh3_64_intdigest(self._namespace + b"\0" + deployment_id.encode()) or 1

    def _query(self, deployment_ids: Sequence[str]) -> tuple[list[int], int]:
        """(columns, one byte set per tracked column): the strategy asks with one id list."""
        key = tuple(deployment_ids)
        query = self._queries.get(key)
        if query is None:
            if len(self._queries) >= 64:
                self._queries.clear()
            # An untracked deployment reads the byte past the last column, always 0.
            columns = [self._tick_bytes if (column := self._column(deployment_id)) is None
                       else column for deployment_id in key]
            mask = sum(1 << (8 * column) for column in columns if column < self._tick_bytes)
            query = self._queries[key] = (columns, mask)
        return query

    def _now(self) -> tuple[int, int, int]:
        """(this second, the oldest fresh second, this second's tick byte); rebuilds the byte
        tables (fresh tick -> 1 / itself, stale -> 0) when the quantum or the window moves."""
        now = self._clock()
        now_s, oldest_fresh = int(now), int(now - self._ttl_s)
        now_q, oldest_q = now_s // self._quantum, oldest_fresh // self._quantum
        tick = now_q % 255 + 1
        if (now_q, oldest_q) != self._tables_at:
            max_age = self._max_age = now_q - oldest_q
            fresh = [0] + [int((tick - value) % 255 <= max_age) for value in range(1, 256)]
            self._fresh_table = bytes(fresh)
            self._keep_table = bytes(value * keep for value, keep in enumerate(fresh))
            self._tables_at = (now_q, oldest_q)
        return now_s, oldest_fresh, tick

    def _slot(self, key: int) -> int:
        """The key's slot index in the table, or -1."""
        slot = (key & self._bucket_mask) * SLOTS_PER_BUCKET
        if self._words[self._first_key + slot] == key:
            return slot  # most keys sit in their bucket's first slot while it is not full
        start = (self._first_key + slot) * 8
        found = self._find(key.to_bytes(8, _BYTE_ORDER), start, start + _BUCKET_BYTES)
        # Absent, or a match straddling two keys: -1.
        return -1 if found < 0 or found & 7 else (found >> 3) - self._first_key

    def _holders(self, block_hash: int, oldest_fresh: int) -> int:
        """One byte per column, 1 where that deployment holds the block fresh."""
        key = ((block_hash ^ self._model_tag) & _MASK64) or 1
        slot = self._slot(key)
        if slot < 0:
            return 0
        record = self._first_record + slot * self._stride
        meta = self._words[record]
        ticks = self._buffer[8 * record + 8:8 * record + 8 + self._tick_bytes]
        # Re-read the key after the record: a writer replacing the slot clears it first.
        if (self._words[self._first_key + slot] != key or meta & _CHECK_MASK != key >> 40
                or meta >> 32 < oldest_fresh):
            return 0
        return int.from_bytes(ticks.translate(self._fresh_table), "little")

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        return self.match_now(hashes, deployment_ids)

    def match_now(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        if self._kernel is None:
            return self._match_py(hashes, deployment_ids)
        _, oldest_fresh, tick = self._now()
        return self._kernel.match(hashes, self._query(deployment_ids)[0], oldest_fresh, tick,
                                  self._max_age)

    def _match_py(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        _, oldest_fresh, _ = self._now()
        columns, alive = self._query(deployment_ids)
        holders, num_links = self._holders, len(hashes)
        # Alive masks (one byte per column) and the links matched by the columns dropping out,
        # from the start and at each drop; ends[0] is for columns never alive.
        lefts, ends = [alive], [0]
        held = 0  # every alive column holds the first `held` links
        while alive and held < num_links:
            # Gallop: probe links held+1, held+2, held+4, ... while every alive column holds
            # them; then bisect for the first link some alive column lacks.
            step, lost_at = 1, 0
            while not lost_at and held < num_links:
                probe = min(held + step, num_links)
                left = alive & holders(hashes[probe - 1], oldest_fresh)
                if left == alive:
                    held, step = probe, 2 * step
                else:
                    lost_at = probe
            if not lost_at:
                break
            while lost_at - held > 1:
                middle = (held + lost_at) // 2
                now_left = alive & holders(hashes[middle - 1], oldest_fresh)
                if now_left == alive:
                    held = middle
                else:
                    lost_at, left = middle, now_left
            lefts.append(left)
            ends.append(held)
            alive, held = left, lost_at
        ends.append(held)
        # A column's byte in the sum counts the masks it is in: 1 + the drops it outlived.
        outlived: Sequence[int]
        if len(lefts) < 256:
            outlived = sum(lefts).to_bytes(self._tick_bytes + 1, "little")
        else:  # more drops than a byte counts (over 254 deployments): column by column
            outlived = [sum(left >> 8 * column & 1 for left in lefts)
                        for column in range(self._tick_bytes + 1)]
        return [ends[outlived[column]] for column in columns]

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        if self._kernel is None:
            self._record_py(deployment_id, hashes)
        elif (column := self._column(deployment_id)) is not None:  # else: never tracked
            now_s, oldest_fresh, tick = self._now()
            self._kernel.record(column, hashes, now_s, oldest_fresh, tick, self._max_age)

    def _record_py(self, deployment_id: str, hashes: Sequence[int]) -> None:
        if (column := self._column(deployment_id)) is None:
            return  # past the table's columns: never tracked
        now_s, oldest_fresh, tick = self._now()
        words, buffer, find_slot, keep = self._words, self._buffer, self._slot, self._keep_table
        first_key, first_record, stride = self._first_key, self._first_record, self._stride
        bucket_mask, model_tag, tick_bytes = self._bucket_mask, self._model_tag, self._tick_bytes
        # The column's byte in its word: byte ``column`` of the record's ticks either way.
        own_word, shift = 1 + column // 8, 8 * (column % 8 if _LITTLE else 7 - column % 8)
        own_clear, own_tick = ~(0xFF << shift) & _MASK64, tick << shift
        second = now_s & _TICK_MASK
        # The deeper the link, the lower its rank: among entries of the same second the bucket
        # evicts a prompt's tail before its head, so what remains is a leading run.
        for block_hash, rank in zip(hashes, chain(_RANKS, repeat(0)), strict=False):
            key = ((block_hash ^ model_tag) & _MASK64) or 1
            meta = second << 32 | rank | key >> 40
            bucket = (key & bucket_mask) * SLOTS_PER_BUCKET
            slot = bucket if words[first_key + bucket] == key else find_slot(key)
            if slot >= 0:
                record = first_record + slot * stride
                old_meta = words[record]
                own = words[record + own_word]
                if old_meta >> 32 != second:
                    # A new second: zero the expired bytes, so none lives long enough to
                    # wrap around (within one second none expires).
                    _keep_fresh(words, buffer, record, tick_bytes, keep,
                                old_meta >> 32 < oldest_fresh)
                    own = words[record + own_word]
                elif old_meta == meta and own >> shift & 0xFF == tick:
                    continue  # written this second already: nothing to store
                words[record + own_word] = own & own_clear | own_tick
                if old_meta != meta:
                    words[record] = meta
                continue
            # The stalest slot: empty ones have meta 0; otherwise the oldest second, then the
            # lowest rank (the deepest link).
            first = first_record + bucket * stride
            metas = words[first:first + SLOTS_PER_BUCKET * stride:stride].tolist()
            slot = bucket + metas.index(min(metas))
            record = first_record + slot * stride
            words[first_key + slot] = 0  # readers skip the slot while its record changes
            words[record + 1:record + stride] = memoryview(bytes(tick_bytes)).cast("Q")
            words[record + own_word] = own_tick
            words[record] = meta
            words[first_key + slot] = key

    def forget(self, deployment_id: str) -> None:
        """Clear the deployment's byte in every entry: one pass over the whole table (rare:
        a flushed cache), not per request."""
        if (column := self._column(deployment_id)) is None:
            return
        words, stride = self._words, self._stride
        first = self._first_record + 1 + column // 8
        shift = 8 * (column % 8 if _LITTLE else 7 - column % 8)
        clear = ~(0xFF << shift) & _MASK64
        column_words = words[first:first + stride * self._table.num_slots:stride].tolist()
        for index, word in enumerate(column_words):
            if word >> shift & 0xFF:
                words[first + index * stride] = word & clear

    def size(self) -> int:
        return -1  # counting entries would read the whole table

    def shared_placements(self, deployment_ids: Sequence[str], horizon_s: float, *,
                          pid: int | None = None) -> SharedPlacements | None:
        """The deployments' placed-KV counts shared with the other workers mapping the table
        (see :mod:`kvgate.routing.placed_shm`), written to process ``pid``'s (this one's)
        slot; None when the table has no board for them."""
        board = self._table.placement_board(pid)
        if board is None:
            return None
        entries: list[int | None] = []
        for deployment_id in deployment_ids:
            self._column(deployment_id)
            entry = self._table.entries.get((self._model_tag, self._tag(deployment_id)))
            entries.append(entry if entry is not None and entry < board.entries else None)
        return SharedPlacements(board, entries, horizon_s, locked=self._table.locked)

    async def flush(self) -> None:
        return None  # record() writes the shared table synchronously


def _keep_fresh(words: memoryview, buffer: mmap.mmap, record: int, tick_bytes: int,
                keep: bytes, all_expired: bool) -> None:
    """Zero the expired tick bytes of the record at word ``record``, word by word."""
    ticks = buffer[8 * record + 8:8 * record + 8 + tick_bytes]
    kept = bytes(tick_bytes) if all_expired else ticks.translate(keep)
    for index in range(tick_bytes // 8 if kept != ticks else 0):
        if (word := kept[8 * index:8 * index + 8]) != ticks[8 * index:8 * index + 8]:
            words[record + 1 + index] = int.from_bytes(word, _BYTE_ORDER)
