"""``kvgate bench``: the load generator and benchmark scenarios.

    kvgate bench                                 # the demo scenario: start `kvgate run`, load it
    kvgate bench run --workload shared_prefix -W num_groups=8 --concurrency 32 --out r.json
    kvgate bench run --workload trace --timestamps --speedup 4
    kvgate bench scenario demo --quick --out benchmarks/results/demo.json
    kvgate bench scenario sweep --seeds 2 --out benchmarks/results/sweep.json --plots docs/img
    kvgate bench list                            # workloads (with parameters) and scenarios
    kvgate bench make-trace --out benchmarks/traces/mooncake_synthetic.jsonl

Only the standard library is imported here: ``kvgate`` builds every subcommand's parser at
start-up, and aiohttp, rich and matplotlib would add most of a second to ``kvgate version``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_TARGET = "http://127.0.0.1:8080"
DEFAULT_CONCURRENCY = 16


_DESCRIPTION = """\
Load generator and benchmark scenarios. With no subcommand: the demo scenario (starts
`kvgate run` with its built-in mock config on a free port, load-tests it, prints a summary).

examples:
  kvgate bench run --workload shared_prefix -W num_groups=8 --concurrency 32 --out r.json
  kvgate bench run --workload chat --rate 20 --poisson --duration-s 60 --plots plots/
  kvgate bench run --workload trace --timestamps --speedup 4 --ignore-eos
  kvgate bench scenario demo --quick
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = _DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(bench_command=None)
    sub = parser.add_subparsers(dest="bench_command", metavar="{run,scenario,list,make-trace}")

    run = sub.add_parser("run", help="drive one workload at a gateway and summarise",
                         description="Drive one workload at an OpenAI-compatible endpoint.")
    run.add_argument("--target", default=DEFAULT_TARGET,
                     help=f"gateway base URL (default {DEFAULT_TARGET})")
    run.add_argument("--model", default="demo", help="model name to request (default demo)")
    run.add_argument("--workload", default="chat",
                     help="chat, shared_prefix, multimodal or trace (default chat)")
    run.add_argument("-W", "--workload-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="set a workload parameter, e.g. -W num_groups=8 (see `bench list`)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, default=None,
                      help=f"closed loop with N requests in flight (default {DEFAULT_CONCURRENCY})")
    mode.add_argument("--rate", type=float, default=None, metavar="REQ_PER_S",
                      help="open loop at this arrival rate (fixed gaps; see --poisson)")
    mode.add_argument("--timestamps", action="store_true",
                      help="open loop at the trace's own arrival times (default for trace)")
    run.add_argument("--poisson", action="store_true",
                     help="with --rate: Poisson arrivals (exponential gaps) instead of fixed")
    run.add_argument("--speedup", type=float, default=1.0,
                     help="with --timestamps: divide the trace's gaps by this (default 1)")
    run.add_argument("--requests", type=int, default=None,
                     help="number of requests (default: the workload's natural size)")
    run.add_argument("--duration-s", type=float, default=None,
                     help="stop starting new requests after this many seconds")
    run.add_argument("--seed", type=int, default=0, help="workload and arrival seed")
    run.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                     help="stream responses (TTFT is measured only when streaming)")
    run.add_argument("--ignore-eos", action="store_true",
                     help="ask vLLM-like servers to generate exactly max_tokens")
    run.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    run.add_argument("--timeout-s", type=float, default=300.0, help="per-request timeout")
    _add_output_flags(run)
    run.add_argument("--no-records", action="store_true",
                     help="leave per-request records out of --out")
    run.set_defaults(bench_command="run")

    scenario = sub.add_parser("scenario", help="run a named, reproducible benchmark scenario")
    scenario.add_argument("name", help="scenario name (see `kvgate bench list`)")
    scenario.add_argument("--quick", action="store_true", help="tiny sizes, seconds not minutes")
    scenario.add_argument("--seed", type=int, default=0)
    scenario.add_argument("--seeds", type=int, default=1, metavar="N",
                          help="scenarios that repeat their runs (sweep): seeds SEED..SEED+N-1")
    scenario.add_argument("--target", default=None,
                          help="measure this running gateway instead of starting one")
    scenario.add_argument("--no-peers", dest="peers", action="store_false",
                          help="leave out the peer systems (nginx, LiteLLM, vllm-router, "
                               "sglang-router): KVGate's side only, nothing installed")
    scenario.add_argument("--trace", type=Path, default=None, metavar="JSONL",
                          help="sweep: your own trace (Mooncake format: timestamp, "
                               "input_length, output_length, hash_ids) in place of its workloads")
    scenario.add_argument("--trace-window", type=_window, default=(0, 1024),
                          metavar="FIRST:COUNT",
                          help="with --trace: COUNT entries from entry FIRST (default 0:1024)")
    _add_output_flags(scenario)

    sub.add_parser("list", help="list workloads (with parameters) and scenarios")

    trace = sub.add_parser("make-trace", help="write the synthetic Mooncake-style trace")
    trace.add_argument("--out", required=True, type=Path)
    trace.add_argument("--requests", type=int, default=200)
    trace.add_argument("--seed", type=int, default=0)
    trace.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second")


def _window(text: str) -> tuple[int, int]:
    first, sep, count = text.partition(":")
    try:
        window = int(first), int(count)
    except ValueError:
        window = (-1, 0)
    if not sep or window[0] < 0 or window[1] < 1:
        raise argparse.ArgumentTypeError(
            f"expected FIRST:COUNT with FIRST >= 0 and COUNT >= 1, got {text!r}")
    return window


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--plots", type=Path, default=None, metavar="DIR",
                        help="write PNG plots (latency CDFs, per-replica load) into DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or tables")


def run(args: argparse.Namespace) -> int:
    command = args.bench_command
    try:
        if command is None:
            return _scenario(argparse.Namespace(name="demo", quick=False, seed=0, target=None,
                                                out=None, plots=None, quiet=False))
        if command == "run":
            return _run(args)
        if command == "scenario":
            return _scenario(args)
        if command == "list":
            return _list()
        return _make_trace(args)
    except ValueError as exc:
        print(f"kvgate bench: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. ProcessStartError: a gateway or fleet did not start
        print(f"kvgate bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kvgate bench: interrupted", file=sys.stderr)
        return 130


def _console(quiet: bool) -> Any:
    if quiet:
        return None
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"-W takes KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def _run(args: argparse.Namespace) -> int:
    from kvgate.bench.api import run_benchmark, write_json
    from kvgate.bench.loadgen import LoadMode, LoadSpec
    from kvgate.bench.workloads import WorkloadOptions, make_workload, parameters

    workload = make_workload(args.workload, _overrides(args.workload_arg))
    options = WorkloadOptions(model=args.model, seed=args.seed, num_requests=args.requests,
                              stream=args.stream, ignore_eos=args.ignore_eos)
    mode: LoadMode
    if args.rate is not None:
        mode = "poisson" if args.poisson else "fixed"
    elif args.timestamps or (args.concurrency is None and args.workload == "trace"):
        mode = "timestamps"
    else:
        mode = "closed"
    if args.poisson and args.rate is None:
        raise ValueError("--poisson needs --rate")
    load = LoadSpec(mode=mode, concurrency=args.concurrency or DEFAULT_CONCURRENCY,
                    rate_per_s=args.rate or 0.0, speedup=args.speedup,
                    duration_s=args.duration_s, request_timeout_s=args.timeout_s,
                    seed=args.seed)
    from kvgate.bench.processes import is_serving

    target = args.target.rstrip("/")
    if not is_serving(target + "/healthz", timeout_s=3.0):
        raise ValueError(f"nothing is serving at {target}; start one with `kvgate run`, or run "
                         "`kvgate bench` alone to load-test a gateway it starts itself")
    requests = workload.build(options)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else None
    console = _console(args.quiet)
    meta = {"workload": {"name": workload.name, "parameters": parameters(workload),
                         "options": parameters(options)}}
    label = f"{workload.name} ({mode})"
    result = run_benchmark(target, requests, load, label=label, headers=headers,
                           console=console, meta=meta)
    if console is not None:
        from kvgate.bench.report import print_summary

        print_summary(result.summary, console, title=f"kvgate bench: {label} -> {target}")
    if args.out is not None:
        path = write_json(args.out, result.document(include_records=not args.no_records))
        _note(console, f"results: {path}")
    if args.plots is not None:
        from kvgate.bench.plots import write_plots

        paths = write_plots(result.records, args.plots, label=label, prefix=workload.name)
        _note(console, "plots: " + ", ".join(str(p) for p in paths))
    return 0 if result.summary["requests"]["ok"] else 1


def _scenario(args: argparse.Namespace) -> int:
    from kvgate.bench.api import write_json
    from kvgate.bench.scenarios import ScenarioOptions, load_scenario

    if args.trace is not None and args.name != "sweep":
        raise ValueError("--trace is the sweep's (kvgate bench scenario sweep --trace FILE)")
    scenario = load_scenario(args.name)
    console = _console(args.quiet)
    document = scenario(ScenarioOptions(quick=args.quick, seed=args.seed, target=args.target,
                                        plots_dir=args.plots, console=console,
                                        peers=getattr(args, "peers", True),
                                        seeds=getattr(args, "seeds", 1), out=args.out,
                                        trace=args.trace, trace_window=args.trace_window))
    if args.out is not None:
        _note(console, f"results: {write_json(args.out, document)}")
    return 0


def _list() -> int:
    import dataclasses

    from kvgate.bench.scenarios import SCENARIOS
    from kvgate.bench.workloads import WORKLOADS

    print("workloads (set parameters with -W KEY=VALUE):")
    for name, workload_type in WORKLOADS.items():
        fields = dataclasses.fields(workload_type)  # type: ignore[arg-type]
        params = ", ".join(f"{f.name}={f.default!r}" for f in fields)
        print(f"  {name:<14} {params}")
    print("scenarios (kvgate bench scenario NAME [--quick]):")
    for name, entry in SCENARIOS.items():
        print(f"  {name:<14} {entry.description}")
    return 0


def _make_trace(args: argparse.Namespace) -> int:
    from kvgate.bench.trace import dump_trace, synthesize_trace

    entries = synthesize_trace(args.requests, seed=args.seed, rate_per_s=args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_trace(entries))
    print(f"wrote {len(entries)} entries to {args.out}")
    return 0


def _note(console: Any, text: str) -> None:
    if console is not None:
        console.print(text)
