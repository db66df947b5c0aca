"""Tiny random-weight models for real vLLM, built locally and deterministically from a seed.

Two shapes, both served by vLLM's CPU build in well under a second per request:

- ``tiny-llama``: a Llama decoder (hidden 256, 4 layers, 2 KV heads) for text workloads;
- ``tiny-llava``: LLaVA with a CLIP vision tower at 336 px / 14 px patches, so every image is
  576 vision tokens: about 95 % of a prompt of one image and a short question, which makes an
  image's prefill (vision encoder and KV) the cost that prefix caching saves.

The tokenizer is a byte-level BPE trained here on the benchmark's filler vocabulary and a short
English passage (so the workloads' filler pieces are one token each, as the workloads assume),
saved with a ChatML template. Nothing is downloaded. A model directory is cached under
``$KVGATE_MODELS_DIR`` (default ``~/.cache/kvgate/models``) as ``<name>-<key>``, where the key
hashes the build parameters, the builder script and the venv's library versions; the same key
always gives the same bytes. Building runs in the vLLM venv's interpreter (see ``_in_venv``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kvgate.bench.text import filler
from kvgate.testing.vllm.venv import VllmVenv

MODELS_DIR_ENV = "KVGATE_MODELS_DIR"
MODEL_MARKER = "kvgate-model.json"
BUILDER = Path(__file__).with_name("_in_venv") / "build_model.py"
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

_ENGLISH = """\
A gateway sits between many clients and a few model servers. Every request carries a prompt,
and every server keeps the attention state of the prompts it has recently seen, split into
blocks of tokens. When a new request starts with the same blocks, the server can skip that part
of the work and answer sooner. The router below tries to send each request to the server that
is most likely to hold its prefix, while keeping the load even. Images are long prompts too:
a picture becomes hundreds of tokens before the question is read. Questions about the same
document, the same picture or the same conversation should land where that context already is.
What is in this image? Describe the picture in one sentence. Summarise the document above.
Which section explains the method? List three facts from the text. Answer briefly, please.
"""


@dataclass(frozen=True, slots=True)
class TextShape:
    """The Llama decoder (also LLaVA's language model)."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True, slots=True)
class VisionShape:
    """LLaVA's CLIP vision tower; ``(image_size // patch_size) ** 2`` tokens per image."""

    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything a model build depends on, besides library versions."""

    name: str
    kind: Literal["text", "vision"]
    seed: int = 0
    vocab_size: int = 2048
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    text: TextShape = field(default_factory=TextShape)
    vision: VisionShape | None = None
    corpus_lines: int = 400

    def __post_init__(self) -> None:
        if (self.kind == "vision") != (self.vision is not None):
            raise ValueError("a vision model needs a VisionShape, and only a vision model")

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes in vLLM (K and V, every layer, model dtype)."""
        shape = self.text
        return (2 * shape.num_layers * shape.num_kv_heads * shape.head_dim
                * _DTYPE_BYTES[self.dtype])

    @property
    def image_tokens(self) -> int:
        return 0 if self.vision is None else self.vision.image_tokens

    def corpus(self) -> list[str]:
        lines = [filler(64, "kvgate.testing.corpus", self.seed, i)
                 for i in range(self.corpus_lines)]
        english = [line for line in _ENGLISH.splitlines() if line]
        return lines + english * 8

    def params(self) -> dict[str, Any]:
        """The builder's input (JSON)."""
        params = asdict(self)
        params["corpus"] = self.corpus()
        return params

    def key(self, venv: VllmVenv) -> str:
        """Cache key: build parameters, builder source and the libraries that shape the bytes."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.params(), sort_keys=True).encode())
        digest.update(BUILDER.read_bytes())
        versions = venv.versions
        digest.update(json.dumps({name: versions.get(name) for name in
                                  ("torch", "transformers", "tokenizers")},
                                 sort_keys=True).encode())
        return digest.hexdigest()[:16]


TINY_LLAMA = ModelSpec(name="tiny-llama", kind="text")
TINY_LLAVA = ModelSpec(name="tiny-llava", kind="vision", text=TextShape(num_layers=2),
                       vision=VisionShape())
MODELS = {"text": TINY_LLAMA, "vision": TINY_LLAVA}


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """A model directory ready for ``vllm serve``."""

    spec: ModelSpec
    path: Path
    #: What the builder reported (vocab size, image token id and count, weight digests), plus
    #: the build time.
    info: dict[str, Any]

    @property
    def tokenizer_path(self) -> Path:
        """The directory holding ``tokenizer.json`` (a deployment's ``tokenizer`` key)."""
        return self.path


class ModelBuildError(RuntimeError):
    """The builder failed; the message ends with its output."""


def models_root() -> Path:
    configured = os.environ.get(MODELS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "kvgate" / "models"


def ensure_model(spec: ModelSpec, venv: VllmVenv, *, root: Path | None = None) -> BuiltModel:
    """The model directory for ``spec``, built (in the venv's interpreter) if not cached.

    A directory appears only once complete (built next to it, then renamed), so an interrupted
    build is never mistaken for a model, and concurrent builders of one key both end up with
    identical bytes.
    """
    root = (root or models_root()).expanduser().absolute()
    target = root / f"{spec.name}-{spec.key(venv)}"
    cached = _read_built(spec, target)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
    try:
        params_path = staging / "params.json"
        params_path.write_text(json.dumps(spec.params()))
        out = staging / "model"
        result = subprocess.run(
            [str(venv.python), str(BUILDER), str(params_path), str(out)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                 "TRANSFORMERS_OFFLINE": "1"},
        )
        if result.returncode != 0:
            raise ModelBuildError(f"building {spec.name} failed ({result.returncode}):\n"
                                  f"{(result.stdout + result.stderr)[-4000:]}")
        info = json.loads(result.stdout.strip().splitlines()[-1])
        info["build_s"] = round(time.monotonic() - started, 2)
        marker = {"spec": asdict(spec), "info": info}
        (out / MODEL_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            out.rename(target)
        except OSError:
            if _read_built(spec, target) is None:  # not a concurrent builder's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    built = _read_built(spec, target)
    if built is None:
        raise ModelBuildError(f"{target}: built but unreadable")
    return built


def _read_built(spec: ModelSpec, path: Path) -> BuiltModel | None:
    try:
        marker = json.loads((path / MODEL_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return BuiltModel(spec, path, marker["info"])
