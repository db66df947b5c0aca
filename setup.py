"""The C extensions; everything else about the package is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the affinity indexes
and the scorer's per-candidate passes run on their pure-Python versions
(kvgate.routing.affinity_core, .affinity_shm and .floats say which is in use; the gateway logs
it). CI requires the compiled ones (tests/routing/test_affinity_native.py, test_floats.py,
test_affinity_shm_native.py).
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Wno-cast-function-type"]

setup(ext_modules=[
    Extension(f"kvgate.routing.{name}", sources=[f"src/kvgate/routing/{name}.c"],
              depends=["src/kvgate/routing/_native.h"], extra_compile_args=_FLAGS,
              optional=True)
    for name in ("_affinity_native", "_chain_native", "_floats_native", "_shm_native")
])
