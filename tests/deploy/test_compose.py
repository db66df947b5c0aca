"""deploy/docker-compose.yml without a Docker engine: services, profiles, mounts, the gateways'
configs (validated by `kvgate validate`), and ports that agree with what Prometheus scrapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from kvgate.cli import build_parser
from kvgate.config import load_settings
from tests.deploy.stack import (
    DEPLOY,
    GATEWAY_CONFIG_PATH,
    PROMETHEUS_FILE,
    REPO,
    bind_mounts,
    environ_without,
    flag,
    gateway_services,
    load_compose,
    service_env,
)
from tests.routing.precise.tiny_tokenizer import build_tiny_tokenizer

EXPECTED_PROFILES = {
    "gateway": set(), "prometheus": set(), "grafana": set(),
    "redis": {"redis"}, "gateway-redis": {"redis"},
    "model-init": {"vllm"}, "vllm-a": {"vllm"}, "vllm-b": {"vllm"}, "gateway-vllm": {"vllm"},
    "loadgen": {"loadgen"},
}
VLLM_REPLICAS = ("vllm-a", "vllm-b")
COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def config_of(service: dict[str, Any]) -> Path:
    (source,) = [src for src, target in bind_mounts(service) if target == GATEWAY_CONFIG_PATH]
    return source


def listen_port(name: str) -> int:
    """The port a service listens on inside the network, from its own command line."""
    service = SERVICES[name]
    if name == "prometheus":
        return int(flag(service["command"], "--web.listen-address").rsplit(":", 1)[1])
    return int(flag(service["command"], "--port"))


def test_services_and_profiles() -> None:
    assert set(SERVICES) == set(EXPECTED_PROFILES)
    for name, profiles in EXPECTED_PROFILES.items():
        assert set(SERVICES[name].get("profiles", [])) == profiles, name
    assert set(gateway_services(COMPOSE)) == {"gateway", "gateway-redis", "gateway-vllm"}
    assert SERVICES["prometheus"]["image"].startswith("prom/prometheus:")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana:")
    assert SERVICES["redis"]["image"].startswith("redis:")


def test_gateway_services_build_this_repository_and_run_its_config() -> None:
    for name, service in gateway_services(COMPOSE).items():
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).is_file(), name
        args = build_parser("run").parse_args(service["command"][1:])
        assert (args.config, args.host, args.port) == (GATEWAY_CONFIG_PATH, "0.0.0.0", 8080)
    loadgen = SERVICES["loadgen"]
    args = build_parser("bench").parse_args(loadgen["command"][1:])
    assert args.target == f"http://gateway:{listen_port('gateway')}"
    assert args.model == "demo"


def test_every_mounted_file_exists_and_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes", {}))
    for name, service in SERVICES.items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which is not in the repository"
            assert source.is_relative_to(DEPLOY), f"{name} mounts {source} from outside deploy/"
            assert target.startswith("/"), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for the model directory the vllm profile downloads into its volume."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("name", sorted(gateway_services(COMPOSE)))
def test_gateway_config_validates(name: str, tokenizer_dir: Path) -> None:
    service = SERVICES[name]
    env = {**environ_without("VLLM_MODEL", "VLLM_MODEL_DIR"), **service_env(service)}
    if "VLLM_MODEL_DIR" in env:
        # The models volume exists only in the running stack: validate against a local
        # tokenizer (build_gateway loads it, as the gateway does at start-up).
        env["VLLM_MODEL_DIR"] = str(tokenizer_dir)
    result = subprocess.run(
        [sys.executable, "-m", "kvgate", "validate", "-c", str(config_of(service))],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid:")


def test_every_gateway_config_is_mounted() -> None:
    mounted = {config_of(s) for s in gateway_services(COMPOSE).values()}
    assert mounted == set((DEPLOY / "gateway").glob("*.yaml"))


def test_default_profile_needs_no_keys() -> None:
    settings = load_settings(str(config_of(SERVICES["gateway"])))
    assert {p.type for p in settings.providers.values()} == {"mock"}
    assert not settings.tenants
    assert not service_env(SERVICES["gateway"])


def test_redis_profile_keeps_limits_and_affinity_in_the_redis_service() -> None:
    service = SERVICES["gateway-redis"]
    raw = yaml.safe_load(config_of(service).read_text())
    assert raw["limits_backend"] == "redis"
    assert raw["routing"]["affinity_backend"] == "redis"
    assert raw["tenants"], "limits need tenants"
    settings = load_settings(str(config_of(service)))
    url = urlsplit(settings.redis.url)
    assert (url.hostname, url.port or 6379) == ("redis", 6379)
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def vllm_args(name: str) -> list[str]:
    args: list[str] = SERVICES[name]["command"]
    return args


def test_vllm_replicas_offload_to_lmcache_and_publish_kv_events() -> None:
    gpus = []
    for name in VLLM_REPLICAS:
        service, args = SERVICES[name], vllm_args(name)
        assert service["entrypoint"] == ["vllm", "serve"]
        assert "--enable-prefix-caching" in args
        transfer = json.loads(flag(args, "--kv-transfer-config") or "{}")
        assert transfer == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
        events = json.loads(flag(args, "--kv-events-config") or "{}")
        assert events["enable_kv_cache_events"] is True
        assert events["publisher"] == "zmq"
        env = service_env(service)
        assert env["LMCACHE_LOCAL_CPU"].lower() == "true"
        assert float(env["LMCACHE_MAX_LOCAL_CPU_SIZE"]) > 0
        assert int(env["LMCACHE_CHUNK_SIZE"]) == 256
        assert env["LMCACHE_ENABLE_KV_EVENTS"].lower() == "true"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
        gpus.append(tuple(device["device_ids"]))
        assert service["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    assert len(set(gpus)) == len(gpus), "each replica on its own GPU by default"


def test_vllm_gateway_config_matches_the_replicas_flags(monkeypatch: pytest.MonkeyPatch,
                                                        ) -> None:
    gateway = SERVICES["gateway-vllm"]
    for key, value in service_env(gateway).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(str(config_of(gateway)))
    assert settings.routing.strategy == "precise_kv"
    (model,) = settings.models
    model_mount = [v.split(":")[1] for v in gateway["volumes"] if v.startswith("models:")]
    replicas = set()
    for deployment in model.deployments:
        provider = settings.providers[deployment.provider]
        api_base = urlsplit(str(getattr(provider, "api_base", "")))
        replica = api_base.hostname
        assert replica in VLLM_REPLICAS
        replicas.add(replica)
        args = vllm_args(replica)
        assert api_base.port == listen_port(replica)
        assert deployment.model == flag(args, "--served-model-name")
        # The gateway tokenizes with the very directory the replica loads as its model.
        assert deployment.tokenizer == args[0] == deployment.mm_model_id
        assert any(args[0].startswith(m + "/") for m in model_mount)
        assert SERVICES["model-init"]["command"][1] == args[0]
        assert deployment.block_size == int(flag(args, "--block-size") or 0)
        assert deployment.hash_algo == flag(args, "--prefix-caching-hash-algo")
        events = json.loads(flag(args, "--kv-events-config") or "{}")
        assert deployment.kv_events is not None
        assert urlsplit(deployment.kv_events.endpoint).hostname == replica
        assert urlsplit(deployment.kv_events.endpoint).port == urlsplit(events["endpoint"]).port
        assert deployment.kv_events.replay_endpoint is not None
        assert (urlsplit(deployment.kv_events.replay_endpoint).port
                == urlsplit(events["replay_endpoint"]).port)
        assert deployment.kv_events.topic == events["topic"]
        assert "PYTHONHASHSEED" not in service_env(SERVICES[replica])
        assert deployment.hash_seed is None
    assert replicas == set(VLLM_REPLICAS)


def test_prometheus_targets_are_the_services_ports() -> None:
    scrape = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_FILE.read_text())
              ["scrape_configs"]}
    targets: dict[str, set[str]] = {}
    for name, job in scrape.items():
        targets[name] = {t for sc in job["static_configs"] for t in sc["targets"]}
    for job in ("kvgate", "vllm"):
        assert scrape[job].get("metrics_path", "/metrics") == "/metrics"
        for target in targets[job]:
            host, port = target.rsplit(":", 1)
            assert host in SERVICES, f"{job} scrapes {host}, which is no service"
            assert int(port) == listen_port(host), target
    assert {t.split(":")[0] for t in targets["kvgate"]} == set(gateway_services(COMPOSE))
    assert {t.split(":")[0] for t in targets["vllm"]} == set(VLLM_REPLICAS)
    assert targets["prometheus"] == {f"localhost:{listen_port('prometheus')}"}


def test_published_ports_reach_the_listening_ports() -> None:
    host_ports = []
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            host, container = str(mapping).split(":")
            host_ports.append(int(host))
            if name in gateway_services(COMPOSE) or name == "prometheus":
                assert int(container) == listen_port(name), name
    assert len(host_ports) == len(set(host_ports))
    assert sorted(host_ports) == [3000, 8080, 8081, 8082, 9090]
