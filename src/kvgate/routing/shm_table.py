"""The shared-memory segment behind ``kvgate run --workers N``'s affinity index
(:mod:`kvgate.routing.affinity_shm`) and placement board (:mod:`kvgate.routing.placed_shm`):
its layout, its creation by the parent, its mapping by each worker, and the directory that
gives every deployment its column.

Layout (8-byte words): a header, a directory of deployments, every slot's key, every record,
then the workers' placed-KV board (absent from a private table); the index's docstring says
what a key and a record hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory

from kvgate.routing.placed_shm import BOARD_BUCKETS, PlacementBoard, board_words

#: "KVGAFF03": a segment this module laid out (02: an entry per block, a tick per deployment;
#: 03: the placement board after the records).
_MAGIC = 0x4B56474146463033
_HEADER_WORDS = 8
SLOTS_PER_BUCKET = 8
#: Directory entries (two words each): deployments of every model sharing the table.
_DIRECTORY_ENTRIES = 4096
#: Columns of a table whose creator does not say (``private`` from the composer).
DEFAULT_COLUMNS = 64
SHM_DIR = "/dev/shm"


def table_bytes(num_entries: int, columns: int = DEFAULT_COLUMNS, board_slots: int = 0,
                board_entries: int = 0) -> int:
    """Bytes of a table of at least ``num_entries`` blocks, each with ``columns`` holders, and
    a placement board for ``board_slots`` workers and ``board_entries`` deployments."""
    words = (_HEADER_WORDS + 2 * _DIRECTORY_ENTRIES
             + _num_buckets(num_entries) * SLOTS_PER_BUCKET * (2 + (-(-columns // 8) or 1))
             + board_words(board_slots, board_entries))
    return 8 * words


def _num_buckets(num_entries: int) -> int:
    buckets = max(1, -(-num_entries // SLOTS_PER_BUCKET))
    return 1 << (buckets - 1).bit_length()


class AffinitySegment:
    """The named segment a parent process creates for its workers, and unlinks at the end.

    The parent writes the header and closes its own mapping at once: it serves nothing, and an
    open ``SharedMemory`` with exported views complains at interpreter exit. Registered with
    multiprocessing's resource tracker, so a parent killed without cleanup still unlinks it.
    """

    def __init__(self, num_entries: int, columns: int = DEFAULT_COLUMNS, board_slots: int = 0,
                 board_entries: int = 0) -> None:
        size = table_bytes(num_entries, columns, board_slots, board_entries)
        self._shm = SharedMemory(create=True, size=size)
        self.name = self._shm.name
        self.size_bytes = size
        buffer = self._shm.buf
        assert buffer is not None  # None only once closed
        _write_header(buffer.cast("Q"), _num_buckets(num_entries), columns,
                      (board_slots, board_entries))
        self._shm.close()

    def unlink(self) -> None:
        # Already gone (another tracker cleaned it up): nothing left to free.
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


def _write_header(words: memoryview, num_buckets: int, columns: int,
                  board: tuple[int, int] = (0, 0)) -> None:
    words[1] = num_buckets
    words[2] = -(-columns // 8) or 1
    words[3], words[4], words[5] = *board, BOARD_BUCKETS  # workers' slots, deployments
    words[0] = _MAGIC  # last: a header with the magic is complete
    words.release()


class AffinityTable:
    """A mapping of the table: the 8-byte words a :class:`SharedMemoryAffinityIndex` reads.

    NOTE: mapped with ``mmap`` from the segment's file rather than through ``SharedMemory``:
    attaching a ``SharedMemory`` before Python 3.13 registers it with the resource tracker
    (which may unlink it when this worker exits), and closing one that has views raises.
    """

    def __init__(self, buffer: mmap.mmap, lock_fd: int | None = None) -> None:
        self.buffer = buffer
        self.words = memoryview(buffer).cast("Q")
        if self.words[0] != _MAGIC:
            raise ValueError("not an affinity table (bad magic)")
        self.num_buckets = int(self.words[1])
        self.tick_words = int(self.words[2])
        #: Word offsets: directory, first key, first record (``1 + tick_words`` words each).
        self.directory_word = _HEADER_WORDS
        self.keys_word = _HEADER_WORDS + 2 * _DIRECTORY_ENTRIES
        self.records_word = self.keys_word + self.num_slots
        #: The segment's file, kept open to ``flock`` while registering (None: private).
        self._lock_fd = lock_fd
        #: (model tag, deployment tag) -> directory entry, once registered (board entries).
        self.entries: dict[tuple[int, int], int] = {}
        #: Placement board slots claimed through this mapping, by owner pid.
        self._boards: dict[int, PlacementBoard | None] = {}

    @classmethod
    def attach(cls, name: str) -> AffinityTable:
        """Map the segment ``name`` (:attr:`AffinitySegment.name`) for reading and writing."""
        fd = os.open(os.path.join(SHM_DIR, name.lstrip("/")), os.O_RDWR)
        try:
            return cls(mmap.mmap(fd, 0), lock_fd=fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def private(cls, num_entries: int, columns: int = DEFAULT_COLUMNS) -> AffinityTable:
        """An anonymous table for this process (and children it forks) only."""
        buffer = mmap.mmap(-1, table_bytes(num_entries, columns))
        _write_header(memoryview(buffer).cast("Q"), _num_buckets(num_entries), columns)
        return cls(buffer)

    @property
    def num_slots(self) -> int:
        return self.num_buckets * SLOTS_PER_BUCKET

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held across the processes mapping the segment (``flock``); a private table's one
        process needs none."""
        if self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def column(self, model_tag: int, deployment_tag: int) -> int | None:
        """The deployment's column, registering it on first sight (under ``flock``: columns
        are unique across workers; once per worker and deployment); None once full."""
        with self.locked():
            words, rank = self.words, 0
            for word in range(self.directory_word, self.keys_word, 2):
                if words[word] == 0:  # the end: register here
                    if rank >= 8 * self.tick_words:
                        return None
                    words[word + 1] = deployment_tag
                    words[word] = model_tag  # last: an entry with its model word is complete
                if words[word] == model_tag:
                    if words[word + 1] == deployment_tag:
                        self.entries[model_tag, deployment_tag] = (word - self.directory_word) // 2
                        return rank
                    rank += 1
            return None

    def placement_board(self, pid: int | None = None) -> PlacementBoard | None:
        """Process ``pid``'s (this one's) slot of the workers' placement board, claimed once;
        None for a table without a board or with every slot taken by a live worker."""
        pid = os.getpid() if pid is None else pid
        if pid not in self._boards:
            slots, entries, buckets = (int(w) for w in self.words[3:6])
            first = self.records_word + self.num_slots * (1 + self.tick_words)
            self._boards[pid] = (PlacementBoard.claim(
                memoryview(self.buffer), first, slots, entries, buckets, locked=self.locked,
                pid=pid) if slots and entries else None)
        return self._boards[pid]
