"""Start the processes a scenario measures: a `kvgate run` gateway on a free loopback port.

Each process writes its output to a log file, not a pipe (a full pipe would stall it mid-run);
on a failed start the log's tail goes into the error. Processes are stopped on exit, however
the block ends.
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_LOG_TAIL_BYTES = 4000


class ProcessStartError(RuntimeError):
    """A process a scenario needs exited or never served; the message ends with its log."""


#: Ports this process handed out lately: a server given one may not have bound it yet.
_ISSUED_PORTS: collections.deque[int] = collections.deque(maxlen=512)
_PORT_RANDOM = random.Random()  # private: benchmarks seed the module-level generator
_LOWEST_PORT = 10000


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing on this machine listens on, for a server about to start.

    Chosen *below* the kernel's ephemeral range: the kernel hands out ports for ``bind(0)``
    and outgoing connections only from that range, so between this check and the server's
    own bind no other process can take the port by accident. (A port from ``bind(0)`` can:
    vLLM's engine picks its internal ZMQ ports that way, and once took the KV-events replay
    port a test fleet had just picked.) ``host`` is checked too when it is not loopback."""
    return free_port_block(1, host)


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (servers numbered from a base port, such
    as ``kvgate sim``'s replicas), chosen as :func:`free_port` chooses one."""
    low = _ephemeral_low()
    if low - count - _LOWEST_PORT >= 1000:
        for _ in range(200):
            base = _PORT_RANDOM.randrange(_LOWEST_PORT, low - count)
            block = range(base, base + count)
            if (not any(port in _ISSUED_PORTS for port in block)
                    and all(_bindable(port, host) for port in block)):
                _ISSUED_PORTS.extend(block)
                return base
    for _ in range(50):  # no room below the ephemeral range: around the kernel's pick
        with socket.socket() as sock:
            sock.bind((host, 0))
            base = int(sock.getsockname()[1])
        block = range(base, base + count)
        if base + count <= 65535 and all(_bindable(port, host) for port in block):
            _ISSUED_PORTS.extend(block)
            return base
    raise OSError(f"no {count} consecutive free ports")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int, host: str) -> bool:
    """Free on every interface (servers such as vLLM's ZMQ publisher bind the wildcard)."""
    for address in {"", host}:
        with socket.socket() as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def is_serving(url: str, *, timeout_s: float = 1.0) -> bool:
    """True if ``url`` answers HTTP with a status below 500."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True, slots=True)
class LocalProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-_LOG_TAIL_BYTES:].decode("utf-8", "replace")


def wait_until_serving(local: LocalProcess, path: str, *, timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if local.process.poll() is not None:
            code = local.process.returncode
            raise ProcessStartError(f"{local.url}: process exited with {code}:\n"
                                    f"{local.log_tail()}")
        if is_serving(local.url + path, timeout_s=1.0):
            return
        time.sleep(0.05)
    raise ProcessStartError(f"{local.url}{path} not serving after {timeout_s} s:\n"
                            f"{local.log_tail()}")


@contextlib.contextmanager
def local_process(args: Sequence[str], url: str, *, ready_path: str = "/healthz",
                  ready_timeout_s: float = 30.0) -> Iterator[LocalProcess]:
    """Run ``args`` until the block exits; yields once ``url + ready_path`` answers."""
    with tempfile.TemporaryDirectory(prefix="kvgate-bench-") as tmp:
        log_path = Path(tmp) / "process.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        local = LocalProcess(url, process, log_path)
        try:
            wait_until_serving(local, ready_path, timeout_s=ready_timeout_s)
            yield local
        finally:
            stop_process(process)


@contextlib.contextmanager
def local_gateway(config_path: str | Path | None = None, *, port: int | None = None,
                  extra_args: Sequence[str] = (), ready_timeout_s: float = 30.0,
                  ) -> Iterator[LocalProcess]:
    """`kvgate run` on loopback (the built-in demo config without ``config_path``)."""
    port = port or free_port()
    args = [sys.executable, "-m", "kvgate", "run", "--host", "127.0.0.1", "--port", str(port),
            *extra_args]
    if config_path is not None:
        args += ["-c", str(config_path)]
    with local_process(args, f"http://127.0.0.1:{port}", ready_timeout_s=ready_timeout_s,
                       ) as local:
        yield local


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout_s``; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
