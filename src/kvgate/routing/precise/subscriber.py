"""Follow one vLLM replica's KV-event publisher: a ZMQ SUB for live batches, a DEALER for replay.

One asyncio task per deployment (``zmq.asyncio``, so nothing blocks the event loop). Frames are
``[topic, seq u64 BE, payload]``; payloads decode in either msgpack layout
(``vllm_compat.kv_events``). The task only moves bytes; every decision about sequence numbers
and sync lives in ``replica.ReplicaEventState``.

Which side binds: vLLM binds its PUB for wildcard endpoints (``tcp://*:5557``) and *connects*
for concrete ones, while its replay ROUTER always binds. So the gateway connects its SUB to a
concrete endpoint (``kvgate sim``, or vLLM started with ``tcp://*:PORT``), binds it for a
wildcard one (vLLM started with ``tcp://GATEWAY:PORT`` connects to it), and always connects the
DEALER; ``kv_events.socket`` overrides the SUB's choice.

Replay answers come in two shapes: vLLM's ROUTER sends ``[b"", seq, payload]`` and ends with
``[b"", END_SEQ, b""]``; some builds (and ``kvgate sim``) put the topic first, ending with
``[b"", b"", END_SEQ, b""]``. Both are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from kvgate.config.schema import KVEventsSettings
from kvgate.routing.precise.replica import ReplicaEventState
from kvgate.vllm_compat.kv_events import END_SEQ, decode_event_batch, seq_from_bytes, seq_to_bytes

logger = logging.getLogger("kvgate.precise")

_WILDCARD_HOSTS = ("*", "0.0.0.0", "::", "[::]")
_RETRY_S = 1.0


def binds(settings: KVEventsSettings) -> bool:
    """Whether the gateway binds the SUB endpoint (else it connects)."""
    if settings.socket != "auto":
        return settings.socket == "bind"
    endpoint = settings.endpoint
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in _WILDCARD_HOSTS


@dataclass(frozen=True, slots=True)
class _ReplayFrame:
    seq: int
    payload: bytes


def parse_replay_frames(frames: list[bytes]) -> _ReplayFrame | None:
    """One replay message, either shape; None for the end marker. ValueError if malformed."""
    if frames and frames[0] == b"":
        frames = frames[1:]
    if len(frames) == 3:  # [topic, seq, payload]
        seq_frame, payload = frames[1], frames[2]
    elif len(frames) == 2:  # [seq, payload]
        seq_frame, payload = frames
    else:
        raise ValueError(f"replay message of {len(frames)} frames")
    if seq_frame == END_SEQ:
        return None
    if len(seq_frame) != 8:
        raise ValueError("replay sequence frame is not 8 bytes")
    return _ReplayFrame(seq_from_bytes(seq_frame), payload)


class KVEventSubscriber:
    """Keeps one ``ReplicaEventState`` fed from its replica's publisher."""

    def __init__(
        self,
        name: str,
        settings: KVEventsSettings,
        state: ReplicaEventState,
        *,
        replay_timeout_s: float,
        idle_probe_s: float,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._state = state
        self._replay_timeout_ms = max(1, int(replay_timeout_s * 1000))
        self._idle_probe_ms = int(idle_probe_s * 1000) if idle_probe_s > 0 else None
        self._ctx = context or zmq.asyncio.Context.instance()
        self._topic = settings.topic.encode("utf-8")
        self._sub: zmq.asyncio.Socket | None = None
        self._dealer: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> ReplicaEventState:
        return self._state

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kv-events:{self.name}"
            )
            self._task.add_done_callback(self._on_task_done)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # Reported, not swallowed: routing degrades to approximate for this replica.
            logger.error("KV event subscriber for %s stopped: %r", self.name, error,
                         exc_info=error)
            self._state.unreachable(f"subscriber stopped: {error!r}")

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._open_sub():
            await asyncio.sleep(_RETRY_S)
        if self._settings.replay_endpoint is not None:
            await self._catch_up(0, reason="start")
        sub = self._sub
        assert sub is not None
        while True:
            if await sub.poll(self._idle_probe_ms):
                frames = await sub.recv_multipart()
                await self._on_live(frames)
            elif self._settings.replay_endpoint is not None:
                await self._probe()

    async def _on_live(self, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            logger.warning("%s: ignoring a KV event message of %d frames", self.name, len(frames))
            return
        seq = seq_from_bytes(frames[1])
        state = self._state
        verdict = state.classify_live(seq)
        if verdict == "restart":
            logger.warning("%s: KV event sequence went back to %d: publisher restarted",
                           self.name, seq)
            state.restarted()
            verdict = state.classify_live(seq)
        if verdict == "skip":
            return
        if verdict == "gap":
            if state.next_seq is None and seq == 0:
                # The publisher's very first batch: following it from here is exact.
                self._apply(seq, frames[2], live=True)
                state.synced("following the publisher from its first batch")
                return
            start = state.next_seq if state.next_seq is not None else 0
            await self._catch_up(start, reason=f"gap before batch {seq}", until_seq=seq)
            if state.next_seq is None:
                state.next_seq = seq  # nothing more to recover: go on from this batch
            elif seq < state.next_seq:
                return  # the replay already covered it
        self._apply(seq, frames[2], live=True)

    async def _probe(self) -> None:
        """Quiet for a while: ask for anything newer than what we have (a lost last batch, or
        a publisher that is gone)."""
        state = self._state
        start = state.next_seq if state.next_seq is not None else 0
        await self._catch_up(start, reason="idle probe", probe=True)

    # -- replay -----------------------------------------------------------------------------

    async def _catch_up(self, start: int, *, reason: str, until_seq: int | None = None,
                        probe: bool = False) -> bool:
        """Replay from ``start`` and apply what is new; True when nothing from ``start`` on
        (up to ``until_seq``, exclusive, when given) is missing. Drops the index otherwise."""
        state = self._state
        if self._settings.replay_endpoint is None:
            state.counters.replay_failures_total += 1
            state.drop(f"{reason}: events lost and no replay endpoint")
            return False
        dealer = self._open_dealer()
        first_seq: int | None = None
        received = 0
        try:
            await dealer.send_multipart([b"", seq_to_bytes(start)])
            while True:
                if not await dealer.poll(self._replay_timeout_ms):
                    raise TimeoutError
                item = parse_replay_frames(await dealer.recv_multipart())
                if item is None:
                    break
                received += 1
                if first_seq is None:
                    first_seq = item.seq
                    if item.seq > start:
                        self._history_missing(start, item.seq, reason)
                if state.next_seq is None or item.seq >= state.next_seq:
                    self._apply(item.seq, item.payload, live=False)
        except TimeoutError:
            self._close_dealer()  # a late answer must not be read as the next replay's
            state.counters.replay_failures_total += 1
            state.unreachable(f"{reason}: no replay answer from "
                              f"{self._settings.replay_endpoint} within "
                              f"{self._replay_timeout_ms} ms")
            return False
        except ValueError as exc:
            self._close_dealer()
            state.counters.replay_failures_total += 1
            state.drop(f"{reason}: bad replay answer: {exc}")
            return False
        if not probe or received:
            state.counters.replays_total += 1
        if probe and received and start > 0:
            state.counters.gaps_total += 1
            logger.info("%s: idle probe recovered %d KV event batch(es)", self.name, received)
        if first_seq is not None and first_seq > start:
            return False
        if until_seq is not None and (state.next_seq is None or state.next_seq < until_seq):
            self._history_missing(start, until_seq, reason)
            return False
        if start == 0 and not state.is_precise:
            # The whole history from sequence 0 (perhaps none yet) onto an empty index.
            if state.next_seq is None:
                state.next_seq = 0
            state.synced(f"replayed the publisher's whole history ({received} batches)")
        return True

    def _history_missing(self, start: int, first_available: int, reason: str) -> None:
        state = self._state
        state.counters.replay_failures_total += 1
        logger.warning("%s: KV event batches %d..%d are lost (%s); routing approximately "
                       "until the index is rebuilt", self.name, start, first_available - 1,
                       reason)
        state.drop(f"{reason}: batches {start}..{first_available - 1} no longer replayable")

    def _apply(self, seq: int, payload: bytes, *, live: bool) -> None:
        try:
            batch = decode_event_batch(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("%s: undecodable KV event batch %d: %s", self.name, seq, exc)
            self._state.skip_undecodable(seq, str(exc))
            return
        self._state.apply(seq, batch, live=live)

    # -- sockets ----------------------------------------------------------------------------

    def _open_sub(self) -> bool:
        settings = self._settings
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)  # never drop silently on our side; gaps are replayed
        sub.setsockopt(zmq.SUBSCRIBE, self._topic)
        try:
            if binds(settings):
                sub.bind(settings.endpoint)
            else:
                sub.connect(settings.endpoint)
        except zmq.ZMQError as exc:
            sub.close(linger=0)
            self._state.unreachable(f"cannot open {settings.endpoint}: {exc}")
            logger.warning("%s: cannot open KV event endpoint %s: %s", self.name,
                           settings.endpoint, exc)
            return False
        self._sub = sub
        return True

    def _open_dealer(self) -> zmq.asyncio.Socket:
        if self._dealer is None:
            assert self._settings.replay_endpoint is not None
            dealer = self._ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(self._settings.replay_endpoint)
            self._dealer = dealer
        return self._dealer

    def _close_dealer(self) -> None:
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None

    def _close(self) -> None:
        self._close_dealer()
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
