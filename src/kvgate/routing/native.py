"""The routing's C extensions (``_affinity_native``, ``_chain_native``, ``_fit_native``,
``_floats_native``, ``_shm_native``): each
has a Python version that serves where the install could not compile it, with the same
results at more CPU per request. This says so once per process and extension."""

from __future__ import annotations

import importlib.util
import logging

#: The extensions, in the order ``kvgate version`` lists them.
EXTENSIONS = ("_affinity_native", "_chain_native", "_fit_native", "_floats_native",
              "_shm_native")

#: Extensions already reported missing in this process.
_warned: set[str] = set()


def built() -> dict[str, bool]:
    """Which extensions this install has (found, not imported: ``kvgate version`` stays
    cheap)."""
    return {name: importlib.util.find_spec(f"kvgate.routing.{name}") is not None
            for name in EXTENSIONS}


def warn_missing(extension: str, consequence: str, *, logger: str = "kvgate.routing") -> None:
    """Log, once, that ``kvgate.routing.<extension>`` was not built and what that costs."""
    if extension in _warned:
        return
    _warned.add(extension)
    logging.getLogger(logger).warning(
        "kvgate.routing.%s is not built (no C compiler at install?): %s; reinstall with a C "
        "compiler", extension, consequence)
