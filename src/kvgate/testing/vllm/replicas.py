"""One real ``vllm serve`` replica on loopback: its options and its process group.

A replica is a process group (API server, engine core, worker): stopping signals the group, so
nothing outlives it. :class:`VllmReplica` spawns it, polls ``/health``, stops or kills it, and
reads its log and resident memory; resetting its caches needs vLLM's dev endpoints
(``ReplicaOptions.dev_mode``). Its ``/metrics`` counters are read with
:func:`kvgate.bench.engine_counters.read_counters`. The command line it runs is built by
:class:`~kvgate.testing.vllm.fleet.ReplicaFleet`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kvgate.testing.vllm.models import BuiltModel

_LOG_TAIL_BYTES = 6000


class ReplicaStartError(RuntimeError):
    """A replica exited or never became healthy; the message ends with its log."""


#: ``per_replica``: every process of replica i (API server, engine core, worker and its OpenMP
#: threads) on the i-th core (mod their number) this process may use; ``per_replica_threads``:
#: only the worker's OpenMP threads there, the API server and engine core wherever the kernel
#: puts them (the setting of the runs before 2026-12-06 17:30 UTC); or vLLM's ``auto`` or
#: ``nobind``.
CpuBind = Literal["per_replica", "per_replica_threads", "auto", "nobind"]


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    #: Usable KV cache per replica, in tokens (a multiple of ``block_size``).
    kv_cache_tokens: int = 8192
    #: Longest prompt + output; default: the KV budget or the model's limit, whichever is less
    #: (vLLM refuses to start if one request of this length would not fit).
    max_model_len: int | None = None
    block_size: int = 32
    hash_algo: Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"] = "sha256"
    enforce_eager: bool = True
    kv_events: bool = True
    max_num_seqs: int | None = None
    #: How the replicas are pinned to cores (:data:`CpuBind`).
    cpu_bind: CpuBind = "per_replica"
    start_timeout_s: float = 300.0
    #: vLLM's dev endpoints (``VLLM_SERVER_DEV_MODE``): ``/reset_prefix_cache`` and friends,
    #: which :meth:`VllmReplica.reset_caches` uses between benchmark runs.
    dev_mode: bool = False
    extra_args: tuple[str, ...] = ()

    def kv_cache_bytes(self, model: BuiltModel) -> int:
        # One block more than asked for: vLLM keeps block 0 as the "null" block.
        num_blocks = -(-self.kv_cache_tokens // self.block_size) + 1
        return num_blocks * self.block_size * model.spec.kv_bytes_per_token

    def model_len(self, model: BuiltModel) -> int:
        limit = min(self.kv_cache_tokens, model.spec.text.max_position_embeddings)
        return min(self.max_model_len or limit, limit)


@dataclass(slots=True)
class VllmReplica:
    """One ``vllm serve`` process group and how to reach it."""

    index: int
    port: int
    model: BuiltModel
    options: ReplicaOptions
    args: list[str]
    env: dict[str, str]
    log_path: Path
    kv_events_port: int | None = None
    kv_replay_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    #: Seconds from spawn to the first healthy /health.
    startup_s: float | None = None
    host: str = "127.0.0.1"
    #: Cores every process of the replica runs on (set at spawn, inherited by the engine
    #: core and workers it starts); None: wherever the kernel puts them.
    cores: frozenset[int] | None = None
    _log_file: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    @property
    def served_model_name(self) -> str:
        return self.model.spec.name

    @property
    def model_id(self) -> str:
        """What vLLM hashes into an image's mm_hash: the model argument exactly as given."""
        return str(self.model.path)

    @property
    def kv_events_endpoint(self) -> str | None:
        return None if self.kv_events_port is None else f"tcp://{self.host}:{self.kv_events_port}"

    @property
    def kv_replay_endpoint(self) -> str | None:
        return None if self.kv_replay_port is None else f"tcp://{self.host}:{self.kv_replay_port}"

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log
        cores = self.cores
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
            preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores))
        self.started_s = time.monotonic()
        self.startup_s = None

    def poll_ready(self) -> bool:
        """True once healthy; ReplicaStartError if the process has exited."""
        if self.process is None:
            raise ReplicaStartError(f"replica {self.index} was never started")
        if self.process.poll() is not None:
            raise ReplicaStartError(f"replica {self.index} ({self.url}) exited with "
                                    f"{self.process.returncode}:\n{self.log_tail()}")
        if http_status(self.host, self.port, "/health") == 200:
            self.startup_s = round(time.monotonic() - self.started_s, 1)
            return True
        return False

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole replica at once, like a crashed machine (for failover tests)."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group (vLLM shuts its engine down), SIGKILL what is left."""
        process = self.process
        if process is not None and process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
        # The engine core and worker may outlive the API server by a moment: always sweep.
        self._signal_group(signal.SIGKILL)
        if process is not None and process.poll() is None:
            process.wait()
        log = self._log_file
        if log is not None:
            log.close()  # type: ignore[attr-defined]
            self._log_file = None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # start_new_session made the API server the group leader: pgid == its pid.
            os.killpg(self.process.pid, sig)

    # -- observation -----------------------------------------------------------------------

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-_LOG_TAIL_BYTES:].decode("utf-8", "replace")

    def reset_caches(self, timeout_s: float = 30.0) -> None:
        """Empty the prefix (KV), multimodal-processor and encoder caches (needs ``dev_mode``).

        vLLM refuses to reset the prefix cache while requests run; call it between runs.
        """
        for path in ("/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache"):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
            try:
                conn.request("POST", path)
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
            if response.status != 200:
                raise RuntimeError(f"{self.url}{path}: HTTP {response.status} {body[:200]!r}")

    def affinities(self) -> list[frozenset[int]]:
        """The cores each process of the replica's tree may run on."""
        if self.process is None or self.process.poll() is not None:
            return []
        found = []
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError):  # exited since the tree was read
                found.append(frozenset(os.sched_getaffinity(pid)))
        return found

    def rss_bytes(self) -> int:
        """Resident memory of the replica's whole process tree."""
        if self.process is None or self.process.poll() is not None:
            return 0
        return sum(_rss_bytes(pid) for pid in _process_tree(self.process.pid))


def http_status(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def _process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may contain spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, ()))
    return tree


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
