"""One client connection of the lean HTTP/1.1 server: parsing, request cycles, writes."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httptools

from kvgate.core.lazy_timer import LazyTimer
from kvgate.httpserver.state import ServerState

logger = logging.getLogger("kvgate.http")

Message = MutableMapping[str, Any]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

#: Reading pauses while this much request body waits for the app to take it.
_MAX_BUFFERED_BODY_BYTES = 1 << 20
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 402: b"Payment Required",
            403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Payload Too Large", 422: b"Unprocessable Entity",
            429: b"Too Many Requests", 500: b"Internal Server Error", 502: b"Bad Gateway",
            503: b"Service Unavailable", 504: b"Gateway Timeout"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n"
                b"content-length: 11\r\nconnection: close\r\n\r\nbad request")
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                   b"content-type: text/plain\r\ncontent-length: 22\r\nconnection: close\r\n"
                   b"\r\nrequest head too large")
_HEAD_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                 b"content-length: 15\r\nconnection: close\r\n\r\nrequest timeout")
_SERVER_ERROR = (b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n"
                 b"content-length: 21\r\nconnection: close\r\n\r\ninternal server error")


class _Cycle:
    """One request on a connection: its scope, its body as it arrives, its response."""

    __slots__ = ("_connection", "body", "body_delivered", "body_done", "body_size", "chunked",
                 "close_delimited", "disconnected", "expect_continue", "head", "head_only",
                 "keep_alive", "response_done", "scope", "started", "waiter", "wrote")

    def __init__(self, connection: Connection, scope: MutableMapping[str, Any],
                 keep_alive: bool, expect_continue: bool) -> None:
        self._connection = connection
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = scope["method"] == "HEAD"
        self.body: deque[bytes] = deque()
        self.body_size = 0
        self.body_done = False
        #: The last body message went to the app: ``receive`` now waits for the end.
        self.body_delivered = False
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        #: The response head, held until the first body message (or the end) to leave with it.
        self.head: bytes | None = None
        self.started = False
        #: Whether any byte of the response has been written (an error can no longer be sent).
        self.wrote = False
        self.chunked = False
        #: HTTP/1.0 with no content-length: the body ends when the connection closes.
        self.close_delimited = False
        self.response_done = False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        connection = self._connection
        if self.body_delivered:
            # Nothing more will come but the end: the client leaving, or the response done
            # (reported as a disconnect, as ASGI servers do).
            while not self.disconnected and not self.response_done:
                self.waiter = connection.loop.create_future()
                await self.waiter
                self.waiter = None
            return {"type": "http.disconnect"}
        while not self.body and not self.body_done and not self.disconnected:
            if self.expect_continue:
                self.expect_continue = False
                connection.write(_CONTINUE)
            connection.resume_reading()
            self.waiter = connection.loop.create_future()
            await self.waiter
            self.waiter = None
        if self.disconnected:
            return {"type": "http.disconnect"}
        data = b"".join(self.body)
        self.body.clear()
        self.body_size = 0
        self.body_delivered = self.body_done
        connection.resume_reading()
        return {"type": "http.request", "body": data, "more_body": not self.body_done}

    async def send(self, message: Message) -> None:
        if self.disconnected or self.response_done:
            return
        connection = self._connection
        if message["type"] == "http.response.start":
            if self.started:
                # ASGI allows one start; a second (an error after a stream began) must not
                # write a status line into the body.
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.head = self._render_head(message)
            return
        if not self.started:
            raise RuntimeError("http.response.body sent before http.response.start")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if self.head_only:
            body = b""
        elif self.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (
                b"" if more_body else b"0\r\n\r\n")
        if self.head is not None:
            body, self.head = self.head + body, None
        if body:
            self.wrote = True
            connection.write(body)
        if not more_body:
            self.response_done = True
            self.wake()
            connection.response_done(self)
        elif connection.write_paused:
            await connection.drain()

    def _render_head(self, message: Message) -> bytes:
        status: int = message["status"]
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown")),
                 self._connection.date()]
        has_length = False
        for name, value in message.get("headers", ()):
            if name == b"content-length":
                has_length = True
            elif name == b"connection" and value.lower() == b"close":
                self.keep_alive = False
            lines.append(b"%b: %b\r\n" % (name, value))
        if not has_length and not self.head_only and status not in (204, 304):
            if self.scope["http_version"] == "1.0":
                # HTTP/1.0 has no chunked encoding: the body runs until the server closes.
                self.close_delimited = True
                self.keep_alive = False
            else:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs one cycle at a time in arrival order."""

    def __init__(self, app: ASGIApp, server: ServerState) -> None:
        self.loop = asyncio.get_running_loop()
        self._app = app
        self._server = server
        self.date = server.date
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        #: The cycle being parsed, and those waiting to run (pipelined) or running (first).
        self._parsing: _Cycle | None = None
        self._cycles: deque[_Cycle] = deque()
        self._reading_paused = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._client: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        #: Bytes of the request line and headers so far (bounded by ``max_head_bytes``).
        self._head_bytes = 0
        #: Closes the connection when it idles too long between requests (keep-alive timeout)
        #: or a request's head takes too long to arrive (slow clients holding connections).
        self._timer = LazyTimer(self.loop, self._expire)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._client = transport.get_extra_info("peername")
        self._local = transport.get_extra_info("sockname")
        self._server.connections.add(self)
        self._arm(self._server.keep_alive_timeout_s, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.close()
        self._server.connections.discard(self)
        for cycle in self._cycles:
            cycle.disconnected = True
            cycle.wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_BAD_REQUEST)  # no websockets here
        except httptools.HttpParserError:
            too_large = self._head_bytes > self._server.max_head_bytes
            self._fail(_HEAD_TOO_LARGE if too_large else _BAD_REQUEST)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._arm(self._server.head_timeout_s, _HEAD_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._server.max_head_bytes:
            # Raised inside feed_data: the parser stops, data_received answers and closes.
            raise httptools.HttpParserError("request head too large")

    def on_headers_complete(self) -> None:
        self._disarm()
        parser = self._parser
        path, _, query = self._url.partition(b"?")
        scope: MutableMapping[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"), "scheme": "http",
            "path": path.decode("utf-8", "replace"), "raw_path": path, "query_string": query,
            "root_path": "", "headers": self._headers, "client": self._client,
            "server": self._local,
        }
        expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in self._headers)
        cycle = _Cycle(self, scope, parser.should_keep_alive(), expect)
        self._parsing = cycle
        self._cycles.append(cycle)
        if len(self._cycles) == 1:
            self._start(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is None or cycle.response_done:
            return
        cycle.body.append(body)
        cycle.body_size += len(body)
        if cycle.body_size > _MAX_BUFFERED_BODY_BYTES:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self._parsing
        if cycle is not None:
            cycle.body_done = True
            cycle.wake()
        self._parsing = None

    # -- cycles -----------------------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        self._server.tasks.add(task := self.loop.create_task(self._run(cycle)))
        task.add_done_callback(self._server.tasks.discard)

    async def _run(self, cycle: _Cycle) -> None:
        try:
            await self._app(cycle.scope, cycle.receive, cycle.send)
        except Exception:
            logger.exception("unhandled error in the app")
            if not cycle.response_done:
                if not cycle.wrote and not self._other_cycle_writing(cycle):
                    self.write(_SERVER_ERROR)  # nothing of this response left yet
                self.close()
            return
        if not cycle.response_done and not cycle.disconnected:
            logger.error("the app returned without completing its response")
            self.close()

    def response_done(self, cycle: _Cycle) -> None:
        """Called by a cycle once its last byte is written: the next request may run."""
        if self._server.access_log:
            logger.info('%s - "%s %s"', self._client, cycle.scope["method"], cycle.scope["path"])
        if self._cycles and self._cycles[0] is cycle:
            self._cycles.popleft()
        if not cycle.keep_alive or self._server.stopping:
            self.close()
            return
        if not cycle.body_done:
            # The app answered without reading the whole body: the connection's stream
            # position is unknown, so it cannot carry another request.
            self.close()
            return
        if self._cycles:
            self._start(self._cycles[0])
        else:
            self._arm(self._server.keep_alive_timeout_s, None)
        self.resume_reading()

    # -- transport helpers ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and self._transport is not None:
            self._drained = self.loop.create_future()
            await self._drained

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _arm(self, delay_s: float, answer: bytes | None) -> None:
        """Close the connection in ``delay_s`` (answering ``answer`` first, if any) unless
        disarmed before."""
        self._timer.arm(delay_s, answer)

    def _disarm(self) -> None:
        self._timer.disarm()

    def _expire(self, answer: bytes | None) -> None:
        if answer is not None and not self._cycles:
            self.write(answer)
        self.close()

    def _fail(self, response: bytes) -> None:
        # With a response under way (a pipelined request went bad), a status line would land
        # inside its body: close without one.
        if not self._cycles:
            self.write(response)
        self.close()

    def _other_cycle_writing(self, cycle: _Cycle) -> bool:
        return bool(self._cycles) and self._cycles[0] is not cycle

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def is_idle(self) -> bool:
        return not self._cycles
