"""`kvgate sim` / `python -m kvgate.sim`: flags, printed URLs, clean shutdown."""

from __future__ import annotations

import argparse
import http.client
import signal
import subprocess
import sys
import time

import pytest

from kvgate.sim.cli import add_arguments, replica_settings
from tests.sim.conftest import free_port_block


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_map_to_replica_settings() -> None:
    args = _parse("--replicas", "3", "--base-port", "9000", "--profile", "llama-3.1-8b-h100",
                  "--kv-blocks", "128", "--cpu-offload-blocks", "256", "--time-scale", "10",
                  "--kv-events", "--kv-events-port", "9500")
    replicas = replica_settings(args)
    assert [r.port for r in replicas] == [9000, 9001, 9002]
    assert [r.kv_events_endpoint for r in replicas] == [
        "tcp://127.0.0.1:9500", "tcp://127.0.0.1:9502", "tcp://127.0.0.1:9504"]
    assert replicas[1].kv_events_replay_endpoint == "tcp://127.0.0.1:9503"
    assert all(r.kv_blocks == 128 and r.cpu_offload_blocks == 256 and r.time_scale == 10
               for r in replicas)
    assert replica_settings(_parse())[0].kv_events_endpoint is None
    seeded = replica_settings(_parse("--hash-algo", "xxhash", "--hash-seed", "5"))[0]
    assert seeded.engine_config().none_hash_seed == "5"
    unseeded = replica_settings(_parse("--hash-algo", "xxhash"))[0].engine_config()
    assert unseeded.none_hash_seed != replica_settings(_parse("--hash-algo", "xxhash"))[0]\
        .engine_config().none_hash_seed  # vLLM: a random secret seed per process
    with pytest.raises(SystemExit):
        _parse("--time-scale", "0")


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_fleet_prints_urls_and_stops_cleanly(sig: signal.Signals) -> None:
    base = free_port_block(2)
    events = free_port_block(4)
    process = subprocess.Popen(
        [sys.executable, "-m", "kvgate.sim", "--replicas", "2", "--base-port", str(base),
         "--time-scale", "50", "--kv-events", "--kv-events-port", str(events), "--json"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "fleet exited early"
            lines.append(line.strip())
            if line.startswith("ready"):
                break
        text = "\n".join(lines)
        assert f"http://127.0.0.1:{base}/v1" in text and f"http://127.0.0.1:{base + 1}/v1" in text
        assert f"tcp://127.0.0.1:{events + 2}" in text
        assert '"base_url"' in text
        assert _healthy(base) and _healthy(base + 1)
        process.send_signal(sig)
        assert process.wait(timeout=15) == 0
        assert not _healthy(base) and not _healthy(base + 1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
