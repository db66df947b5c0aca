"""The dashboard as a real process: `npm ci` + `npm run build` once, `npm run start` per test
module, and the Chromium driver (browse.mjs) that reads its pages."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, wait_http

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
BROWSE = Path(__file__).with_name("browse.mjs")
CHROMIUM = os.environ.get("KVGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Build outputs and installed packages: never inputs of the build.
_NOT_SOURCES = {"node_modules", ".next", "next-env.d.ts"}
_NPM_ENV = {"NEXT_TELEMETRY_DISABLED": "1", "npm_config_audit": "false",
            "npm_config_fund": "false", "npm_config_update_notifier": "false"}


def ensure_built() -> None:
    """`npm ci` when node_modules is older than the lock file, `npm run build` when a source is
    newer than the last build; CI has done both already, so this is then two stat walks."""
    # A lock so two pytest runs in one checkout never build into the same .next at once.
    lock_path = Path(tempfile.gettempdir()) / f"kvgate-dashboard-{os.getuid()}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = DASHBOARD / "node_modules" / ".package-lock.json"
        if _mtime(installed) < _mtime(DASHBOARD / "package-lock.json"):
            _npm("ci")
        if _mtime(DASHBOARD / ".next" / "BUILD_ID") < _newest_source_mtime():
            _npm("run", "build")


def _npm(*args: str) -> None:
    done = subprocess.run(["npm", *args], cwd=DASHBOARD, env={**os.environ, **_NPM_ENV},
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _newest_source_mtime() -> float:
    newest = 0.0
    for root, dirs, files in os.walk(DASHBOARD):
        dirs[:] = [d for d in dirs if d not in _NOT_SOURCES]
        for name in files:
            if name not in _NOT_SOURCES and not name.endswith(".tsbuildinfo"):
                newest = max(newest, _mtime(Path(root) / name))
    return newest


@dataclass
class RunningDashboard:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_dashboard(gateway_url: str, *, results_dir: Path | None = None,
                  admin_key: str | None = None, script: str = "start",
                  ) -> Iterator[RunningDashboard]:
    """`npm run start` (or `dev`) on a free loopback port, polling `gateway_url` every 0.5 s."""
    port = free_port()
    env = {**os.environ, **_NPM_ENV, "KVGATE_URL": gateway_url, "KVGATE_POLL_MS": "500"}
    env.pop("KVGATE_ADMIN_KEY", None)
    env.pop("KVGATE_RESULTS_DIR", None)
    if admin_key is not None:
        env["KVGATE_ADMIN_KEY"] = admin_key
    if results_dir is not None:
        env["KVGATE_RESULTS_DIR"] = str(results_dir)
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "next.log"
        with log_path.open("wb") as log:
            # Its own session: npm starts sh, which starts next-server; ending the group ends all
            # three, and only them.
            process = subprocess.Popen(
                ["npm", "run", script, "--", "-p", str(port), "-H", "127.0.0.1"],
                cwd=DASHBOARD, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_http(url + "/benchmarks", timeout_s=60, process=process)
            except (TimeoutError, RuntimeError) as exc:
                raise RuntimeError(f"dashboard did not start: {exc}\n{log_path.read_text()}"
                                   ) from exc
            yield RunningDashboard(url, process, log_path)
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def browse_command(base_url: str, page: str, *options: str) -> list[str]:
    return ["node", str(BROWSE), "--base", base_url, "--page", page, "--chromium", CHROMIUM,
            "--timeout-ms", "30000", *options]


def parse_browse(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    if returncode != 0:
        raise AssertionError(f"browse.mjs failed ({returncode}):\n{stdout[-3000:]}\n"
                             f"{stderr[-3000:]}")
    found: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return found


def browse(base_url: str, page: str, *options: str) -> dict[str, Any]:
    """Load one page in Chromium and return what browse.mjs found on it."""
    done = subprocess.run(browse_command(base_url, page, *options), capture_output=True,
                          text=True, timeout=90)
    return parse_browse(done.returncode, done.stdout, done.stderr)
