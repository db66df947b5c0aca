"""`python -m kvgate.sim`: the simulated fleet without the main `kvgate` CLI."""

from __future__ import annotations

import argparse
import sys

from kvgate.sim.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="kvgate sim", description="Start simulated vLLM replicas on loopback."
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
