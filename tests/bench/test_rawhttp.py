"""The raw HTTP client and closed-loop fallback against the zero-latency upstream."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from kvgate.bench.processes import LocalProcess, free_port, local_process
from kvgate.bench.rawhttp import (
    HttpFramingError,
    RawClient,
    closed_loop_rps,
    cpu_s,
    pinned,
    process_tree,
    request_bytes,
    rss_mb,
)

BODY = orjson.dumps({"model": "zero", "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps({"model": "zero", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def zero() -> Iterator[LocalProcess]:
    port = free_port()
    with local_process([sys.executable, "-m", "kvgate.bench.zero_upstream", "--port", str(port)],
                       f"http://127.0.0.1:{port}", ready_path="/v1/models") as process:
        yield process


def _port(process: LocalProcess) -> int:
    return int(process.url.rsplit(":", 1)[1])


def test_blocking_and_streamed_responses_are_framed_on_one_connection(zero: LocalProcess,
                                                                      ) -> None:
    port = _port(zero)
    client = RawClient(port)
    try:
        for _ in range(3):
            total_s, first_s = client.send(request_bytes(port, "/v1/chat/completions", BODY))
            assert total_s > 0 and first_s is None
            total_s, first_s = client.send(request_bytes(port, "/v1/chat/completions", STREAM),
                                           b'"content"')
            assert first_s is not None and 0 < first_s <= total_s
    finally:
        client.close()


def _one_shot_server(response: bytes) -> int:
    """A server that answers one request with ``response`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(response)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return port


def test_chunks_split_anywhere_and_content_length_marker() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n10\r\n\"content\": \"abcd\"\r\n0\r\n\r\n")
    port = _one_shot_server(chunked)
    client = RawClient(port)
    _, first_s = client.send(request_bytes(port, "/", b"{}"), b'"content"')
    assert first_s is not None
    client.close()
    port = _one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"content\"}")
    client = RawClient(port)
    _, first_s = client.send(request_bytes(port, "/", b"{}"), b'"content"')
    assert first_s is not None
    client.close()


def test_an_error_status_or_a_closed_connection_raises() -> None:
    port = _one_shot_server(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
    with pytest.raises(HttpFramingError, match="502"):
        RawClient(port).send(request_bytes(port, "/", b"{}"))
    port = _one_shot_server(b"")
    with pytest.raises(HttpFramingError, match="closed"):
        RawClient(port).send(request_bytes(port, "/", b"{}"))


def test_closed_loop_fallback_counts_requests(zero: LocalProcess) -> None:
    port = _port(zero)
    for body in (BODY, STREAM):
        sample = closed_loop_rps(port, request_bytes(port, "/v1/chat/completions", body),
                                 connections=4, duration_s=0.3)
        assert sample.generator == "python-asyncio"
        assert sample.requests_per_s > 0 and sample.non_2xx == 0
        assert sample.p50_ms is not None and sample.p99_ms is not None


def test_process_accounting_reads_proc(zero: LocalProcess) -> None:
    pid = zero.process.pid
    assert process_tree(pid)[0] == pid
    assert cpu_s(pid) >= 0.0
    assert rss_mb(pid) > 1.0
    assert rss_mb(os.getpid()) > 1.0


def test_pinning_prefixes_taskset_only_when_asked() -> None:
    assert pinned(None, ["x"]) == ["x"]
    assert pinned(0, ["x"])[-1] == "x"


def test_a_connection_the_server_closed_while_idle_is_reopened_untimed() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"

    def serve() -> None:  # answers one request per connection, then closes it
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(response)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    client = RawClient(port)
    client.send(request_bytes(port, "/", b"{}"))
    deadline_s = time.monotonic() + 5
    while not select.select([client._sock], [], [], 0)[0] and time.monotonic() < deadline_s:
        time.sleep(0.01)  # until the server's close has arrived
    total_s, _ = client.send(request_bytes(port, "/", b"{}"))
    assert client.reconnects == 1 and total_s > 0
    client.close()
