"""Placed-KV counts that ``kvgate run --workers N`` shares, so every worker prices a replica's
KV footprint with what all of them sent there, not only what it sent itself.

Without it each worker's ledger (:class:`~kvgate.routing.footprint.PlacedTokens`) counts its
own placements only and sees the replicas the other worker filled as emptier than they are:
12 images on 2 replicas that hold 7 each land 7 / 5 with two workers instead of 6 / 6, and the
replica with 7 recomputes (``docs/BENCHMARK_REPORT.md``, workers).

The board lives in the affinity segment, after the table (:mod:`kvgate.routing.shm_table`
names the deployments: a board entry is a deployment's directory entry). Each worker owns one
slot and is the only process writing it, so there are no locks on the request path and no
lost updates; readers sum every slot. Per slot, in 8-byte words::

    owner pid | unused | totals[entries] (float) | expired_through[entries] (epoch)
    | epochs[entries][buckets] | tokens[entries][buckets] (float)

An entry's placements go to a ring of time buckets (``horizon / buckets`` seconds each, the
epoch numbering them on the host's one monotonic clock); its total is the tokens of the buckets
younger than its ``expired_through`` epoch, which the owner advances at each refresh. A reader
whose clock is ahead of an owner's last refresh (the owner idle, or gone) takes the buckets
that expired since out of that owner's total itself, so an idle worker's placements leave the
count on time. A worker that dies leaves its slot to the next one started: the slot is
adopted as it is (its placements did land on the replicas and expire in their turn).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from itertools import compress, repeat
from operator import add, gt, lt
from typing import cast

#: A lock across the processes sharing the segment, held as a context.
Locked = contextlib.AbstractContextManager[None]

#: Time buckets per horizon (as :data:`kvgate.routing.footprint.BUCKETS`).
BOARD_BUCKETS = 64
#: Below this many tokens a total is float residue of additions and expiries, not a prefix.
_RESIDUE_TOKENS = 0.5


def board_words(slots: int, entries: int, buckets: int = BOARD_BUCKETS) -> int:
    """8-byte words of a board of ``slots`` workers and ``entries`` deployments."""
    return slots * _slot_words(entries, buckets)


def _slot_words(entries: int, buckets: int) -> int:
    return 2 + entries * (2 + 2 * buckets)


def _slot_bases(first_word: int, slots: int, entries: int, buckets: int) -> list[int]:
    """Each slot's first word (its owner's pid)."""
    stride = _slot_words(entries, buckets)
    return [first_word + s * stride for s in range(slots)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class PlacementBoard:
    """One process's mapping of the board: its own slot to write, every slot to read."""

    def __init__(self, buffer: memoryview, first_word: int, slots: int, entries: int,
                 buckets: int, *, slot: int) -> None:
        self._buffer = buffer.cast("B")
        self._q = buffer.cast("q")
        self._d = buffer.cast("d")
        self.entries, self.buckets = entries, buckets
        # Word offsets within a slot (see the layout above).
        self._totals_at, self._through_at = 2, 2 + entries
        self._epochs_at = 2 + 2 * entries
        self._tokens_at = self._epochs_at + entries * buckets
        self._slot_bases = _slot_bases(first_word, slots, entries, buckets)
        self._own = self._slot_bases[slot]
        #: Per slot read: (raw totals, expired-through epochs, through, corrected totals).
        self._seen: dict[int, tuple[list[float], list[int], int, list[float]]] = {}

    @classmethod
    def claim(cls, buffer: memoryview, first_word: int, slots: int, entries: int,
              buckets: int, *, locked: Callable[[], Locked],
              pid: int | None = None) -> PlacementBoard | None:
        """The board with a slot for process ``pid`` (this one): the slot it already has, else
        a free one or a dead owner's; None when every slot has a live owner. ``locked``: a
        lock across the processes sharing the segment, held while claiming."""
        pid = os.getpid() if pid is None else pid
        owners = buffer.cast("q")
        bases = _slot_bases(first_word, slots, entries, buckets)
        with locked():
            mine = next((s for s, base in enumerate(bases) if owners[base] == pid), None)
            if mine is None:
                mine = next((s for s, base in enumerate(bases)
                             if owners[base] == 0 or not _alive(owners[base])), None)
                if mine is None:
                    return None
                owners[bases[mine]] = pid
        return cls(buffer, first_word, slots, entries, buckets, slot=mine)

    # -- the owner's writes -----------------------------------------------------------------

    def add(self, entry: int, tokens: float, epoch: int) -> None:
        q, d, base = self._q, self._d, self._own
        ring = entry * self.buckets + epoch % self.buckets
        epoch_word = base + self._epochs_at + ring
        tokens_word = base + self._tokens_at + ring
        total_word = base + self._totals_at + entry
        if q[epoch_word] != epoch:  # a bucket a horizon old or more: reused
            if q[epoch_word] > q[base + self._through_at + entry]:  # not yet out of the total
                d[total_word] -= d[tokens_word]
            d[tokens_word] = 0.0
            q[epoch_word] = epoch
        d[tokens_word] += tokens
        d[total_word] += tokens

    def expire_own(self, entries: Sequence[int], through: int) -> None:
        """Take the buckets up to epoch ``through`` out of this slot's ``entries`` totals."""
        q, d, base = self._q, self._d, self._own
        first_total, first_through = base + self._totals_at, base + self._through_at
        # Buckets last a horizon / 64: most refreshes find nothing to expire (by C loops).
        since = q[first_through:first_through + self.entries].tolist()
        for entry in _behind(entries, since, through):
            total = d[first_total + entry] - self._expiring(base, entry, since[entry], through)
            d[first_total + entry] = total if total >= _RESIDUE_TOKENS else 0.0
            q[first_through + entry] = through

    # -- everyone's reads -------------------------------------------------------------------

    def totals(self, entries: Sequence[int], through: int) -> list[float]:
        """Tokens placed on each of ``entries`` by every worker, buckets up to epoch
        ``through`` left out."""
        out = [0.0] * len(entries)
        for base in self._slot_bases:
            if self._q[base] != 0:  # 0: never claimed
                out = list(map(add, out, map(self._slot_totals(base, through).__getitem__,
                                             entries)))
        return out

    def others_bytes(self) -> bytes:
        """The other workers' totals as raw bytes: equal to an earlier read when none of
        them placed or expired anything since (one memory compare)."""
        buffer, width = self._buffer, 8 * self.entries
        return b"".join(buffer[8 * (base + self._totals_at):8 * (base + self._totals_at) + width]
                        for base in self._slot_bases if base != self._own)

    def others(self, entries: Sequence[int], raw: bytes) -> list[float]:
        """The other workers' totals for ``entries``, summed, from ``raw`` (a read of
        :meth:`others_bytes`), as they stand (none expired by this reader): for what they
        added since a :meth:`totals` read, a few C passes. A slot nobody claimed adds 0."""
        values = cast("list[float]", memoryview(raw).cast("d").tolist())
        width, out = self.entries, [0.0] * len(entries)
        for start in range(0, len(values), width):
            out = list(map(add, out, map(values[start:start + width].__getitem__, entries)))
        return out

    def _slot_totals(self, base: int, through: int) -> list[float]:
        """Every entry's total in the slot at ``base``, buckets up to ``through`` left out."""
        q, d, width = self._q, self._d, self.entries
        first_total, first_through = base + self._totals_at, base + self._through_at
        raw = cast("list[float]", d[first_total:first_total + width].tolist())  # a 'd' view
        since: list[int] = q[first_through:first_through + width].tolist()
        # Entries whose owner has not expired up to ``through`` (it is idle, or gone) are
        # corrected here. NOTE: an idle owner's slot stays as it is for minutes, so what was
        # corrected is kept and only the epochs since are taken out, not a whole ring per
        # entry at every refresh (1.8 ms at 256 deployments).
        seen = self._seen.get(base)
        corrected, corrected_through = list(raw), None
        if seen is not None and seen[0] == raw and seen[1] == since:
            if seen[2] >= through:
                return seen[3]
            corrected, corrected_through = list(seen[3]), seen[2]
        for entry in _behind(range(width), since, through):
            since_epoch = (since[entry] if corrected_through is None
                           else max(since[entry], corrected_through))
            corrected[entry] = max(0.0, corrected[entry] - self._expiring(
                base, entry, since_epoch, through))
        self._seen[base] = (raw, since, through, corrected)
        return corrected

    def _expiring(self, base: int, entry: int, since: int, through: int) -> float:
        """Tokens of the entry's buckets with epochs in (``since``, ``through``]."""
        q, d, buckets = self._q, self._d, self.buckets
        first = base + self._epochs_at + entry * buckets
        tokens = base + self._tokens_at + entry * buckets
        if through - since > buckets:  # over a horizon behind: any bucket may be in range
            return sum(d[tokens + bucket] for bucket in range(buckets)
                       if since < q[first + bucket] <= through)
        gone = 0.0
        for epoch in range(since + 1, through + 1):  # usually one epoch, or none
            bucket = epoch % buckets
            if q[first + bucket] == epoch:
                gone += d[tokens + bucket]
        return gone


def _behind(entries: Sequence[int], since: Sequence[int], through: int) -> Iterator[int]:
    """The ``entries`` whose totals count buckets up to before ``through`` only."""
    return compress(entries, map(lt, map(since.__getitem__, entries), repeat(through)))


class SharedPlacements:
    """One model's deployments on the board, by the strategy's positions; what
    :class:`~kvgate.routing.footprint.PlacedTokens` reads and writes when workers share.

    NOTE: tokens are each worker's estimates (its chars-per-token scale, learned from the same
    engines, so alike across workers).
    """

    def __init__(self, board: PlacementBoard, entries: Sequence[int | None],
                 horizon_s: float, *, locked: Callable[[], Locked] | None = None) -> None:
        """``locked``: a lock across the workers (see :meth:`exclusive`)."""
        self._board = board
        self._locked = locked
        self._entry = list(entries)
        #: (position, entry) of the deployments on the board (a late one past it: not shared).
        self._shared = [(p, e) for p, e in enumerate(entries) if e is not None]
        self._entries = [e for _, e in self._shared]
        self._bucket_s = horizon_s / board.buckets
        self._horizon_s = horizon_s
        #: The other workers' raw totals when last read, and their bytes (added_by_others).
        self._others_seen = [0.0] * len(self._entries)
        self._others_bytes = b""

    def exclusive(self) -> Locked:
        """Held by a worker from reading the others' placements to writing its own, for a
        decision whose outcome depends on them (a cold prefix's placement): two workers
        placing cold prefixes at the same moment otherwise both see the same emptiest
        replica (an opening burst of 12 images on 2 workers landed 7/5)."""
        return contextlib.nullcontext() if self._locked is None else self._locked()

    def add(self, position: int, tokens: float, now_s: float) -> None:
        entry = self._entry[position]
        if entry is not None:
            self._board.add(entry, tokens, int(now_s // self._bucket_s))

    def totals(self, now_s: float) -> Iterator[tuple[int, float]]:
        """(position, tokens every worker placed there within the horizon), expiring this
        worker's own buckets on the way."""
        # A bucket expires once its start is older than the horizon (as PlacedTokens' do).
        through = math.ceil((now_s - self._horizon_s) / self._bucket_s) - 1
        self._board.expire_own(self._entries, through)
        self._others_bytes = self._board.others_bytes()
        self._others_seen = self._board.others(self._entries, self._others_bytes)
        positions = (p for p, _ in self._shared)
        return zip(positions, self._board.totals(self._entries, through), strict=True)

    def added_by_others(self) -> list[tuple[int, float]]:
        """(position, tokens) the other workers placed since the last :meth:`totals` or call
        of this, between two refreshes: two workers taking a burst of cold prefixes at once
        would otherwise both fill the same replica for a refresh interval. (What they expired
        meanwhile waits for the next :meth:`totals`.)"""
        raw = self._board.others_bytes()
        if raw == self._others_bytes:  # nobody placed anything since: the usual case
            return []
        self._others_bytes = raw
        now, seen = self._board.others(self._entries, raw), self._others_seen
        self._others_seen = now
        # Usually one deployment or a few grew: found by C loops, then those alone.
        grew = compress(range(len(now)), map(gt, now, seen))
        return [(self._shared[i][0], now[i] - seen[i]) for i in grew]
