"""KV-cache events over ZMQ in vLLM's wire format (vllm/distributed/kv_events.py, 0.33.0).

- PUB socket: one message per engine step with events, frames `[topic, seq u64 BE, payload]`,
  payload `[ts, [events...], data_parallel_rank]` with map-tagged events (or the legacy array
  layout when configured).
- ROUTER replay socket: a DEALER sends `[b"", start_seq (8 bytes BE)]` and receives
  `[b"", topic, seq, payload]` for every buffered batch with seq >= start_seq, then
  `[b"", b"", END_SEQ, b""]`. The last `buffer_steps` batches are kept.

NOTE: vLLM *binds* only wildcard/ipc/inproc endpoints and *connects* to concrete tcp addresses;
the simulator always binds, because its replicas are the stable side (subscribers connect to
the printed endpoints), which is what a consumer sees with vLLM's default `tcp://*:5557`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import zmq

from kvgate.vllm_compat.kv_events import (
    END_SEQ,
    AnyKVEvent,
    EventLayout,
    KVEventBatch,
    encode_event_batch,
    seq_to_bytes,
)

_log = logging.getLogger(__name__)
_REPLAY_POLL_MS = 100


@dataclass(frozen=True, slots=True)
class KVEventsConfig:
    """Mirror of vLLM's --kv-events-config fields the simulator honours."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = "kv-events"
    buffer_steps: int = 10_000
    hwm: int = 100_000
    layout: EventLayout = "map"
    data_parallel_rank: int = 0


class ZmqKVEventPublisher:
    """A `KVEventSink` that publishes on ZMQ and serves replay from a background thread.

    `publish` runs on the caller's thread (the engine loop) and never blocks: PUB drops
    messages past the high-water mark, as in vLLM.
    """

    def __init__(self, config: KVEventsConfig, context: zmq.Context[zmq.Socket[bytes]] | None
                 = None) -> None:
        self.config = config
        self._ctx = context or zmq.Context.instance()
        self._topic = config.topic.encode("utf-8")
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._lock = threading.Lock()
        self._next_seq = 0
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(config.endpoint)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if config.replay_endpoint is not None:
            replay = self._ctx.socket(zmq.ROUTER)
            replay.setsockopt(zmq.LINGER, 0)
            replay.set_hwm(2 * (config.buffer_steps + 1))
            replay.bind(config.replay_endpoint)
            self._thread = threading.Thread(
                target=self._serve_replay, args=(replay,), name="kv-events-replay", daemon=True
            )
            self._thread.start()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def publish(self, events: list[AnyKVEvent], ts_s: float) -> None:
        """Send one batch. vLLM stamps batches with wall-clock time, so `ts_s` is ignored."""
        del ts_s
        batch = KVEventBatch(
            ts=time.time(), events=events, data_parallel_rank=self.config.data_parallel_rank
        )
        payload = encode_event_batch(batch, self.config.layout)
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._buffer.append((seq, payload))
        try:
            self._pub.send_multipart((self._topic, seq_to_bytes(seq), payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            _log.debug("KV event batch %d dropped at the high-water mark", seq)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _REPLAY_POLL_MS / 1000 + 1)
        self._pub.close(linger=0)

    def _serve_replay(self, replay: zmq.Socket[bytes]) -> None:
        try:
            while not self._stop.is_set():
                if not replay.poll(_REPLAY_POLL_MS):
                    continue
                frames = replay.recv_multipart()
                if len(frames) != 3:
                    _log.warning("ignoring malformed replay request of %d frames", len(frames))
                    continue
                client_id, _, start = frames
                start_seq = int.from_bytes(start, "big")
                with self._lock:
                    wanted = [(seq, payload) for seq, payload in self._buffer if seq >= start_seq]
                for seq, payload in wanted:
                    replay.send_multipart((client_id, b"", self._topic, seq_to_bytes(seq), payload))
                replay.send_multipart((client_id, b"", b"", END_SEQ, b""))
        finally:
            replay.close(linger=0)
