"""Start N replica processes, wait until each answers /health, stop them all cleanly.

Each replica is its own process (`python -m kvgate.sim.replica`), so replicas share nothing and a
fleet uses all cores. Stopping sends SIGTERM, waits, then SIGKILLs stragglers.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from kvgate.sim.settings import ReplicaSettings

_POLL_INTERVAL_S = 0.05


class FleetError(RuntimeError):
    """A replica failed to start."""


def _is_healthy(settings: ReplicaSettings) -> bool:
    conn = http.client.HTTPConnection(settings.host, settings.port, timeout=0.5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Fleet:
    """A set of replica processes."""

    def __init__(self, settings: Sequence[ReplicaSettings]) -> None:
        self.settings = list(settings)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawn every replica and block until all are healthy; FleetError on failure."""
        for replica in self.settings:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "kvgate.sim.replica", replica.to_json()],
                    stdin=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout_s
        pending = list(zip(self.settings, self.processes, strict=True))
        while pending:
            for replica, process in list(pending):
                if process.poll() is not None:
                    self.stop()
                    raise FleetError(
                        f"replica {replica.index} exited with code {process.returncode}"
                    )
                if _is_healthy(replica):
                    pending.remove((replica, process))
            if pending and time.monotonic() > deadline:
                self.stop()
                raise FleetError(f"{len(pending)} replica(s) not healthy after {timeout_s} s")
            if pending:
                time.sleep(_POLL_INTERVAL_S)

    def any_exited(self) -> bool:
        return any(process.poll() is not None for process in self.processes)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM every replica, then SIGKILL whatever is left after `timeout_s`."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def describe(replica: ReplicaSettings) -> str:
    """One line naming a replica's endpoints."""
    line = f"replica {replica.index}: {replica.url}/v1"
    if replica.kv_events_endpoint:
        line += f"  kv-events {replica.kv_events_endpoint}"
        if replica.kv_events_replay_endpoint:
            line += f"  replay {replica.kv_events_replay_endpoint}"
    return line


def run_fleet(settings: Sequence[ReplicaSettings], *, print_json: bool = False) -> int:
    """Run a fleet in the foreground until Ctrl-C, SIGTERM or a replica dies."""
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    fleet = Fleet(settings)
    try:
        fleet.start()
        for replica in settings:
            print(describe(replica), flush=True)
        if print_json:
            import json

            print(json.dumps({"replicas": [
                {"index": r.index, "url": r.url, "base_url": r.url + "/v1",
                 "kv_events": r.kv_events_endpoint, "replay": r.kv_events_replay_endpoint}
                for r in settings
            ]}), flush=True)
        print(f"ready: {len(settings)} replica(s); Ctrl-C to stop", flush=True)
        while not stop.wait(0.2):
            if fleet.any_exited():
                print("a replica exited; stopping the fleet", file=sys.stderr, flush=True)
                return 1
        return 0
    except FleetError as exc:
        print(f"kvgate sim: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
