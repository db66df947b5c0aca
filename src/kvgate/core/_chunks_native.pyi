"""Type stubs of the C extension (``_chunks_native.c``); the Python versions and their
documentation are in :mod:`kvgate.core.chunks`."""

from typing import Any

def sse_events(pending: bytes, chunk: bytes, /) -> tuple[list[bytes], bytes]: ...
def leading_chunks(payloads: list[bytes], batch: list[dict[str, Any]], /) -> tuple[int, int]: ...
def observe(
    batch: list[dict[str, Any]], /
) -> tuple[list[Any], bool, bool, list[Any]] | None: ...
