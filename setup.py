"""The C extension; everything else about the package is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and the affinity index
runs on its pure-Python core (kvgate.routing.affinity_core says which one is in use). CI
requires the compiled one (tests/routing/test_affinity_native.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "kvgate.routing._affinity_native",
    sources=["src/kvgate/routing/_affinity_native.c"],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
    optional=True,
)])
