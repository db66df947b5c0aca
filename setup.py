"""The C extensions; everything else about the package is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the affinity indexes,
the fingerprint, the TTFT model's fits, the scorer's per-candidate passes and a stream's
per-chunk loops run on their pure-Python versions (``kvgate version`` lists what was built;
the gateway logs what was not). CI requires the compiled ones (tests/routing/
test_affinity_native.py, test_chain_native.py, test_fingerprint_native.py, test_fit_native.py,
test_floats.py, test_affinity_shm_native.py, tests/core/test_chunks_native.py) and runs them
under ASan and UBSan (tests/routing/test_native_sanitized.py).
"""

from setuptools import Extension, setup

#: -ffp-contract=off: no fused multiply-add, so float results round as the Python versions' do.
_FLAGS = ["-O2", "-std=c11", "-ffp-contract=off", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-Wno-cast-function-type"]

setup(ext_modules=[
    Extension(f"kvgate.{package}.{name}", sources=[f"src/kvgate/{package}/{name}.c"],
              depends=["src/kvgate/routing/_native.h", "src/kvgate/routing/_floats_decide.h"],
              extra_compile_args=_FLAGS,
              optional=True)
    for package, name in (("routing", "_affinity_native"), ("routing", "_chain_native"),
                          ("routing", "_fit_native"), ("routing", "_floats_native"),
                          ("routing", "_shm_native"), ("core", "_chunks_native"))
])
