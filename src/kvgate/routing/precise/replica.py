"""One replica's event stream as routing sees it: in sync (precise) or not (degraded).

Synchronous bookkeeping only; ``subscriber.py`` does the I/O and calls in here. Sequence
numbers decide everything:

- the next live batch is ``next_seq``: apply it;
- a later one means batches were lost: the subscriber asks the replay socket for the gap;
- an earlier or equal one than the last live batch means the publisher restarted (its counter
  starts at 0 again): its cache is new, so the index is cleared and the history replayed.

When a gap cannot be filled (no replay socket, the replay buffer no longer reaches back, no
answer in time) the index no longer matches the replica: it is dropped, and the replica is
``degraded`` -- routing uses approximate affinity for it -- until the index is *rebuilt*:

- at once, if a replay from sequence 0 returns the whole history, or on ``AllBlocksCleared``
  (the replica's cache is then known to be empty);
- otherwise once the replica's LRU has turned over what the index missed: it evicted a block
  stored after the drop (everything that was free and cached before the drop was evicted
  first), or stored as many blocks as the index held at its peak.

NOTE: blocks a replica keeps hitting are never stored again, so the index can only learn them
from the parent of a later request's first stored block (see ``index.py``); until then they
are under-counted, never over-counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from kvgate.routing.precise.index import ReplicaKVIndex
from kvgate.vllm_compat.kv_events import AllBlocksCleared, KVEventBatch

SyncMode = Literal["precise", "degraded"]
LiveVerdict = Literal["apply", "skip", "gap", "restart"]


@dataclass(slots=True)
class SyncCounters:
    batches_total: int = 0
    gaps_total: int = 0
    replays_total: int = 0
    replay_failures_total: int = 0
    drops_total: int = 0
    restarts_total: int = 0
    undecodable_total: int = 0


@dataclass(slots=True)
class _Rebuild:
    """Where the index stood when it was dropped; what 'turned over' is measured against."""

    peak_gpu_blocks: int
    stored_blocks_total: int
    removed_known_gpu_blocks_total: int


@dataclass(slots=True)
class ReplicaEventState:
    """The index of one replica plus where its event stream stands."""

    index: ReplicaKVIndex
    mode: SyncMode = "degraded"
    reason: str = "waiting for the first events"
    #: The sequence number of the next batch to apply; None until the stream's position is
    #: known (at start, and after a drop until the next batch arrives).
    next_seq: int | None = None
    last_seq: int | None = None
    last_live_seq: int | None = None
    #: Wall-clock delay of the last live batch (receive time - the replica's timestamp).
    lag_s: float | None = None
    last_event_monotonic_s: float | None = None
    counters: SyncCounters = field(default_factory=SyncCounters)
    _rebuild: _Rebuild | None = None

    # -- live stream ------------------------------------------------------------------------

    def classify_live(self, seq: int) -> LiveVerdict:
        """What to do with live batch ``seq`` (before applying it)."""
        if self.last_live_seq is not None and seq <= self.last_live_seq:
            return "restart"
        self.last_live_seq = seq
        if self.next_seq is None:
            return "gap"
        if seq < self.next_seq:
            return "skip"  # already applied from a replay
        if seq > self.next_seq:
            self.counters.gaps_total += 1
            return "gap"
        return "apply"

    def restarted(self) -> None:
        """The publisher's sequence went back: a new engine with an empty cache."""
        self.counters.restarts_total += 1
        self.index.clear()
        self.last_live_seq = None
        self.next_seq = None
        self._set("degraded", "publisher restarted; replaying its history")

    def apply(self, seq: int, batch: KVEventBatch, *, live: bool) -> None:
        """Apply batch ``seq`` (the caller checked it is the next one, or the position is
        unknown after a drop)."""
        self.index.apply(batch.events)
        self.next_seq = seq + 1
        self.last_seq = seq
        self.counters.batches_total += 1
        self.last_event_monotonic_s = time.monotonic()
        if live:
            self.lag_s = max(0.0, time.time() - batch.ts)
        if self.mode == "degraded" and self._rebuild is not None:
            if any(isinstance(e, AllBlocksCleared) for e in batch.events):
                self.synced("cache cleared by the replica; index rebuilt")
            elif self._turned_over():
                self.synced("index rebuilt from new events")

    def skip_undecodable(self, seq: int, error: str) -> None:
        """A batch that could not be decoded is a lost batch: drop and go on after it."""
        self.counters.undecodable_total += 1
        self.drop(f"undecodable batch {seq}: {error}")
        self.next_seq = seq + 1
        self.last_seq = seq

    # -- sync transitions -------------------------------------------------------------------

    def synced(self, reason: str) -> None:
        """The index now matches the replica exactly."""
        self._rebuild = None
        self._set("precise", reason)

    def drop(self, reason: str) -> None:
        """The index no longer matches the replica: forget it and route approximately."""
        index = self.index
        if self._rebuild is None:
            self._rebuild = _Rebuild(index.peak_gpu_blocks, 0, 0)
        self._rebuild.stored_blocks_total = index.stored_blocks_total
        self._rebuild.removed_known_gpu_blocks_total = index.removed_known_gpu_blocks_total
        index.clear()
        self.next_seq = None
        self.counters.drops_total += 1
        self._set("degraded", reason)

    def unreachable(self, reason: str) -> None:
        """No answer from the publisher: whatever it holds now is unknown."""
        if self.mode == "precise" or self.index.num_gpu_blocks:
            self.drop(reason)
        else:
            self._set("degraded", reason)

    def _turned_over(self) -> bool:
        rebuild, index = self._rebuild, self.index
        assert rebuild is not None
        if index.removed_known_gpu_blocks_total > rebuild.removed_known_gpu_blocks_total:
            return True
        stored = index.stored_blocks_total - rebuild.stored_blocks_total
        return rebuild.peak_gpu_blocks > 0 and stored >= rebuild.peak_gpu_blocks

    def _set(self, mode: SyncMode, reason: str) -> None:
        self.mode = mode
        self.reason = reason

    # -- reading ----------------------------------------------------------------------------

    @property
    def is_precise(self) -> bool:
        return self.mode == "precise"

    def describe(self) -> dict[str, Any]:
        """The /admin/stats view of this replica's events."""
        index, counters = self.index, self.counters
        age = (None if self.last_event_monotonic_s is None
               else round(time.monotonic() - self.last_event_monotonic_s, 3))
        return {
            "mode": self.mode,
            "reason": self.reason,
            "blocks_tracked": index.num_gpu_blocks,
            "blocks_offloaded": index.num_offloaded_blocks,
            "blocks_pending": index.num_pending_blocks,
            "last_seq": self.last_seq,
            "lag_ms": None if self.lag_s is None else round(self.lag_s * 1000, 3),
            "last_event_age_s": age,
            "batches_total": counters.batches_total,
            "gaps_total": counters.gaps_total,
            "replays_total": counters.replays_total,
            "replay_failures_total": counters.replay_failures_total,
            "drops_total": counters.drops_total,
            "restarts_total": counters.restarts_total,
            "undecodable_total": counters.undecodable_total,
        }
