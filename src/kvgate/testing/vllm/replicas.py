"""Start and stop N real ``vllm serve`` replicas on loopback, the way KV-aware routing needs them.

Every replica runs with prefix caching, ``--enable-prompt-tokens-details`` (so answers carry
``usage.prompt_tokens_details.cached_tokens``), block size 32 (the CPU attention backend needs
a multiple of 32), ``--enforce-eager`` (compilation costs 20-45 s at start-up and gains nothing
on tiny models), a KV budget given in *tokens* and turned into ``--kv-cache-memory-bytes``, and
KV-cache events published over ZMQ.

NOTE: vLLM's publisher *connects* to a concrete ``tcp://host:port`` and binds only wildcard
endpoints, while KVGate's subscribers connect; so each replica is given ``tcp://*:PORT`` (it
binds every interface on that port) and reports ``tcp://127.0.0.1:PORT`` for subscribers.

A replica is a process group (API server, engine core, worker): stopping signals the group, so
nothing outlives the fleet. On two cores each replica's OpenMP threads are pinned to a core of
their own (``VLLM_CPU_OMP_THREADS_BIND``), so two replicas do not spin against each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from kvgate.testing.vllm.models import BuiltModel
from kvgate.testing.vllm.venv import VllmVenv

_LOG_TAIL_BYTES = 6000
_POLL_S = 0.25
KV_EVENTS_TOPIC = "kv-events"


class ReplicaStartError(RuntimeError):
    """A replica exited or never became healthy; the message ends with its log."""


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
    #: ``per_replica``: replica i's threads on core i mod cores; or vLLM's ``auto`` or
    #: ``nobind``.
    cpu_bind: Literal["per_replica", "auto", "nobind"] = "per_replica"
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
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env,
                                        start_new_session=True)
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

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def prefix_cache_counters(self) -> dict[str, float]:
        """vLLM's own counters: prefix-cache queries and hits and prompt tokens (in tokens),
        preemptions and finished requests."""
        wanted = {"vllm:prefix_cache_queries_total": "queries",
                  "vllm:prefix_cache_hits_total": "hits",
                  "vllm:prompt_tokens_total": "prompt_tokens",
                  "vllm:num_preemptions_total": "preemptions",
                  "vllm:request_success_total": "requests"}
        counters = dict.fromkeys(wanted.values(), 0.0)
        for line in self.metrics_text().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted and not line.startswith("#"):
                counters[wanted[name]] += float(line.rsplit(" ", 1)[-1])
        return counters

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

    def rss_bytes(self) -> int:
        """Resident memory of the replica's whole process tree."""
        if self.process is None or self.process.poll() is not None:
            return 0
        return sum(_rss_bytes(pid) for pid in _process_tree(self.process.pid))


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
        cores = os.cpu_count() or 1
        self.replicas = [self._make(index, log_dir, cores) for index in range(self.count)]
        try:
            for replica in self.replicas:
                replica.spawn()
            self.wait_ready(self.replicas)
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
        for replica in self.replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica._signal_group(signal.SIGTERM)
        for replica in self.replicas:
            replica.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _make(self, index: int, log_dir: Path, cores: int) -> VllmReplica:
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
        bind = str(index % cores) if options.cpu_bind == "per_replica" else options.cpu_bind
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
                           kv_events_port=events_port, kv_replay_port=replay_port)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


@contextlib.contextmanager
def running_fleet(venv: VllmVenv, model: BuiltModel, count: int = 2,
                  options: ReplicaOptions | None = None) -> Iterator[ReplicaFleet]:
    """``count`` healthy replicas of ``model`` for the duration of the block."""
    with ReplicaFleet(venv, model, count, options or ReplicaOptions()) as fleet:
        yield fleet
