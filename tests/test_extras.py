"""kvgate.extras: the missing-extra message, ``require``, and what a config needs."""

from __future__ import annotations

import pytest

from kvgate.config.loader import parse_settings
from kvgate.extras import MissingExtra, Need, explain, message, missing, needs, require

BASE = """\
providers:
  mock: { type: mock }
  vllm: { type: openai_compatible, api_base: "http://127.0.0.1:9/v1" }
models:
  - name: demo
    deployments: [{ provider: mock, model: m }]
"""


def test_the_message_names_the_feature_the_extra_and_the_command() -> None:
    assert message("kvgate bench", "bench") == (
        "kvgate bench needs the 'bench' extra: pip install 'kvgate[bench]'")


def test_require_raises_a_module_not_found_error_naming_the_extra() -> None:
    with pytest.raises(MissingExtra) as caught:
        require("semantic", "json", "kvgate_test_no_such_module", feature="the semantic cache")
    error = caught.value
    assert isinstance(error, ModuleNotFoundError)  # callers catching import errors still do
    assert str(error) == ("the semantic cache needs the 'semantic' extra: "
                          "pip install 'kvgate[semantic]'")
    assert (error.extra, error.name, error.feature) == (
        "semantic", "kvgate_test_no_such_module", "the semantic cache")
    require("semantic", "json", "orjson", feature="anything")  # installed: no error


def test_need_reports_only_what_is_missing() -> None:
    assert Need("f", "redis", ("json",)).missing() is None
    found = Need("f", "redis", ("json", "kvgate_test_no_such_module")).missing()
    assert found is not None and found.name == "kvgate_test_no_such_module"


def test_the_demo_config_needs_no_extra() -> None:
    settings = parse_settings(BASE)
    assert needs(settings) == []
    assert missing(settings) == []


def test_what_each_setting_needs() -> None:
    settings = parse_settings(BASE + """\
server: { http_server: granian }
routing: { affinity_backend: redis }
limits_backend: redis
cache:
  semantic: { enabled: true, embedder: minilm }
""")
    assert [(n.extra, n.modules) for n in needs(settings)] == [
        ("granian", ("granian",)),
        ("redis", ("redis",)),
        ("semantic", ("numpy",)),
        ("semantic", ("tokenizers",)),
    ]
    assert needs(settings)[1].feature == "routing.affinity_backend redis (model demo)"


def test_precise_kv_needs_a_hugging_face_tokenizer_only_when_one_is_configured() -> None:
    precise = BASE.replace("[{ provider: mock, model: m }]", """
      - { provider: vllm, model: m, tokenizer: "kvgate-sim:qwen" }
    routing: { strategy: precise_kv }""")
    settings = parse_settings(precise)
    assert [(n.extra, n.modules) for n in needs(settings)] == [
        ("precise", ("zmq", "msgspec", "cbor2"))]
    local = parse_settings(precise.replace("kvgate-sim:qwen", "/models/qwen"))
    assert [(n.extra, n.modules) for n in needs(local)] == [
        ("precise", ("zmq", "msgspec", "cbor2")), ("precise", ("tokenizers", "jinja2"))]


def test_explain_maps_an_optional_package_to_its_extra() -> None:
    found = explain(ModuleNotFoundError("No module named 'zmq'", name="zmq.asyncio"), "this")
    assert found is not None
    assert str(found) == "this needs the 'precise' extra: pip install 'kvgate[precise]'"
    assert explain(ModuleNotFoundError("x", name="somethingelse"), "this") is None
    assert explain(ModuleNotFoundError("x"), "this") is None
