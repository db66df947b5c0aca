"""The ``kvgate`` command: run, validate, sim, bench, version."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvgate import __version__
from kvgate.config import ConfigError, load_settings


def _run(args: argparse.Namespace) -> int:
    from kvgate.server import serve

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"kvgate: invalid config: {exc}", file=sys.stderr)
        return 2
    return serve(settings, config_path=args.config, host=args.host, port=args.port,
                 workers=args.workers)


def _validate(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    from kvgate.gateway.compose import build_gateway

    try:
        build_gateway(settings)
    except ValueError as exc:
        print(f"invalid: {args.config}: {exc}", file=sys.stderr)
        return 1
    deployments = sum(len(m.deployments) for m in settings.models)
    print(
        f"valid: {len(settings.models)} model(s), {deployments} deployment(s), "
        f"{len(settings.providers)} provider(s), routing {settings.routing.strategy}"
    )
    return 0


def _version(args: argparse.Namespace) -> int:
    print(f"kvgate {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the gateway")
    run.add_argument("-c", "--config", default=None,
                     help="YAML config file (default: built-in demo with mock providers)")
    run.add_argument("--host", default=None, help="bind address (default: from config)")
    run.add_argument("--port", type=int, default=None, help="port (default: from config)")
    run.add_argument("--workers", type=int, default=None, help="worker processes")
    run.set_defaults(func=_run)

    validate = sub.add_parser("validate", help="check a config file")
    validate.add_argument("-c", "--config", required=True)
    validate.set_defaults(func=_validate)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)

    _add_optional(sub, "sim", "kvgate.sim.cli", "start simulated vLLM replicas")
    _add_optional(sub, "bench", "kvgate.bench.cli", "load generator and benchmark scenarios")
    return parser


def _add_optional(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, module: str, help: str
) -> None:
    """Subcommands whose modules own their own flags (``add_arguments``) and entry (``run``)."""
    import importlib
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return
    except ModuleNotFoundError:
        return
    mod = importlib.import_module(module)
    parser = sub.add_parser(name, help=help)
    mod.add_arguments(parser)
    parser.set_defaults(func=mod.run)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
