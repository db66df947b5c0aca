"""The package's C extensions: each has a Python version that serves where the install
could not compile it, with the same results at more CPU per request. This says so once per
process and extension."""

from __future__ import annotations

import importlib.util
import logging

#: Each extension's module, in the order ``kvgate version`` lists them.
EXTENSIONS = {
    "_affinity_native": "kvgate.routing._affinity_native",
    "_chain_native": "kvgate.routing._chain_native",
    "_chunks_native": "kvgate.core._chunks_native",
    "_fit_native": "kvgate.routing._fit_native",
    "_floats_native": "kvgate.routing._floats_native",
    "_shm_native": "kvgate.routing._shm_native",
}

#: Extensions already reported missing in this process.
_warned: set[str] = set()


def built() -> dict[str, bool]:
    """Which extensions this install has (found, not imported: ``kvgate version`` stays
    cheap)."""
    return {name: importlib.util.find_spec(module) is not None
            for name, module in EXTENSIONS.items()}


def warn_missing(extension: str, consequence: str, *, logger: str = "kvgate.routing") -> None:
    """Log, once, that ``extension`` (a key of :data:`EXTENSIONS`) was not built and what
    that costs."""
    if extension in _warned:
        return
    _warned.add(extension)
    logging.getLogger(logger).warning(
        "%s is not built (no C compiler at install?): %s; reinstall with a C compiler",
        EXTENSIONS[extension], consequence)
