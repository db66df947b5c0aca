"""The upstream HTTP pool: keep-alive reuse, stale connections, timeouts, cut responses."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kvgate.providers.errors import UpstreamConnectError, UpstreamServerError, UpstreamTimeout
from kvgate.providers.http_upstream import HTTPUpstream
from tests.support.processes import free_port


class Server:
    """A raw TCP server whose replies are scripted per request number."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.script: Callable[[int], bytes | None] = lambda n: ok_json(b'{"n": %d}' % n)
        self.close_after_reply = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.requests += 1
                reply = self.script(self.requests)
                if reply is None:  # hang up without answering
                    writer.close()
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after_reply:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


def ok_json(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body), body)


def sse(*events: bytes) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")


@pytest.fixture()
async def server() -> AsyncIterator[tuple[Server, str]]:
    scripted = Server()
    port = free_port()
    tcp = await asyncio.start_server(scripted.handle, "127.0.0.1", port)
    yield scripted, f"http://127.0.0.1:{port}/v1/x"
    tcp.close()


def upstream(read_timeout_s: float = 2.0) -> HTTPUpstream:
    return HTTPUpstream(connect_timeout_s=1.0, read_timeout_s=read_timeout_s,
                        max_connections=10, headers={"authorization": "Bearer k"})


async def test_sequential_requests_reuse_one_connection(server: tuple[Server, str]) -> None:
    scripted, url = server
    http = upstream()
    results = [await http.post_json(url, b"{}") for _ in range(5)]
    assert [r["n"] for r in results] == [1, 2, 3, 4, 5]
    assert scripted.connections == 1
    await http.aclose()


async def _read_to_done(http: HTTPUpstream, url: str) -> list[bytes]:
    """A stream's events up to [DONE], then closed there, as providers do."""
    events = http.stream_events(url, b"{}")
    received: list[bytes] = []
    while b"[DONE]" not in received:  # one batch per network read, however they split
        received += await events.__anext__()
    await events.aclose()
    return received


async def test_streams_that_stop_at_done_reuse_the_connection_and_leave_no_generator(
    server: tuple[Server, str]
) -> None:
    # Also a regression: the body iterator under a stream read up to [DONE] was left
    # suspended, and asyncio's finalizer hook closed it through a self-pipe wake-up and a
    # task per stream.
    scripted, url = server
    scripted.script = lambda n: sse(b"data: {\"a\": 1}\n\n", b"data: [DONE]\n\n")
    http = upstream()
    firstiter, finalizer = sys.get_asyncgen_hooks()
    finalized: list[Any] = []

    def counting(generator: Any) -> None:
        finalized.append(generator)
        assert finalizer is not None
        finalizer(generator)

    sys.set_asyncgen_hooks(firstiter, counting)
    try:
        for _ in range(3):
            assert await _read_to_done(http, url) == [b'{"a": 1}', b"[DONE]"]
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
    assert [g.__qualname__ for g in finalized] == []
    assert scripted.connections == 1
    await http.aclose()


async def test_sse_lines_split_across_chunks_are_reassembled(server: tuple[Server, str]) -> None:
    scripted, url = server
    scripted.script = lambda n: sse(b"data: {\"a\"", b": 1}\n", b"\ndata: [DONE]\n\n")
    http = upstream()
    events = [e async for batch in http.stream_events(url, b"{}") for e in batch]
    assert events == [b'{"a": 1}', b"[DONE]"]
    await http.aclose()


async def test_stale_keepalive_connection_is_retried_once(server: tuple[Server, str]) -> None:
    scripted, url = server
    scripted.close_after_reply = True  # every connection serves exactly one request
    http = upstream()
    first = await http.post_json(url, b"{}")
    await asyncio.sleep(0.05)  # the server's close reaches the idle connection
    second = await http.post_json(url, b"{}")
    assert (first["n"], second["n"]) == (1, 2)
    assert scripted.connections == 2
    await http.aclose()


async def test_hang_up_without_answer_on_fresh_connection_is_an_error(
    server: tuple[Server, str]
) -> None:
    scripted, url = server
    scripted.script = lambda n: None
    http = upstream()
    with pytest.raises(UpstreamServerError, match="closed"):
        await http.post_json(url, b"{}")
    await http.aclose()


async def test_silence_is_a_read_timeout(server: tuple[Server, str]) -> None:
    scripted, url = server
    scripted.script = lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"a"  # stalls
    http = upstream(read_timeout_s=0.2)
    with pytest.raises(UpstreamTimeout):
        await http.post_json(url, b"{}")
    await http.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    http = upstream()
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await http.post_json(f"http://127.0.0.1:{free_port()}/v1/x", b"{}")
    await http.aclose()


async def test_cancelling_a_stream_closes_its_connection(server: tuple[Server, str]) -> None:
    scripted, url = server
    # A stream that never ends: the head and one event, then nothing.
    scripted.script = lambda n: (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"e\r\ndata: {\"a\":1}\n\r\n")
    http = upstream()
    events = http.stream_events(url, b"{}")
    assert (await events.__anext__())[0] == b'{"a":1}'
    await events.aclose()
    # The next request cannot reuse a connection whose response never ended.
    scripted.script = lambda n: ok_json(b'{"n": 9}')
    assert (await http.post_json(url, b"{}"))["n"] == 9
    assert scripted.connections == 2
    await http.aclose()
