"""`kvgate sim`: command-line options of the simulated vLLM fleet.

The main CLI calls `add_arguments(parser)` on its `sim` sub-parser and `run(args)` to execute;
`python -m kvgate.sim` does the same on its own parser.
"""

from __future__ import annotations

import argparse
from typing import get_args

from kvgate.extras import MissingExtra

try:
    from kvgate.sim.fleet import run_fleet
    from kvgate.sim.profiles import DEFAULT_PROFILE, PROFILES
    from kvgate.sim.settings import ReplicaSettings
    from kvgate.vllm_compat.hashing import HashAlgo
except ModuleNotFoundError as exc:  # the `sim` extra (ZMQ, msgspec, CBOR), unless it is ours
    if (exc.name or "kvgate").partition(".")[0] == "kvgate":
        raise
    raise MissingExtra("kvgate sim", "sim", exc.name or "") from exc


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=1, help="number of replicas (default 1)")
    parser.add_argument("--base-port", type=int, default=8100,
                        help="HTTP port of replica 0; replica i listens on base+i (default 8100)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                        help=f"model/GPU profile (default {DEFAULT_PROFILE})")
    parser.add_argument("--kv-blocks", type=int, default=None,
                        help="GPU KV blocks per replica (vLLM --num-gpu-blocks-override)")
    parser.add_argument("--cpu-offload-blocks", type=int, default=0,
                        help="LMCache-like CPU tier per replica, in blocks (default 0 = off)")
    parser.add_argument("--time-scale", type=_positive_float, default=1.0,
                        help="run N times faster than the modelled GPU (default 1)")
    parser.add_argument("--kv-events", action="store_true",
                        help="publish KV-cache events over ZMQ, as vLLM's --kv-events-config")
    parser.add_argument("--kv-events-port", type=int, default=None,
                        help="PUB port of replica 0 (replay on +1; replica i adds 2i); "
                             "default base-port + 1000")
    parser.add_argument("--kv-events-topic", default="kv-events")
    parser.add_argument("--kv-events-layout", choices=["map", "array"], default="map",
                        help="event encoding: map (vLLM >= 0.11) or array (legacy)")
    parser.add_argument("--hash-algo", choices=list(get_args(HashAlgo)), default="sha256",
                        help="vLLM --prefix-caching-hash-algo (default sha256)")
    parser.add_argument("--hash-seed", default=None,
                        help="the replicas' PYTHONHASHSEED; unset = vLLM's rule (fixed seed for "
                             "sha256*, random per replica for xxhash*)")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--image-tokens", type=int, default=None,
                        help="vision tokens per image, overriding the profile's size rule")
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default="warning")
    parser.add_argument("--json", action="store_true",
                        help="also print the replicas as one JSON line once ready")


def replica_settings(args: argparse.Namespace) -> list[ReplicaSettings]:
    """One ReplicaSettings per replica from parsed arguments."""
    if args.replicas < 1:
        raise SystemExit("kvgate sim: --replicas must be >= 1")
    events_port = args.kv_events_port or args.base_port + 1000
    replicas = []
    for index in range(args.replicas):
        endpoint = replay = None
        if args.kv_events:
            port = events_port + 2 * index
            endpoint, replay = f"tcp://{args.host}:{port}", f"tcp://{args.host}:{port + 1}"
        replicas.append(ReplicaSettings(
            index=index,
            host=args.host,
            port=args.base_port + index,
            profile=args.profile,
            served_model_name=args.served_model_name,
            kv_blocks=args.kv_blocks,
            cpu_offload_blocks=args.cpu_offload_blocks,
            time_scale=args.time_scale,
            hash_algo=args.hash_algo,
            hash_seed=args.hash_seed,
            kv_events_endpoint=endpoint,
            kv_events_replay_endpoint=replay,
            kv_events_topic=args.kv_events_topic,
            kv_events_layout=args.kv_events_layout,
            image_tokens=args.image_tokens,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            log_level=args.log_level,
        ))
    return replicas


def run(args: argparse.Namespace) -> int:
    settings = replica_settings(args)
    profile = PROFILES[args.profile]
    print(f"kvgate sim: {len(settings)} replica(s) of {profile.name} "
          f"({profile.served_model_name}), time scale {args.time_scale:g}", flush=True)
    return run_fleet(settings, print_json=args.json)
