"""``peers``: KV-aware routers side by side in front of one simulated vLLM fleet.

The routing workloads go, one router at a time, through KVGate's strategies (``round_robin``,
``least_busy``, ``prefix_kv_aware``), vllm-router (``round_robin``, ``consistent_hash``,
``cache_aware``) and SGLang's router (``cache_aware``), all in front of the same ``kvgate sim``
replicas of llava-onevision-7b-a40. Every router gets the same requests (KVGate's differ only in
``model``: one gateway per case serves a model per strategy), and the replicas' prefix and
encoder caches are flushed (``/flush_cache``) before each run. Each peer router is started fresh
for its run, so none keeps prefix state from an earlier one; KVGate keeps state per model.

Cases (the shapes of the ``routing`` scenario, plus a shared-prefix one):

* ``images``: 2 replicas whose KV holds about half of the images; each image asked many
  different questions, shuffled. The peers' prefix trees see only the text parts.
* ``chat``: 4 replicas; multi-turn conversations sharing a system prompt.
* ``shared_prefix``: 4 replicas; groups of prompts sharing a long system prompt.

Every request carries its image / user / prompt group as a session key, both as ``"user"`` in
the body and as an ``x-session-id`` header: what consistent hashing is deployed with. (vllm-router
0.1.17 reads only the header for chat requests; without it every request hashes to one worker.)
The other routers ignore both.

Per router: TTFT percentiles and throughput (modelled GPU time: wall clock x the fleet's time
scale, as in ``routing``), and the replicas' own prefix-cache hit rate and request shares read
from their ``/metrics`` before and after the run. Each router runs :data:`ROUNDS` times per
case, the order rotated every round so that drift on a shared machine hits all alike; tables
show medians, every round is kept in the JSON. Peers install on first use into
``benchmarks/.venvs/``; one that cannot be installed or started is recorded under
``unavailable`` with the exact error. ``--no-peers`` runs KVGate's strategies only. The
figures and tables are :mod:`kvgate.bench.scenarios.peers_report`'s.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from kvgate import __version__
from kvgate.bench.api import RESULT_FORMAT, host_info, run_benchmark, write_json
from kvgate.bench.engine_counters import read_counters
from kvgate.bench.loadgen import LoadSpec
from kvgate.bench.peers import (
    PEER_PACKAGES,
    Installed,
    PeerInstaller,
    PeerUnavailable,
    default_venvs_dir,
    sglang_router,
    vllm_router,
)
from kvgate.bench.processes import free_port, local_gateway
from kvgate.bench.request import BenchRequest
from kvgate.bench.scenarios import ScenarioOptions
from kvgate.bench.scenarios.peers_report import figures, headline, median_figures, print_tables
from kvgate.bench.sim_fleet import running_replicas
from kvgate.bench.workloads import (
    MultimodalWorkload,
    MultiRoundChatWorkload,
    SharedPrefixWorkload,
    WorkloadOptions,
    parameters,
)
from kvgate.sim.profiles import get_profile
from kvgate.sim.settings import ReplicaSettings

PROFILE = "llava-onevision-7b-a40"
TIME_SCALE = 4.0
QUICK_TIME_SCALE = 8.0
#: Share of the images' KV one replica's GPU blocks can hold (as in ``routing``).
IMAGE_KV_SHARE = 0.55
COMMAND = "kvgate bench scenario peers"
RESULT_PATH = Path("benchmarks/results/peers.json")
SESSION_HEADER = "x-session-id"
#: Every router runs this many times per case, rounds interleaved; tables show the medians.
ROUNDS, QUICK_ROUNDS = 3, 1
#: KVGate's prefix_kv_aware defaults for its time-based settings, in modelled seconds; divided
#: by the time scale so the gateway's notion of time matches the sped-up replicas'.
PREFIX_TTL_S = 300.0
PREFIX_METRICS_INTERVAL_S = 1.0

Workload = MultimodalWorkload | MultiRoundChatWorkload | SharedPrefixWorkload


@dataclass(frozen=True, slots=True)
class Router:
    """One router configuration: which system, and the policy it runs."""

    system: str
    policy: str

    @property
    def label(self) -> str:
        return f"{self.system}/{self.policy}"


KVGATE_ROUTERS = tuple(Router("kvgate", s) for s in ("round_robin", "least_busy",
                                                      "prefix_kv_aware"))
PEER_ROUTERS = (
    Router("vllm-router", "round_robin"), Router("vllm-router", "consistent_hash"),
    Router("vllm-router", "cache_aware"), Router("sglang-router", "cache_aware"),
)


@dataclass(frozen=True, slots=True)
class PeerCase:
    """One workload on one fleet shape, run once per router."""

    name: str
    title: str
    replicas: int
    kv_blocks: int
    workload: Workload
    concurrency: int
    time_scale: float
    #: The replicas' simulator profile.
    profile: str = PROFILE

    def replica_settings(self) -> list[ReplicaSettings]:
        # log_level error: sglang-router probes workers with a request their HTTP/1.1 server
        # rejects, and each rejection would print a warning into the scenario's output.
        return [ReplicaSettings(index=i, port=free_port(), profile=self.profile,
                                kv_blocks=self.kv_blocks, time_scale=self.time_scale,
                                log_level="error")
                for i in range(self.replicas)]

    def describe(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "profile": self.profile, "kv_blocks": self.kv_blocks,
                "time_scale": self.time_scale,
                "command": (f"kvgate sim --replicas {self.replicas} --profile {self.profile} "
                            f"--kv-blocks {self.kv_blocks} --time-scale {self.time_scale:g}")}


def cases(quick: bool) -> list[PeerCase]:
    scale = QUICK_TIME_SCALE if quick else TIME_SCALE
    profile = get_profile(PROFILE)
    num_images, resolution = (3, "256x256") if quick else (12, "1024x768")
    images = MultimodalWorkload(num_images=num_images, resolutions=resolution,
                                questions_per_image=3 if quick else 24, question_tokens=24,
                                output_tokens=8 if quick else 64)
    width, height = images.resolution_list()[0]
    image_kv_blocks = math.ceil(IMAGE_KV_SHARE * num_images * profile.image_tokens(width, height)
                                / profile.block_size)
    chat = MultiRoundChatWorkload(
        num_users=4 if quick else 64, num_rounds=2 if quick else 5,
        system_prompt_tokens=100 if quick else 1000, user_history_tokens=100 if quick else 2000,
        question_tokens=20 if quick else 40, answer_tokens=8 if quick else 100)
    shared = SharedPrefixWorkload(num_groups=4 if quick else 16,
                                  prompts_per_group=3 if quick else 24,
                                  system_prompt_tokens=200 if quick else 4096,
                                  question_tokens=32 if quick else 128,
                                  output_tokens=8 if quick else 64)
    return [
        PeerCase("images", f"{num_images} images asked about repeatedly, 2 replicas", 2,
                 image_kv_blocks, images, 4 if quick else 16, scale),
        PeerCase("chat", f"multi-turn chat, {chat.num_users} users, 4 replicas", 4,
                 400 if quick else 2500, chat, 4 if quick else 32, scale),
        PeerCase("shared_prefix", f"{shared.num_groups} shared system prompts, 4 replicas", 4,
                 400 if quick else 12000, shared, 4 if quick else 32, scale),
    ]


# -- the fleet ---------------------------------------------------------------------------------


def flush(urls: Sequence[str], *, timeout_s: float = 30.0) -> None:
    """Empty every replica's prefix cache; a replica refuses (400) while requests still run,
    e.g. streams a router has not finished cancelling, so retry until the deadline."""
    deadline_s = time.monotonic() + timeout_s
    for url in urls:
        while True:
            request = urllib.request.Request(url + "/flush_cache", method="POST", data=b"")
            try:
                with urllib.request.urlopen(request, timeout=10):
                    break
            except urllib.error.HTTPError as exc:
                if exc.code != 400 or time.monotonic() > deadline_s:
                    raise
            time.sleep(0.2)


@contextlib.contextmanager
def running_fleet(case: PeerCase) -> Iterator[list[str]]:
    """The case's replicas on free loopback ports; yields their root URLs."""
    with running_replicas(case.replica_settings()) as settings:
        yield [s.url for s in settings]


# -- routers -----------------------------------------------------------------------------------


def kvgate_config(urls: Sequence[str], served_model: str, strategies: Sequence[str],
                  time_scale: float) -> dict[str, Any]:
    """One logical model per strategy (named after it), each on every replica."""
    ids = [f"replica-{i}" for i in range(len(urls))]
    deployments = [{"provider": rid, "model": served_model, "id": rid} for rid in ids]
    return {
        "server": {"log_level": "warning", "access_log": False},
        "providers": {rid: {"type": "openai_compatible", "api_base": url + "/v1"}
                      for rid, url in zip(ids, urls, strict=True)},
        "models": [{"name": strategy, "routing": {"strategy": strategy},
                    "deployments": deployments} for strategy in strategies],
        # One attempt: a failed request counts as failed, not retried behind the figures.
        "routing": {"max_attempts": 1,
                    "prefix": {"ttl_s": PREFIX_TTL_S / time_scale,
                               "engine_metrics_interval_s": PREFIX_METRICS_INTERVAL_S
                               / time_scale}},
        "cache": {"exact": {"enabled": False}},
    }


@contextlib.contextmanager
def kvgate_gateway(urls: Sequence[str], served_model: str, strategies: Sequence[str],
                   time_scale: float) -> Iterator[str]:
    """``kvgate run`` serving one model per strategy in front of ``urls``; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="kvgate-peers-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_bytes(orjson.dumps(kvgate_config(urls, served_model, strategies, time_scale)))
        with local_gateway(path) as gateway:
            yield gateway.url


@contextlib.contextmanager
def started_peer(router: Router, urls: Sequence[str], installs: dict[str, Installed]
                 ) -> Iterator[str]:
    """A peer router in front of ``urls``, started for one run; yields its base URL."""
    start = vllm_router if router.system == "vllm-router" else sglang_router
    with start(installs[router.system], urls, router.policy) as process:
        yield process.url


def with_session_keys(requests: Sequence[BenchRequest]) -> list[BenchRequest]:
    """Each request keyed by its tag (image, user, prompt group) the two ways routers read a
    session: ``"user"`` in the body (OpenAI's field) and an ``x-session-id`` header (what
    vllm-router's consistent hashing reads; 0.1.17 ignores the body of chat requests)."""
    return [replace(r, body=orjson.dumps({**orjson.loads(r.body), "user": r.tag}),
                    headers={SESSION_HEADER: r.tag})
            for r in requests]


# -- the run -----------------------------------------------------------------------------------


def _install_peers(options: ScenarioOptions, unavailable: dict[str, str]
                   ) -> dict[str, Installed]:
    installs: dict[str, Installed] = {}
    if not options.peers:
        return installs
    installer = PeerInstaller(default_venvs_dir())
    for system in sorted({r.system for r in PEER_ROUTERS}):
        if options.console is not None:
            options.console.print(f"installing {system} (reused if already there) ...")
        try:
            installs[system] = installer.ensure(PEER_PACKAGES[system])
        except PeerUnavailable as exc:
            unavailable[system] = str(exc)
    return installs


def run_case(case: PeerCase, routers: Sequence[Router], installs: dict[str, Installed],
             options: ScenarioOptions, unavailable: dict[str, str], *, rounds: int = 1,
             ) -> dict[str, Any]:
    """Every router ``rounds`` times in front of one fleet, the order rotated each round.
    KVGate runs one gateway for the case with a model per strategy (requests differ only in
    ``model``); each peer router is started for its own run."""
    console = options.console
    served_model = get_profile(case.profile).served_model_name
    load = LoadSpec(mode="closed", concurrency=case.concurrency, request_timeout_s=120.0,
                    seed=options.seed)

    def requests_for(model: str) -> list[BenchRequest]:
        return with_session_keys(case.workload.build(workload_options(model)))

    def workload_options(model: str) -> WorkloadOptions:
        # Exactly max_tokens per answer, so routers are compared on equal work.
        return WorkloadOptions(model=model, seed=options.seed, stream=True, ignore_eos=True)

    section: dict[str, Any] = {
        "title": case.title, "fleet": case.describe(),
        "workload": {"name": case.workload.name, "parameters": parameters(case.workload),
                     "options": parameters(workload_options("<strategy or served model>")),
                     "requests": len(requests_for(served_model))},
        "load": load.describe(), "rounds": rounds, "routers": {},
    }
    if console is not None:
        console.print(f"[bold]peers / {case.name}[/]: {case.title}; "
                      f"{section['fleet']['command']}")
    strategies = [r.policy for r in routers if r.system == "kvgate"]
    per_round: dict[str, list[dict[str, Any]]] = {}
    with running_fleet(case) as urls, kvgate_gateway(urls, served_model, strategies,
                                                     case.time_scale) as gateway_url:
        for round_index in range(rounds):
            shift = round_index % len(routers)
            for router in list(routers[shift:]) + list(routers[:shift]):
                if router.system != "kvgate" and router.system not in installs:
                    continue
                flush(urls)
                before, load_before = read_counters(urls), round(os.getloadavg()[0], 2)
                label = f"{case.name}/{router.label}"
                try:
                    with contextlib.ExitStack() as stack:
                        if router.system == "kvgate":
                            url, model = gateway_url, router.policy
                        else:
                            url = stack.enter_context(started_peer(router, urls, installs))
                            model = served_model
                        result = run_benchmark(url, requests_for(model), load, label=label,
                                               console=console)
                except PeerUnavailable as exc:
                    unavailable[label] = str(exc)
                    continue
                engine = [b.delta(a) for a, b in zip(before, read_counters(urls), strict=True)]
                numbers = figures(result, engine, case.time_scale)
                numbers["load_average_1m"] = [load_before, round(os.getloadavg()[0], 2)]
                per_round.setdefault(router.label, []).append(numbers)
    section["routers"] = {r.label: median_figures(per_round[r.label]) for r in routers
                          if r.label in per_round}
    return section


def run(options: ScenarioOptions) -> dict[str, Any]:
    if options.target is not None:
        raise ValueError("the peers scenario starts its own fleet and routers; "
                         "it does not take --target")
    unavailable: dict[str, str] = {}
    installs = _install_peers(options, unavailable)
    routers = list(KVGATE_ROUTERS) + (list(PEER_ROUTERS) if options.peers else [])
    document: dict[str, Any] = {
        "kvgate_bench": {"format": RESULT_FORMAT, "version": __version__},
        "scenario": "peers",
        "quick": options.quick,
        "seed": options.seed,
        "command": COMMAND + (" --quick" if options.quick else "")
                   + ("" if options.peers else " --no-peers"),
        "host": host_info(),
        "units": "ttft_ms, latency_ms and rates are modelled GPU time: wall clock x time_scale",
        "peers": options.peers,
        "installs": {name: install.describe() for name, install in installs.items()},
        "unavailable": unavailable,
        "cases": {},
    }
    for turn, case in enumerate(cases(options.quick)):
        # Rotate the order per case so that no router always runs first (or last).
        shift = turn % len(routers)
        document["cases"][case.name] = run_case(
            case, routers[shift:] + routers[:shift], installs, options, unavailable,
            rounds=QUICK_ROUNDS if options.quick else ROUNDS)
    document["comparison"] = {
        name: {r.label: headline(section["routers"][r.label]) for r in routers
               if r.label in section["routers"]}
        for name, section in document["cases"].items()}
    if options.console is not None:
        print_tables(document, options.console)
    if (own := options.own_result_path(RESULT_PATH)) is not None:
        path = write_json(own, document)
        if options.console is not None:
            options.console.print(f"wrote {path}")
    return document
