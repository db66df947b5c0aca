"""The affinity index in shared memory, so ``kvgate run --workers N`` routes as one process.

Each worker process builds its own gateway; with the memory index each would learn its own
affinities, and a prefix served by one worker would look cold to the others. Here every
worker maps one table that the parent process created before starting them
(:class:`AffinitySegment`), so a record made by any worker is seen by every worker's next
match, with no round trip (Redis costs one per request, and is for gateways on several hosts).

Layout: a 64-byte header, then every slot's key word, then every slot's value word::

    key   = (block hash XOR deployment tag) mod 2**64, 0 = empty
    value = last-served second (32 bits) | depth rank (8 bits) | tag check (24 bits)

The deployment tag is an xxh3 hash of ``model NUL deployment id`` (stable across processes,
unlike ``hash()``), so several models and deployments share one table. A key lives in the
bucket of 8 slots its low bits name; keys are stored apart from values so a bucket's keys are
64 contiguous bytes that one C-speed ``mmap.find`` searches (a Python loop over 8 words costs
twice as much).

Concurrency without locks: every store is one aligned 8-byte word (``memoryview.cast('Q')``
item assignment is one ``memcpy`` of 8 bytes, a single move on x86-64 and arm64), so a reader
never sees half a word. A writer replacing a slot clears the key, writes the value, then the
new key; a reader re-reads the key after the value and checks the value's tag bits, so it
rejects a slot changed under it. Two workers writing one bucket at once may overwrite each
other's new entry or store one key twice: a lost or duplicated hint, never a wrong structure.
At worst a race makes one request route as if its prefix were cold.

Differences from the memory index (same TTL semantics, same contract):

* the bound is the table's (slots = the sharing models' ``max_tracked_blocks`` summed,
  rounded up to a power of two), not ``max_tracked_blocks / deployments`` per deployment: a
  busy deployment may hold more than its share;
* eviction replaces the stalest slot of the full bucket (oldest second, then the deepest link,
  so a prompt's tail goes before its head) instead of the exact least recently used entry;
* ``size()`` is -1 (counting would scan the table), and ``forget`` scans the whole table
  (rare: a flushed cache), dropping with it any entry whose 24-bit tag check collides.

Linux only (the segment is a file under ``/dev/shm``); ``kvgate run`` falls back to a memory
index per worker, with a warning, where there is no room for it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.shared_memory import SharedMemory

import xxhash

#: "KVGAFF01": a segment this module laid out.
_MAGIC = 0x4B56474146463031
_HEADER_WORDS = 8
_SLOTS_PER_BUCKET = 8
_BYTES_PER_SLOT = 16
_BUCKET_BYTES = 8 * _SLOTS_PER_BUCKET
_MASK64 = (1 << 64) - 1
_CHECK_MASK = (1 << 24) - 1
_TICK_MASK = (1 << 32) - 1
_MAX_RANK = 255
SHM_DIR = "/dev/shm"
_BYTE_ORDER = sys.byteorder  # memoryview.cast("Q") stores native-endian words


def table_bytes(num_entries: int) -> int:
    """Bytes of a table that holds at least ``num_entries`` (deployment, block) entries."""
    return _HEADER_WORDS * 8 + _num_buckets(num_entries) * _SLOTS_PER_BUCKET * _BYTES_PER_SLOT


def _num_buckets(num_entries: int) -> int:
    buckets = max(1, -(-num_entries // _SLOTS_PER_BUCKET))
    return 1 << (buckets - 1).bit_length()


class AffinitySegment:
    """The named segment a parent process creates for its workers, and unlinks at the end.

    The parent writes the header and closes its own mapping at once: it serves nothing, and an
    open ``SharedMemory`` with exported views complains at interpreter exit. Registered with
    multiprocessing's resource tracker, so a parent killed without cleanup still unlinks it.
    """

    def __init__(self, num_entries: int) -> None:
        size = table_bytes(num_entries)
        self._shm = SharedMemory(create=True, size=size)
        self.name = self._shm.name
        self.size_bytes = size
        buffer = self._shm.buf
        assert buffer is not None  # None only once closed
        _write_header(buffer.cast("Q"), _num_buckets(num_entries))
        self._shm.close()

    def unlink(self) -> None:
        # Already gone (another tracker cleaned it up): nothing left to free.
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


def _write_header(words: memoryview, num_buckets: int) -> None:
    words[1] = num_buckets
    words[0] = _MAGIC  # last: a header with the magic is complete
    words.release()


class AffinityTable:
    """A mapping of the table: the 8-byte words a :class:`SharedMemoryAffinityIndex` reads.

    NOTE: mapped with ``mmap`` from the segment's file rather than through ``SharedMemory``:
    attaching a ``SharedMemory`` before Python 3.13 registers it with the resource tracker
    (which may unlink it when this worker exits), and closing one that has views raises.
    """

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer
        self.words = memoryview(buffer).cast("Q")
        if self.words[0] != _MAGIC:
            raise ValueError("not an affinity table (bad magic)")
        self.num_buckets = int(self.words[1])
        #: Byte offset of the first key word; a slot's value is ``num_slots`` words after it.
        self.keys_offset = _HEADER_WORDS * 8

    @classmethod
    def attach(cls, name: str) -> AffinityTable:
        """Map the segment ``name`` (:attr:`AffinitySegment.name`) for reading and writing."""
        fd = os.open(os.path.join(SHM_DIR, name.lstrip("/")), os.O_RDWR)
        try:
            return cls(mmap.mmap(fd, 0))
        finally:
            os.close(fd)  # the mapping keeps the segment alive

    @classmethod
    def private(cls, num_entries: int) -> AffinityTable:
        """An anonymous table for this process (and children it forks) only."""
        buffer = mmap.mmap(-1, table_bytes(num_entries))
        _write_header(memoryview(buffer).cast("Q"), _num_buckets(num_entries))
        return cls(buffer)

    @property
    def num_slots(self) -> int:
        return self.num_buckets * _SLOTS_PER_BUCKET




class SharedMemoryAffinityIndex:
    """Implements :class:`~kvgate.routing.affinity.AffinityIndex` on an :class:`AffinityTable`.

    ``namespace`` (the model's name) keeps models apart in a table they share; every process
    that maps the table sees every other's records at once.

    NOTE: ``match`` finds each deployment's leading run by galloping (links 1, 2, 4, ... then
    bisecting), about log2(links) lookups instead of one per link: a lookup here costs a few
    hundred nanoseconds, not a dict's fifty. That is exact while what a deployment holds of a
    prompt is a leading run, which ``record`` keeps true (a chain is written whole, heads
    outrank tails on eviction); a head lost to a race or evicted before its tail can be
    skipped over, over-estimating one hint.
    """

    def __init__(
        self,
        table: AffinityTable,
        *,
        namespace: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # NOTE: time.monotonic is CLOCK_MONOTONIC, one clock for every process on the host,
        # so seconds written by one worker compare with another's.
        self._table = table
        self._find = table.buffer.find
        self._words = table.words
        self._bucket_mask = table.num_buckets - 1
        self._first_key_byte = table.keys_offset
        self._first_key_word = table.keys_offset // 8
        self._value_delta_words = table.num_slots
        self._namespace = namespace.encode()
        self._ttl_s = ttl_s
        self._clock = clock
        self._tags: dict[str, tuple[int, int]] = {}

    def _tag(self, deployment_id: str) -> tuple[int, int]:
        """(tag, its 24-bit check): computed once per deployment, read per request."""
        tag = self._tags.get(deployment_id)
        if tag is None:
            value = xxhash.xxh3_64_intdigest(self._namespace + b"\0" + deployment_id.encode())
            tag = self._tags[deployment_id] = (value, value >> 40)
        return tag

    def _holds(self, block_hash: int, tag: int, check: int, oldest_fresh: int) -> bool:
        key = ((block_hash ^ tag) & _MASK64) or 1
        words = self._words
        slot = self._first_key_word + (key & self._bucket_mask) * _SLOTS_PER_BUCKET
        # Most keys sit in their bucket's first slot while the table is not full: one read
        # instead of building the needle and searching.
        if words[slot] != key:
            start_byte = slot * 8
            found = self._find(key.to_bytes(8, _BYTE_ORDER), start_byte,
                               start_byte + _BUCKET_BYTES)
            if found < 0 or found & 7:  # absent, or a match straddling two keys
                return False
            slot = found >> 3
        value = words[slot + self._value_delta_words]
        # Re-read the key after the value: a writer replacing the slot clears it first.
        return words[slot] == key and value & _CHECK_MASK == check and value >> 32 >= oldest_fresh

    async def match(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        return self.match_now(hashes, deployment_ids)

    def match_now(self, hashes: Sequence[int], deployment_ids: Sequence[str]) -> list[int]:
        oldest_fresh = int(self._clock() - self._ttl_s)
        num_links = len(hashes)
        holds = self._holds
        counts = []
        for deployment_id in deployment_ids:
            tag, check = self._tag(deployment_id)
            held, probe = 0, 1  # the first `held` links are held; `probe` is the next guess
            while probe <= num_links and holds(hashes[probe - 1], tag, check, oldest_fresh):
                held = probe
                probe = num_links + 1 if probe == num_links else min(2 * probe, num_links)
            not_held = min(probe, num_links + 1)
            while not_held - held > 1:
                middle = (held + not_held) // 2
                if holds(hashes[middle - 1], tag, check, oldest_fresh):
                    held = middle
                else:
                    not_held = middle
            counts.append(held)
        return counts

    def record(self, deployment_id: str, hashes: Sequence[int]) -> None:
        words, bucket_mask = self._words, self._bucket_mask
        first_key, value_delta = self._first_key_word, self._value_delta_words
        find = self._find
        tag, check = self._tag(deployment_id)
        tick = int(self._clock()) & _TICK_MASK
        for position, block_hash in enumerate(hashes):
            # The deeper the link, the lower its rank: among entries of the same second the
            # bucket evicts a prompt's tail before its head, so what remains is a leading run.
            value = (tick << 32) | ((_MAX_RANK - min(position, _MAX_RANK)) << 24) | check
            key = ((block_hash ^ tag) & _MASK64) or 1
            bucket = first_key + (key & bucket_mask) * _SLOTS_PER_BUCKET
            found = find(key.to_bytes(8, _BYTE_ORDER), bucket * 8, bucket * 8 + _BUCKET_BYTES)
            if found >= 0 and not found & 7:
                words[(found >> 3) + value_delta] = value  # refresh in place: one store
                continue
            # The stalest slot: empty ones have value 0; otherwise the oldest second, then the
            # lowest rank (the deepest link).
            values = words[bucket + value_delta:bucket + value_delta + _SLOTS_PER_BUCKET]
            ordered = values.tolist()
            slot = bucket + ordered.index(min(ordered))
            words[slot] = 0  # readers skip the slot while its value changes
            words[slot + value_delta] = value
            words[slot] = key

    def forget(self, deployment_id: str) -> None:
        """Clear the deployment's entries: one pass over the whole table (rare, ~0.1 s per
        million slots), not per request."""
        words = self._words
        _, check = self._tag(deployment_id)
        first_value = self._first_key_word + self._value_delta_words
        values = words[first_value:first_value + self._value_delta_words].tolist()
        for index, value in enumerate(values):
            if value and value & _CHECK_MASK == check:
                words[self._first_key_word + index] = 0
                words[first_value + index] = 0

    def size(self) -> int:
        return -1  # counting entries would read the whole table

    async def flush(self) -> None:
        return None  # record() writes the shared table synchronously
