"""The fingerprint's C block loop timed on the two xxh3 entries (see README).

python xxh3_time.py LABEL: ``_chain_native.chain`` over 32 KB in 128 blocks of 256 bytes (a
prompt's links) and over one 28 KB block (the memo's digest of a system prompt); best of 7.
PYTHONPATH=<tree>/src for another tree (``898aae7`` calls XXH3_64bits_withSeed, later trees
its ``_dispatch`` entry).
"""

from __future__ import annotations

import sys
import timeit

from kvgate.routing import _chain_native

label = sys.argv[1]
links: list[int] = []
prompt = bytes(range(256)) * 128
system = bytes(range(256)) * 112


def blocks() -> None:
    links.clear()
    _chain_native.chain(prompt, 0, len(prompt), 256, 7, links)


def whole() -> None:
    links.clear()
    _chain_native.chain(system, 0, len(system), len(system), 7, links)


for name, work, number in (("128 blocks of 256 B", blocks, 2000),
                           ("one 28 KB block", whole, 20000)):
    best_s = min(timeit.repeat(work, number=number, repeat=7)) / number
    print(f"{label} {name}: {best_s * 1e6:.2f} us")
