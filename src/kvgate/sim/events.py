"""Per-engine buffer of KV-cache events and the sink they are published to.

The block pool and the offload tier record events while a step is scheduled; the engine hands
the step's events to a `KVEventSink` once the step completes, as vLLM publishes one batch per
engine step. Recording is a no-op when events are disabled, so the hot path pays one branch.
"""

from __future__ import annotations

from typing import Protocol

from kvgate.vllm_compat.kv_events import AnyKVEvent


class KVEventSink(Protocol):
    """Receives one batch of events per engine step that produced any."""

    def publish(self, events: list[AnyKVEvent], ts_s: float) -> None:
        """Deliver `events` (in order) stamped with `ts_s`; must not block for long."""


class EventLog:
    """Events recorded since the last `take()`."""

    __slots__ = ("_events", "enabled")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._events: list[AnyKVEvent] = []

    def record(self, event: AnyKVEvent) -> None:
        if self.enabled:
            self._events.append(event)

    def take(self) -> list[AnyKVEvent]:
        """Return and clear the pending events."""
        events, self._events = self._events, []
        return events


class CollectingSink:
    """A sink that keeps every batch in memory; for tests and in-process benchmarks."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[AnyKVEvent]]] = []

    def publish(self, events: list[AnyKVEvent], ts_s: float) -> None:
        self.batches.append((ts_s, events))
