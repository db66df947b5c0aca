"""Tiny ASGI helpers: read a bounded body, send JSON or an error, watch for disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kvgate.errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole request body, refusing with 413 as soon as it passes ``max_bytes``."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(max_bytes: int) -> GatewayError:
    return GatewayError(
        413, f"request body is larger than the limit of {max_bytes} bytes",
        code="request_too_large",
    )


class ClientDisconnected(Exception):
    """The client went away; nothing more can be sent."""


async def send_bytes(
    send: Send, status: int, body: bytes, headers: Headers, content_type: tuple[bytes, bytes]
) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [content_type, (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


#: How long a request runs before its disconnect watcher starts. Most requests over a fast
#: upstream finish sooner and never pay for a watcher task; a client that leaves earlier is
#: noticed at most this much later.
WATCH_DELAY_S = 0.005


class DisconnectWatch:
    """Cancel the handler task when the client disconnects, so upstream work stops at once.

    After the body has been read the next ASGI message can only be ``http.disconnect``, so a
    helper task waits on ``receive()``. It is started lazily (``WATCH_DELAY_S``) because
    creating and cancelling a task per request costs more than the rest of a fast request's
    bookkeeping.
    """

    __slots__ = ("_handle", "_receive", "_task", "_watcher", "disconnected", "finishing")

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        #: Set before the last send: uvicorn reports completion as ``http.disconnect`` too,
        #: and a finished response must not be cancelled.
        self.finishing = False
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            WATCH_DELAY_S, self._start
        )

    def _start(self) -> None:
        self._handle = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if self.finishing:
            return
        self.disconnected = True
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._watcher is not None:
            self._watcher.cancel()
