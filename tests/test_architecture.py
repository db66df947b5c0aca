"""The house's shape, checked: the layers of the request's journey import only downwards (at
most the one upward arrow named below), the serving path never imports the simulator or the
benchmarks, and there is no import circle. docs/ARCHITECTURE.md draws the same map."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SHARED_TOOL = ROOT.parent / "shared" / "tools" / "import_graph.py"

#: Packages of ``kvgate`` from the ground floor up. A package may import its own layer and any
#: layer below; ``sim``, ``bench`` and ``testing`` stand beside the house and may import it.
LAYERS: list[set[str]] = [
    {"core", "config", "errors", "observability", "vllm_compat", "extras", "native"},
    {"providers"},
    {"routing"},
    {"resilience"},
    {"cache"},
    {"limits"},
    {"auth"},
    {"request"},
    {"gateway"},
    {"api"},
    {"server", "httpserver", "workers"},
    {"cli", "__main__"},
]
BESIDE = {"sim", "bench", "testing"}
SERVING = {name for layer in LAYERS for name in layer} - {"cli", "__main__"}


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "kvgate" and len(parts) > 1 else None


def _edges() -> set[tuple[str, str, str]]:
    """(importing package, imported package, importing file) over every import, lazy and
    TYPE_CHECKING ones included: a lazy import is still a dependency."""
    edges: set[tuple[str, str, str]] = set()
    for path in (SRC / "kvgate").rglob("*.py"):
        relative = path.relative_to(SRC / "kvgate")
        source = relative.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                target = _package_of(name)
                if target is not None and target != source:
                    edges.add((source, target, str(relative)))
    return edges


def _layer(package: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    return None


def test_every_package_has_a_place_on_the_map() -> None:
    packages = {p.name.removesuffix(".py") for p in (SRC / "kvgate").iterdir()
                if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    placed = SERVING | BESIDE | {"cli", "__main__"}
    assert packages - placed == set(), "add new packages to LAYERS and docs/ARCHITECTURE.md"


def test_layers_import_downwards() -> None:
    upward = sorted(
        (source, target, where) for source, target, where in _edges()
        if source not in BESIDE and target not in BESIDE
        and (_layer(source) or 0) < (_layer(target) or 0)
    )
    assert upward == []


def test_the_serving_path_never_imports_the_simulator_or_the_benchmarks() -> None:
    crossing = sorted((s, t, w) for s, t, w in _edges() if s in SERVING and t in BESIDE)
    assert crossing == []


def test_no_import_circles_and_no_forbidden_edges() -> None:
    forbid = [f"--forbid=kvgate.{s}:kvgate.{t}" for s in sorted(SERVING) for t in sorted(BESIDE)]
    result = subprocess.run(
        [sys.executable, str(SHARED_TOOL), str(SRC), *forbid],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no circles" in result.stdout


def test_no_source_file_over_400_lines() -> None:
    long = sorted(
        (str(p.relative_to(SRC)), n) for p in (SRC / "kvgate").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    )
    assert long == []
