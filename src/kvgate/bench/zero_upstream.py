"""A zero-latency OpenAI-shaped upstream for overhead benchmarks: fixed answers, no parsing.

Built on asyncio protocols with httptools so that it costs far less per request than the
gateway it sits behind; otherwise the benchmark would measure the upstream. Streams send a role
chunk, ``stream_chunks`` content chunks, a usage chunk and ``[DONE]`` in one write each.

Run: ``python -m kvgate.bench.zero_upstream --port 9000``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import httptools
import orjson

_USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}


def _http_response(body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def build_responses(stream_chunks: int) -> tuple[bytes, bytes, bytes]:
    """(blocking response, stream head+first chunk, rest of stream) as raw HTTP bytes."""
    blocking = orjson.dumps({
        "id": "chatcmpl-zero", "object": "chat.completion", "created": 0, "model": "zero",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 8},
                     "finish_reason": "stop"}],
        "usage": _USAGE,
    })
    base = {"id": "chatcmpl-zero", "object": "chat.completion.chunk", "created": 0,
            "model": "zero"}

    def event(payload: object) -> bytes:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        frame = b"data: " + data + b"\n\n"
        return hex(len(frame))[2:].encode() + b"\r\n" + frame + b"\r\n"

    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    first = event({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                              "content": "ok"},
                                        "finish_reason": None}]})
    rest = b"".join(
        event({**base, "choices": [{"index": 0, "delta": {"content": " ok"},
                                    "finish_reason": None}]})
        for _ in range(stream_chunks - 1)
    )
    rest += event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    rest += event({**base, "choices": [], "usage": _USAGE})
    rest += event(b"[DONE]") + b"0\r\n\r\n"
    return _http_response(blocking, b"application/json"), head + first, rest


class _Protocol(asyncio.Protocol):
    def __init__(self, responses: tuple[bytes, bytes, bytes]) -> None:
        self._blocking, self._stream_head, self._stream_rest = responses
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body.clear()
        assert self._transport is not None
        if b'"stream":true' in body or b'"stream": true' in body:
            self._transport.write(self._stream_head)
            self._transport.write(self._stream_rest)
        else:
            self._transport.write(self._blocking)


async def serve(host: str, port: int, stream_chunks: int) -> None:
    responses = build_responses(stream_chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(responses), host, port, backlog=4096)
    print(f"zero upstream on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--stream-chunks", type=int, default=8)
    args = parser.parse_args()
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port, args.stream_chunks))


if __name__ == "__main__":
    main()
