"""What the lean server's connections share: settings, the date header, what is open."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Protocol


class OpenConnection(Protocol):
    """What shutdown needs of a connection."""

    def is_idle(self) -> bool: ...

    def close(self) -> None: ...


class DateHeader:
    """The ``date`` header, formatted once per second rather than per response."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


class ServerState:
    """What connections share: settings, the date header, what is open and running."""

    def __init__(self, access_log: bool, *, keep_alive_timeout_s: float = 5.0,
                 head_timeout_s: float = 10.0, max_head_bytes: int = 64 * 1024) -> None:
        self.access_log = access_log
        #: An idle keep-alive connection is closed after this long (uvicorn's default too).
        self.keep_alive_timeout_s = keep_alive_timeout_s
        #: A request's line and headers must arrive within this long (else 408).
        self.head_timeout_s = head_timeout_s
        #: A request's line and headers may total this many bytes (else 431).
        self.max_head_bytes = max_head_bytes
        self.date = DateHeader()
        self.connections: set[OpenConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False


