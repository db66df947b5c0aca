"""free_port: the port picker every test, benchmark and real-vLLM fleet uses."""

from __future__ import annotations

import collections
import random
import socket
from pathlib import Path

import pytest

from kvgate.bench import processes
from kvgate.bench.processes import free_port, free_port_block


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_come_from_below_the_kernels_ephemeral_range() -> None:
    # bind(0) in another process (vLLM's engine picks its ZMQ ports so) never lands there.
    ports = [free_port() for _ in range(50)]
    assert all(port < _ephemeral_low() for port in ports)
    assert len(set(ports)) == 50, "a port handed out twice before its server bound it"


def test_a_port_is_free_on_every_interface() -> None:
    port = free_port()
    with socket.socket() as wildcard:  # what vLLM's KV-events publisher binds (tcp://*)
        wildcard.bind(("", port))
        wildcard.listen()


def test_a_port_someone_listens_on_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # A window of 1000 ports of which all but five are held: the picker must find the five.
    low = _ephemeral_low() - 1000
    monkeypatch.setattr(processes, "_LOWEST_PORT", low)
    monkeypatch.setattr(processes, "_PORT_RANDOM", random.Random(0))
    monkeypatch.setattr(processes, "_ISSUED_PORTS", collections.deque(maxlen=512))
    held: list[socket.socket] = []
    open_ports: list[int] = []
    try:
        for port in range(low, low + 1000):
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # something on this machine already has it
                sock.close()
                continue
            if len(open_ports) < 5 and port % 7 == 0:
                sock.close()
                open_ports.append(port)
                continue
            sock.listen()
            held.append(sock)
        picked = {free_port() for _ in range(len(open_ports))}
        assert picked <= set(open_ports) | {p for p in picked if p >= _ephemeral_low()}
        assert not picked & {sock.getsockname()[1] for sock in held}
    finally:
        for sock in held:
            sock.close()


def test_a_block_of_ports_is_free_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    bases = [free_port_block(4) for _ in range(20)]
    ports = [base + i for base in bases for i in range(4)]
    assert all(port < _ephemeral_low() for port in ports)
    assert len(set(ports)) == len(ports)
    for port in range(bases[0], bases[0] + 4):
        with socket.socket() as sock:
            sock.bind(("", port))
