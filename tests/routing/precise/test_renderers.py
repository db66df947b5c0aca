"""Renderer choice: ``kvgate-sim:`` tokenizers load neither Jinja2, tokenizers nor the simulator.

The check runs in a fresh interpreter, since this test process has long imported all three.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.core.call import Call
from kvgate.routing.precise.renderers import (
    HFRenderer,
    RenderError,
    SimRenderer,
    load_renderer,
)
from tests.routing.precise.tiny_tokenizer import build_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("jinja2", "tokenizers", "kvgate.sim", "kvgate.bench")
# Builds a precise_kv strategy through the registry, as the gateway does, and reports which of
# HEAVY got imported. argv[1]: a JSON list of the deployments' tokenizer settings.
BUILD_PRECISE_KV = f"""
import json, sys
from kvgate.config.schema import KVEventsSettings, RoutingSettings
from kvgate.routing import build_strategy
from tests.routing.factories import context, deployment

events = KVEventsSettings(endpoint="tcp://127.0.0.1:1")
tokenizers = json.loads(sys.argv[1])
deployments = [deployment(f"d{{i}}", tokenizer=tok, kv_events=events)
               for i, tok in enumerate(tokenizers)]
strategy = build_strategy("precise_kv", deployments, RoutingSettings(strategy="precise_kv"),
                          context())
assert type(strategy).__name__ == "PreciseKVAware"
print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))
"""


def heavy_modules_after_building(tokenizers: list[str | None]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", BUILD_PRECISE_KV, json.dumps(tokenizers)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_sim_tokenizers_load_no_jinja2_tokenizers_or_simulator() -> None:
    assert heavy_modules_after_building(
        ["kvgate-sim:llama-3.1-8b-h100", "kvgate-sim:llava-onevision-7b-a40", None]) == []


def test_no_tokenizer_loads_no_jinja2_or_tokenizers() -> None:
    assert heavy_modules_after_building([None, None]) == []


def test_a_local_tokenizer_loads_them_when_built(tmp_path: Path) -> None:
    """The control: the same check does see Jinja2 and tokenizers once they are needed."""
    directory = build_tiny_tokenizer(tmp_path)
    loaded = heavy_modules_after_building(["kvgate-sim:llama-3.1-8b-h100", str(directory)])
    assert sorted(loaded) == ["jinja2", "tokenizers"]


def test_load_renderer_picks_by_scheme(tmp_path: Path) -> None:
    sim = load_renderer("kvgate-sim:llama-3.1-8b-h100", model_id="m", image_tokens=None)
    local = load_renderer(str(build_tiny_tokenizer(tmp_path)), model_id="m", image_tokens=None)
    assert isinstance(sim, SimRenderer) and isinstance(local, HFRenderer)


def test_unknown_sim_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"llama-3\.1-8b-h100"):
        load_renderer("kvgate-sim:nope", model_id="m", image_tokens=None)


def test_sim_renderer_reports_unrenderable_requests() -> None:
    renderer = SimRenderer("llama-3.1-8b-h100", model_id="m", image_tokens=None)
    call = Call(request_id="r", endpoint="chat", body={"messages": [{"content": "no role"}]},
                model="m", stream=False, include_usage=False, received_s=0.0)
    with pytest.raises(RenderError, match="role"):
        renderer.render(call)
