"""A lean HTTP/1.1 client for upstream calls: keep-alive pools over asyncio protocols.

Why not aiohttp: on the gateway's hot path a general client's per-request machinery (request
and response objects, header multidicts, tracing hooks) costs more than everything else the
gateway does. This client builds a request from pre-rendered header bytes, parses responses
with httptools (the parser uvicorn uses), and keeps idle connections in a LIFO list per origin.

Failure semantics, which failover relies on:
* connect failures raise ``ConnectionFailed`` (nothing was sent);
* a reused keep-alive connection that the upstream closed before answering is retried once on
  a fresh connection (the upstream never saw the request);
* silence longer than ``read_timeout_s`` while waiting for the head or the next body bytes
  raises ``ReadTimeout``; a connection that ends mid-response raises ``ConnectionLost``;
* cancelling a caller closes its connection, so the upstream sees the disconnect at once
  (vLLM then aborts the request and frees its KV blocks).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httptools

from kvgate.core.lazy_timer import LazyTimer


class HTTPClientError(Exception):
    pass


class ConnectionFailed(HTTPClientError):
    pass


class ConnectionLost(HTTPClientError):
    pass


class ReadTimeout(HTTPClientError):
    pass


class Origin(NamedTuple):
    """Where a pool's connections go. NOTE: a named tuple, not a frozen dataclass: the pool
    looks it up in three dicts per request, and a dataclass hashes in Python."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        """(origin, path with query) of an absolute http(s) URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port), path


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    def __init__(self, read_timeout_s: float) -> None:
        self._read_timeout_s = read_timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = False
        #: The whole response has been parsed (its body may still sit unread in ``_body``).
        self.message_complete = False
        #: The body's pieces not yet read. httptools' body callback: each HTTP chunk goes
        #: straight onto it (a C call; a stream's events each come as their own chunk), and
        #: ``data_received`` wakes the reader once per network read, who takes them all.
        self._body: list[bytes] = []
        self.on_body = self._body.append
        #: The response ended (complete, or with ``_error``), after what ``_body`` holds.
        self._ended = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer = LazyTimer(self._loop, self._timed_out)
        self._head: asyncio.Future[int] | None = None
        self._got_bytes = False
        self._status = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        self._timer.arm(self._read_timeout_s)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ConnectionLost("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"invalid HTTP response: {exc}"))
        else:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._timer.close()
        self._fail(ConnectionLost("upstream closed the connection"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._head is not None and not self._head.done():
            self._head.set_result(self._status)

    def on_message_complete(self) -> None:
        self.message_complete = True
        self.reusable = self._parser.should_keep_alive()
        self._timer.disarm()
        self._end(None)

    # -- plumbing --------------------------------------------------------------------------

    def _end(self, error: Exception | None) -> None:
        """The response ended (``error``: how it failed); the first end is the end."""
        if not self._ended:
            self._ended, self._error = True, error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._end(error)

    def _timed_out(self) -> None:
        self._fail(ReadTimeout(f"no data from upstream for {self._read_timeout_s}s"))
        self.close()

    def close(self) -> None:
        self.closed = True
        self._timer.close()
        if self._transport is not None:
            self._transport.close()

    # -- one exchange ----------------------------------------------------------------------

    async def send(self, request: bytes) -> int:
        """Write the request and wait for the status line and headers; return the status."""
        assert self._transport is not None
        self._body.clear()
        self._ended, self._error = False, None
        self._got_bytes = False
        self.reusable = False
        self.message_complete = False
        self._parser = httptools.HttpResponseParser(self)
        self._head = self._loop.create_future()
        self._transport.write(request)
        self._timer.arm(self._read_timeout_s)
        return await self._head

    @property
    def answered(self) -> bool:
        """Whether any response bytes arrived for the current request."""
        return self._got_bytes

    async def next_body(self) -> bytes | None:
        """The response body that arrived since the last call (chunked encoding already
        removed), waiting for some if none has; None once the body has ended. Several HTTP
        chunks that one network read carried (an engine's burst of tokens) come as one.

        NOTE: a method, not an async generator: a generator per response costs asyncio's
        first-iteration hook (a WeakSet entry) and a close on every stream."""
        body = self._body
        while not body and not self._ended:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            return data
        if self._error is not None:
            raise self._error  # and again on any later call
        return None


class ConnectionPool:
    """Idle keep-alive connections per origin, at most ``max_connections`` per origin."""

    def __init__(
        self, *, connect_timeout_s: float, read_timeout_s: float, max_connections: int
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: dict[Origin, int] = {}
        self._slots: dict[Origin, asyncio.Semaphore] = {}
        self._ssl: ssl.SSLContext | None = None

    def _slot(self, origin: Origin) -> asyncio.Semaphore:
        slot = self._slots.get(origin)
        if slot is None:
            slot = self._slots[origin] = asyncio.Semaphore(self._max_connections)
        return slot

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self._read_timeout_s), origin.host, origin.port,
                    ssl=context,
                )
        except TimeoutError as exc:
            raise ConnectionFailed(
                f"connect to {origin.host}:{origin.port} timed out after "
                f"{self._connect_timeout_s}s"
            ) from exc
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from exc
        return protocol

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def _release(self, origin: Origin, connection: _Connection) -> None:
        if connection.reusable and not connection.closed:
            self._idle.setdefault(origin, []).append(connection)
        else:
            connection.close()

    async def exchange(self, origin: Origin, request: bytes) -> Exchange:
        """Send ``request``; return once the response head arrived. Close the Exchange after."""
        slot = self._slot(origin)
        await slot.acquire()
        try:
            for _attempt in range(2):
                connection = self._take_idle(origin)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(origin)
                try:
                    status = await connection.send(request)
                except ConnectionLost:
                    connection.close()
                    # A stale keep-alive connection: the upstream closed it while idle, before
                    # reading this request, so sending it again is safe.
                    if reused and not connection.answered:
                        continue
                    raise
                except BaseException:
                    connection.close()
                    raise
                return Exchange(self, origin, connection, status, slot)
            raise ConnectionLost("upstream closed the connection")  # pragma: no cover
        except BaseException:
            slot.release()
            raise

    def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


class Exchange:
    """A response whose head has arrived. ``close()`` must be called exactly once."""

    __slots__ = ("_connection", "_done", "_origin", "_pool", "_slot", "status")

    def __init__(self, pool: ConnectionPool, origin: Origin, connection: _Connection,
                 status: int, slot: asyncio.Semaphore) -> None:
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._slot = slot
        self.status = status
        self._done = False

    def next_body(self) -> Coroutine[Any, Any, bytes | None]:
        """The body that arrived since the last call; None once it has ended (see
        ``_Connection.next_body``)."""
        return self._connection.next_body()

    async def read(self) -> bytes:
        connection = self._connection
        parts = []
        while (part := await connection.next_body()) is not None:
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self, *, complete: bool) -> None:
        """Return the connection to the pool when the response ended, else drop it.

        ``complete`` says the caller read the body to its end; a caller that stopped early
        (e.g. at an SSE ``[DONE]``) still gets the connection reused when the response had in
        fact ended, which is the common case: the terminating chunk follows ``[DONE]`` in the
        same write.
        """
        if self._done:
            return
        self._done = True
        if complete or self._connection.message_complete:
            self._pool._release(self._origin, self._connection)
        else:
            self._connection.close()
        self._slot.release()
