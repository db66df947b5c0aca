"""The package's C extensions under AddressSanitizer and UndefinedBehaviorSanitizer: each is
compiled again with ``-fsanitize=address,undefined`` into a copy of the sources, and their
differential tests run there in a child process with the sanitizer runtimes preloaded. A
read or write out of bounds, a use after free or undefined arithmetic fails this test even
where the ordinary build's answers happen to be right.

The compiler is the one ``pip install`` used to build the extensions (CI requires them
built, see test_affinity_native.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
#: (package, module) of each extension.
EXTENSIONS = (("routing", "_affinity_native"), ("routing", "_chain_native"),
              ("routing", "_fit_native"), ("routing", "_floats_native"),
              ("routing", "_shm_native"), ("core", "_chunks_native"))
#: The tests that hold each extension to its Python version.
TESTS = ("tests/routing/test_affinity_native.py", "tests/routing/test_floats.py",
         "tests/routing/test_explain_native.py", "tests/routing/test_decide_native.py",
         "tests/routing/test_affinity_shm_native.py", "tests/routing/test_chain_native.py",
         "tests/routing/test_fingerprint_native.py", "tests/routing/test_fit_native.py",
         "tests/core/test_chunks_native.py")


def _runtime(compiler: str, name: str) -> str:
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert os.path.isabs(path), f"{compiler} has no {name}"
    return path


def test_the_extensions_are_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    compiler = shutil.which(sysconfig.get_config_var("CC").split()[0]) or shutil.which("gcc")
    assert compiler is not None, "no C compiler: the install could not have built the extensions"
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "*.so"))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for package, name in EXTENSIONS:
        folder = src / "kvgate" / package
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer",
             "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-std=c11",
             f"-I{sysconfig.get_paths()['include']}", str(folder / f"{name}.c"),
             "-o", str(folder / f"{name}{suffix}")],
            check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "LD_PRELOAD"}}
    env |= {
        "PYTHONPATH": f"{src}{os.pathsep}{REPO}",
        "LD_PRELOAD": f"{_runtime(compiler, 'libasan.so')}:{_runtime(compiler, 'libubsan.so')}",
        # Python's own allocations are not the extensions' leaks; every allocation through
        # malloc, so that ASan sees the bounds of buffers pymalloc would pool. (A read past a
        # list's items but within its spare capacity is UBSan's to catch: a bad pointer.)
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
        "PYTHONMALLOC": "malloc",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib, sys\nfor m in sys.argv[1:]:\n"
         "    print(importlib.import_module(m).__file__)",
         *(f"kvgate.{package}.{name}" for package, name in EXTENSIONS)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    files = probe.stdout.split()
    assert len(files) == len(EXTENSIONS), probe.stdout + probe.stderr
    assert all(f.startswith(str(src)) for f in files), probe.stdout + probe.stderr
    # --capture=sys: a sanitizer's report is written to file descriptor 2, and must reach
    # this test's output rather than pytest's capture of the child.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys",
         *(str(REPO / test) for test in TESTS)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "ERROR: AddressSanitizer" not in output and "runtime error:" not in output, (
        output[-6000:])
