"""The lean HTTP/1.1 server (``kvgate.httpserver``), over real sockets on 127.0.0.1: framing,
keep-alive and pipelining, request bodies (chunked, large, ``Expect: 100-continue``), streamed
responses, disconnects, errors, lifespan and graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest

from kvgate.httpserver import serve

Message = MutableMapping[str, Any]
#: Short on purpose, so the timeout tests wait well under a second each.
KEEP_ALIVE_S = 0.3
HEAD_TIMEOUT_S = 0.3
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Recorder:
    """A small ASGI app whose behaviour each test picks by path; it records what it saw."""

    def __init__(self) -> None:
        self.lifespan: list[str] = []
        self.bodies: list[bytes] = []
        self.disconnected = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                self.lifespan.append(kind)
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("the app failed")
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for part in (b"one", b"two", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/twice":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            await send({"type": "http.response.start", "status": 500, "headers": []})
            return
        if path == "/hang":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            if (await receive())["type"] == "http.disconnect":
                self.disconnected.set()
            return
        if path == "/slow":
            await self.release.wait()
        answer = b"%s %d" % (scope["method"].encode(), len(body))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Recorder, int]]:
    app = Recorder()
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, host="127.0.0.1", port=0, stop=stop,
                                     graceful_timeout_s=2.0, started=bound.set_result,
                                     keep_alive_timeout_s=KEEP_ALIVE_S,
                                     head_timeout_s=HEAD_TIMEOUT_S, max_head_bytes=4096))
    port = await asyncio.wait_for(bound, 10)
    yield app, port
    stop.set()
    await asyncio.wait_for(task, 10)
    assert app.lifespan == ["startup", "shutdown"]


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one content-length response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


def post(path: str, body: bytes = b"", extra: bytes = b"") -> bytes:
    return (b"POST %b HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n%b\r\n%b"
            % (path.encode(), len(body), extra, body))


async def test_keep_alive_serves_requests_in_turn_on_one_connection(
        server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    for body in (b"hello", b"world!"):
        writer.write(post("/echo", body))
        head, answer = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ndate: " in head
        assert answer == b"POST %d" % len(body)
    assert app.bodies == [b"hello", b"world!"]
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    writer.write(post("/slow", b"a") + post("/echo", b"bb"))
    await asyncio.sleep(0.05)
    assert app.bodies == [b"a"]  # the second waits for the first
    app.release.set()
    assert (await read_response(reader))[1] == b"POST 1"
    assert (await read_response(reader))[1] == b"POST 2"
    writer.close()


async def test_a_chunked_request_body_reaches_the_app_whole(server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert (await read_response(reader))[1] == b"POST 11"
    assert app.bodies == [b"hello world"]
    writer.close()


async def test_a_large_body_is_streamed_to_the_app(server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    body = bytes(range(256)) * 20_000  # 5 MB, over the read-pause threshold
    writer.write(post("/echo", body))
    assert (await read_response(reader))[1] == b"POST %d" % len(body)
    assert app.bodies == [body]
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body(
        server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n"
                 b"expect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
        b"HTTP/1.1 100 Continue\r\n\r\n")
    writer.write(b"body")
    assert (await read_response(reader))[1] == b"POST 4"
    writer.close()


async def test_a_streamed_response_is_chunked_and_ends_with_the_last_chunk(
        server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(post("/stream"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"transfer-encoding: chunked" in head
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    assert rest == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n"
    writer.write(post("/echo", b"x"))  # and the connection carries the next request
    assert (await read_response(reader))[1] == b"POST 1"
    writer.close()


async def test_a_client_that_leaves_mid_response_is_reported_as_a_disconnect(
        server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    writer.write(post("/hang"))
    await asyncio.wait_for(reader.readuntil(b"first"), 10)
    writer.close()
    await asyncio.wait_for(app.disconnected.wait(), 10)


async def test_http_1_0_and_connection_close_end_the_connection(
        server: tuple[Recorder, int]) -> None:
    _, port = server
    for request in (b"POST /echo HTTP/1.0\r\ncontent-length: 0\r\n\r\n",
                    post("/echo", extra=b"connection: close\r\n")):
        reader, writer = await connect(port)
        writer.write(request)
        head, _ = await read_response(reader)
        assert b"connection: close" in head
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()


async def test_head_gets_headers_and_no_body(server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"HEAD /echo HTTP/1.1\r\nhost: t\r\n\r\n" + post("/echo", b"z"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 6" in head
    # No body follows the HEAD answer: the next bytes are the POST's answer.
    assert (await read_response(reader))[1] == b"POST 1"
    writer.close()


async def test_malformed_requests_get_400_and_app_errors_get_500(
        server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"NOT A REQUEST\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 400 Bad Request")
    writer.close()
    reader, writer = await connect(port)
    writer.write(post("/boom"))
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(
        b"HTTP/1.1 500 Internal Server Error")
    writer.close()


async def test_stop_lets_a_request_in_flight_finish(server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    writer.write(post("/slow", b"late"))
    await asyncio.sleep(0.05)
    app.release.set()  # answered while the fixture's stop may already be pending
    assert (await read_response(reader))[1] == b"POST 4"
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(post("/echo", b"x"))
    assert (await read_response(reader))[1] == b"POST 1"
    # Nothing more is sent: the server closes the connection after the keep-alive timeout.
    assert await asyncio.wait_for(reader.read(), 10 * KEEP_ALIVE_S + 5) == b""
    writer.close()


async def test_a_head_that_never_completes_gets_408(server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: t\r\n")  # and then nothing
    answer = await asyncio.wait_for(reader.read(), 10 * HEAD_TIMEOUT_S + 5)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert app.bodies == []
    writer.close()


async def test_an_oversized_head_gets_431(server: tuple[Recorder, int]) -> None:
    app, port = server
    reader, writer = await connect(port)
    writer.write(post("/echo", extra=b"x-filler: " + b"a" * 8000 + b"\r\n"))
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert app.bodies == []
    writer.close()


async def test_a_second_response_start_closes_instead_of_corrupting_the_body(
        server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(post("/twice"))
    received = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"4\r\npart\r\n"  # no status line inside the body, no last chunk
    writer.close()


async def test_an_http_1_0_stream_is_not_chunked_and_ends_with_the_connection(
        server: tuple[Recorder, int]) -> None:
    _, port = server
    reader, writer = await connect(port)
    writer.write(b"POST /stream HTTP/1.0\r\ncontent-length: 0\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), 10)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert body == b"onetwothree"
    writer.close()


async def test_a_start_up_failure_fails_serve_instead_of_hanging() -> None:
    async def broken(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("cannot start")

    with pytest.raises(RuntimeError, match="lifespan startup failed"):
        await asyncio.wait_for(serve(broken, host="127.0.0.1", port=0, stop=asyncio.Event()),
                               10)
