"""Start and stop N real ``vllm serve`` replicas on loopback, the way KV-aware routing needs them.

Every replica runs with prefix caching, ``--enable-prompt-tokens-details`` (so answers carry
``usage.prompt_tokens_details.cached_tokens``), block size 32 (the CPU attention backend needs
a multiple of 32), ``--enforce-eager`` (compilation costs 20-45 s at start-up and gains nothing
on tiny models), a KV budget given in *tokens* and turned into ``--kv-cache-memory-bytes``, and
KV-cache events published over ZMQ.

NOTE: vLLM's publisher *connects* to a concrete ``tcp://host:port`` and binds only wildcard
endpoints, while KVGate's subscribers connect; so each replica is given ``tcp://*:PORT`` (it
binds every interface on that port) and reports ``tcp://127.0.0.1:PORT`` for subscribers.

Stopping the fleet stops every replica's process group, so nothing outlives it. On two cores
each replica runs on a core of its own, all of it: its worker's OpenMP threads
(``VLLM_CPU_OMP_THREADS_BIND``) and its API server and engine core (the CPU affinity its
process group inherits), so two replicas do not spin against each other.

NOTE: with the OpenMP threads alone pinned, each replica's API server (which also runs the
image processor) and engine core floated over both cores and ran beside the *other* replica's
busy worker for a while: under round robin one replica took 1.0-2.8x the other's time per
request, differently in every run, and KV-aware routers rightly sent the slower one less
(`realvllm` runs of 2026-12-06 17:23-17:35 UTC, docs/BENCHMARK_REPORT.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kvgate.bench.processes import free_port
from kvgate.testing.vllm.models import BuiltModel
from kvgate.testing.vllm.replicas import ReplicaOptions, ReplicaStartError, VllmReplica
from kvgate.testing.vllm.venv import VllmVenv

_POLL_S = 0.25
#: Starts tried when a replica dies because a port it was given got taken first.
_START_ATTEMPTS = 3
_ADDRESS_IN_USE = "Address already in use"
KV_EVENTS_TOPIC = "kv-events"


@dataclass(slots=True)
class ReplicaFleet:
    """N replicas of one model; ``with ReplicaFleet(...) as fleet`` starts and stops them."""

    venv: VllmVenv
    model: BuiltModel
    count: int = 2
    options: ReplicaOptions = field(default_factory=ReplicaOptions)
    #: Keep replica logs here (default: a temporary directory removed on stop).
    log_dir: Path | None = None
    #: Wait until no other exclusive fleet runs on this machine (a file lock), so tests and
    #: benchmarks started side by side never run more than one fleet's servers at once.
    exclusive: bool = True
    replicas: list[VllmReplica] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _lock: IO[str] | None = field(default=None, repr=False)

    def __enter__(self) -> ReplicaFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn every replica at once and wait until all answer /health (start-up overlaps:
        most of it is Python imports and engine set-up, on any free core)."""
        if self.exclusive and self._lock is None:
            self._lock = _acquire_fleet_lock()
        if self.log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kvgate-vllm-")
            log_dir = Path(self._tmp.name)
        else:
            log_dir = self.log_dir
            log_dir.mkdir(parents=True, exist_ok=True)
        # The cores this process may use (a container's cpuset can allow fewer than exist).
        cores = sorted(os.sched_getaffinity(0))
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.replicas = [self._make(index, log_dir, cores) for index in range(self.count)]
            try:
                for replica in self.replicas:
                    replica.spawn()
                self.wait_ready(self.replicas)
                return
            except ReplicaStartError as error:
                # A port picked free can still be taken before vLLM binds it; new ports fix
                # that, anything else is a real failure.
                if attempt == _START_ATTEMPTS or _ADDRESS_IN_USE not in str(error):
                    self.stop()
                    raise
                self._stop_replicas()
            except BaseException:
                self.stop()
                raise

    def wait_ready(self, replicas: Sequence[VllmReplica]) -> None:
        deadline = time.monotonic() + self.options.start_timeout_s
        pending = list(replicas)
        while pending:
            pending = [replica for replica in pending if not replica.poll_ready()]
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- replica {r.index} log ---\n{r.log_tail()}"
                                  for r in pending)
                raise ReplicaStartError(
                    f"{len(pending)} replica(s) not healthy after "
                    f"{self.options.start_timeout_s} s:\n{tails}")
            if pending:
                time.sleep(_POLL_S)

    def restart(self, index: int) -> VllmReplica:
        """Start replica ``index`` again (same ports, empty cache) after it died or stopped."""
        replica = self.replicas[index]
        replica.stop()
        replica.spawn()
        self.wait_ready([replica])
        return replica

    def stop(self) -> None:
        self._stop_replicas()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _stop_replicas(self) -> None:
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica._signal_group(signal.SIGTERM)
        for replica in self.replicas:
            replica.stop()

    def _make(self, index: int, log_dir: Path, cores: Sequence[int]) -> VllmReplica:
        """Replica ``index``, on ``cores[index mod len(cores)]`` where the fleet pins."""
        options = self.options
        port = free_port()
        events_port = free_port() if options.kv_events else None
        replay_port = free_port() if options.kv_events else None
        args = [
            str(self.venv.path / "bin" / "vllm"), "serve", str(self.model.path),
            "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", self.model.spec.name,
            "--runner", "generate",
            "--block-size", str(options.block_size),
            "--enable-prefix-caching",
            "--prefix-caching-hash-algo", options.hash_algo,
            "--enable-prompt-tokens-details",
            "--kv-cache-memory-bytes", str(options.kv_cache_bytes(self.model)),
            "--max-model-len", str(options.model_len(self.model)),
            "--seed", "0",
            "--disable-uvicorn-access-log",
        ]
        if options.enforce_eager:
            args.append("--enforce-eager")
        if options.max_num_seqs is not None:
            args += ["--max-num-seqs", str(options.max_num_seqs)]
        if events_port is not None:
            args += ["--kv-events-config", json.dumps({
                "enable_kv_cache_events": True, "publisher": "zmq",
                "endpoint": f"tcp://*:{events_port}",
                "replay_endpoint": f"tcp://*:{replay_port}",
                "topic": KV_EVENTS_TOPIC,
            })]
        args += list(options.extra_args)
        core = cores[index % len(cores)]
        bind = (str(core) if options.cpu_bind in ("per_replica", "per_replica_threads")
                else options.cpu_bind)
        env = {key: value for key, value in os.environ.items()
               # vLLM seeds its block-hash chain (NONE_HASH) from PYTHONHASHSEED when set;
               # unset, it is the documented constant a gateway can reproduce.
               if key not in ("PYTHONHASHSEED", "VLLM_CPU_KVCACHE_SPACE")}
        env.update({
            "VLLM_CPU_OMP_THREADS_BIND": bind,
            "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        })
        if options.dev_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return VllmReplica(index=index, port=port, model=self.model, options=options,
                           args=args, env=env, log_path=log_dir / f"replica{index}.log",
                           kv_events_port=events_port, kv_replay_port=replay_port,
                           cores=(frozenset({core})
                                  if options.cpu_bind == "per_replica" else None))


def fleet_lock_path() -> Path:
    return Path.home() / ".cache" / "kvgate" / "vllm-fleet.lock"


def _acquire_fleet_lock() -> IO[str]:
    path = fleet_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a")  # noqa: SIM115 - held until ReplicaFleet.stop()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"kvgate.testing.vllm: another vLLM fleet runs on this machine; waiting for it "
              f"to stop ({path})", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


@contextlib.contextmanager
def running_fleet(venv: VllmVenv, model: BuiltModel, count: int = 2,
                  options: ReplicaOptions | None = None) -> Iterator[ReplicaFleet]:
    """``count`` healthy replicas of ``model`` for the duration of the block."""
    with ReplicaFleet(venv, model, count, options or ReplicaOptions()) as fleet:
        yield fleet
