"""A lean HTTP/1.1 server for the gateway's ASGI app (``server.http_server: kvgate``).

Why not only uvicorn: a gateway hop's added latency is mostly its own per-request work, and
uvicorn's general-purpose cycle (a task, ASGI messages through proxy-header middleware, one
socket write for the head and another for the body) is a large share of it. This server does
what KVGate's app needs and no more:

- one write per response when the app sends its head and its (first) body back to back: the
  head is held until the first body message and leaves with it;
- keep-alive connections, requests on one connection served in order (pipelined requests
  wait for the one before), ``Expect: 100-continue``, chunked responses when the app sets no
  ``content-length``, HEAD without a body;
- the request body streamed to ``receive()`` with back-pressure (reading pauses while more than
  ``_MAX_BUFFERED_BODY_BYTES`` wait), ``http.disconnect`` when the client goes away;
- write back-pressure: ``send`` waits while the socket's buffer is over its high-water mark;
- ASGI lifespan (the gateway's start-up and shutdown), graceful stop on SIGINT/SIGTERM.

It is ASGI 3 over asyncio protocols and ``httptools`` (both already core dependencies), so the
app is unchanged and uvicorn remains the other choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from kvgate.httpserver.connection import ASGIApp, Connection, Message
from kvgate.httpserver.state import ServerState


class _Lifespan:
    """Runs the app's ASGI lifespan: start-up before serving, shutdown after."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        await self._app({"type": "lifespan", "asgi": {"version": "3.0"}},
                        self._inbox.get, self._outbox.put)

    async def _step(self, kind: str) -> None:
        await self._inbox.put({"type": f"lifespan.{kind}"})
        reply = asyncio.ensure_future(self._outbox.get())
        assert self._task is not None
        # An app whose lifespan raises never replies: wait for its task too, or start-up
        # (and shutdown) would hang instead of failing.
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            error = self._task.exception() if not self._task.cancelled() else None
            raise RuntimeError(f"lifespan {kind} failed: {error!r}") from error
        message = reply.result()
        if message["type"] != f"lifespan.{kind}.complete":
            raise RuntimeError(f"lifespan {kind} failed: {message.get('message', message)}")

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        if self._task is not None:
            await self._task


async def serve(app: ASGIApp, *, host: str, port: int, access_log: bool = False,
                graceful_timeout_s: float = 10.0, reuse_port: bool = False,
                keep_alive_timeout_s: float = 5.0, head_timeout_s: float = 10.0,
                max_head_bytes: int = 64 * 1024,
                started: Callable[[int], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve ``app`` until ``stop`` is set (by default: SIGINT or SIGTERM); then finish
    in-flight requests (up to ``graceful_timeout_s``) and run the app's shutdown. ``started``
    gets the bound port (useful with ``port=0``). Idle keep-alive connections close after
    ``keep_alive_timeout_s``; a request head must arrive within ``head_timeout_s`` (408) and
    stay within ``max_head_bytes`` (431)."""
    loop = asyncio.get_running_loop()
    state = ServerState(access_log, keep_alive_timeout_s=keep_alive_timeout_s,
                        head_timeout_s=head_timeout_s, max_head_bytes=max_head_bytes)
    lifespan = _Lifespan(app)
    await lifespan.startup()
    server = await loop.create_server(lambda: Connection(app, state), host, port,
                                      backlog=4096, reuse_port=reuse_port or None)
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
    if started is not None:
        started(server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        state.stopping = True
        server.close()
        for connection in list(state.connections):
            if connection.is_idle():
                connection.close()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=graceful_timeout_s)
        for connection in list(state.connections):
            connection.close()
        # Requests still running past the grace period are cancelled before the app closes
        # its providers and stores under them.
        late = [task for task in state.tasks if not task.done()]
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=2.0)
        await lifespan.shutdown()
