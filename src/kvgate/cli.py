"""The ``kvgate`` command: run, validate, sim, bench, version."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvgate import __version__, extras
from kvgate.extras import MissingExtra


def _run(args: argparse.Namespace) -> int:
    from kvgate.config import ConfigError, load_settings
    from kvgate.server import serve

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"kvgate: invalid config: {exc}", file=sys.stderr)
        return 2
    missing = extras.missing(settings)
    if missing:
        for problem in missing:
            print(f"kvgate run: {problem}", file=sys.stderr)
        return 2
    return serve(settings, config_path=args.config, host=args.host, port=args.port,
                 workers=args.workers)


def _validate(args: argparse.Namespace) -> int:
    from kvgate.config import check_config_file

    report = check_config_file(args.config)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for error in report.errors:
        print(f"invalid: {error}", file=sys.stderr)
    settings = report.settings
    if settings is None:
        return 1
    missing = extras.missing(settings)
    if missing:
        for problem in missing:
            print(f"invalid: {args.config}: {problem}", file=sys.stderr)
        return 1
    from kvgate.gateway.compose import build_gateway

    try:
        build_gateway(settings)
    except (ValueError, MissingExtra) as exc:
        print(f"invalid: {args.config}: {exc}", file=sys.stderr)
        return 1
    deployments = sum(len(m.deployments) for m in settings.models)
    print(
        f"valid: {len(settings.models)} model(s), {deployments} deployment(s), "
        f"{len(settings.providers)} provider(s), routing {settings.routing.strategy}"
    )
    return 0


def _version(args: argparse.Namespace) -> int:
    from kvgate.native import built

    print(f"kvgate {__version__}")
    # Without them routing is the same at more CPU per request: operators should know.
    print("C extensions: " + ", ".join(f"{name} {'built' if found else 'MISSING'}"
                                       for name, found in built().items()))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
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

    for name, (module, help_text, _extra) in _MODULE_COMMANDS.items():
        _add_module_command(sub, name, module, help_text, load=name == command)
    return parser


#: Subcommands whose modules own their flags (``add_arguments``) and entry point (``run``),
#: with the extra each needs. They are imported only when chosen, so ``kvgate version`` does not
#: pay for the simulator, and a core install runs the gateway without them.
_MODULE_COMMANDS = {
    "sim": ("kvgate.sim.cli", "start simulated vLLM replicas", "sim"),
    "bench": ("kvgate.bench.cli", "load generator and benchmark scenarios", "bench"),
}


def _add_module_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    module: str,
    help_text: str,
    *,
    load: bool,
) -> None:
    parser = sub.add_parser(name, help=help_text)
    if load:
        import importlib

        mod = importlib.import_module(module)
        mod.add_arguments(parser)
        parser.set_defaults(func=mod.run)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(arguments)
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        problem = exc if isinstance(exc, MissingExtra) else _missing_extra(command, exc)
        if problem is None:
            raise
        print(problem if command in _MODULE_COMMANDS else f"kvgate {command}: {problem}",
              file=sys.stderr)
        return 2
    return code


def _missing_extra(command: str | None, exc: ModuleNotFoundError) -> MissingExtra | None:
    """A missing third-party package as the extra to install; None for anything else (a
    missing kvgate module is a bug, and keeps its traceback)."""
    module = (exc.name or "").partition(".")[0]
    if not module or module == "kvgate":
        return None
    if command in _MODULE_COMMANDS:
        return MissingExtra(f"kvgate {command}", _MODULE_COMMANDS[command][2], module)
    return extras.explain(exc, "this config")


if __name__ == "__main__":
    sys.exit(main())
