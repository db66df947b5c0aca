"""The subscriber against a real ZMQ publisher on loopback: live batches, gaps and replay,
lost history, restarts, a publisher that is down, and which side binds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from kvgate.config.schema import KVEventsSettings
from kvgate.routing.precise.index import ReplicaKVIndex
from kvgate.routing.precise.replica import ReplicaEventState
from kvgate.routing.precise.subscriber import KVEventSubscriber, binds
from kvgate.sim.kv_publisher import KVEventsConfig, ZmqKVEventPublisher
from kvgate.vllm_compat.kv_events import AnyKVEvent, BlockRemoved, BlockStored
from tests.support.processes import free_port


class LossyPublisher(ZmqKVEventPublisher):
    """Keeps every batch for replay but does not send the sequence numbers in ``drop``."""

    def __init__(self, config: KVEventsConfig, drop: set[int] | None = None) -> None:
        super().__init__(config)
        self.drop = drop if drop is not None else set()
        self._real_pub = self._pub
        outer = self

        class _Pub:
            def send_multipart(self, frames: tuple[bytes, bytes, bytes], flags: int = 0) -> None:
                if int.from_bytes(frames[1], "big") not in outer.drop:
                    outer._real_pub.send_multipart(frames, flags=flags)

            def close(self, linger: int = 0) -> None:
                outer._real_pub.close(linger=linger)

        self._pub = _Pub()  # type: ignore[assignment]


def stored(*hashes: int, parent: int | None = None) -> list[AnyKVEvent]:
    return [BlockStored(block_hashes=list(hashes), parent_block_hash=parent,
                        token_ids=[1] * 16 * len(hashes), block_size=16, lora_id=None,
                        medium="GPU", lora_name=None)]


def removed(*hashes: int) -> list[AnyKVEvent]:
    return [BlockRemoved(block_hashes=list(hashes), medium="GPU")]


def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def reopen(config: KVEventsConfig) -> LossyPublisher:
    """A new publisher on the endpoints of a closed one (ZMQ releases ports asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return LossyPublisher(config)
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


def subscriber(pub: str, replay: str | None, ctx: zmq.asyncio.Context, *,
               idle_probe_s: float = 0.0, **settings: Any) -> KVEventSubscriber:
    state = ReplicaEventState(ReplicaKVIndex(max_blocks=10_000, pending_ttl_s=0))
    return KVEventSubscriber(
        "r0", KVEventsSettings(endpoint=pub, replay_endpoint=replay, **settings), state,
        replay_timeout_s=0.3, idle_probe_s=idle_probe_s, context=ctx,
    )


async def test_live_batches_and_a_dropped_one_replayed(ctx: zmq.asyncio.Context) -> None:
    pub_ep, replay_ep = endpoints()
    publisher = LossyPublisher(KVEventsConfig(pub_ep, replay_ep), drop={2})
    sub = subscriber(pub_ep, replay_ep, ctx)
    state = sub.state
    try:
        publisher.publish(stored(1, 2), 0)  # before anyone listens: only the replay has it
        sub.start()
        await until(lambda: state.is_precise and state.index.holds(1))
        await asyncio.sleep(0.3)  # ZMQ slow joiner: let the subscription reach the publisher
        publisher.publish(stored(3, parent=2), 0)
        await until(lambda: state.index.holds(3))
        publisher.publish(removed(1), 0)  # seq 2: never sent
        publisher.publish(stored(4, parent=3), 0)  # seq 3 reveals the gap
        await until(lambda: state.last_seq == 3)
        assert not state.index.holds(1) and state.index.holds(4)
        assert state.is_precise and state.counters.gaps_total == 1
        assert state.counters.replays_total == 2 and state.counters.drops_total == 0
    finally:
        await sub.stop()
        publisher.close()


async def test_lost_last_batch_found_by_the_idle_probe(ctx: zmq.asyncio.Context) -> None:
    pub_ep, replay_ep = endpoints()
    publisher = LossyPublisher(KVEventsConfig(pub_ep, replay_ep), drop={1})
    sub = subscriber(pub_ep, replay_ep, ctx, idle_probe_s=0.2)
    state = sub.state
    try:
        sub.start()
        await until(lambda: state.is_precise)
        await asyncio.sleep(0.3)
        publisher.publish(stored(1), 0)
        publisher.publish(removed(1), 0)  # lost, and nothing follows it
        await until(lambda: state.last_seq == 1)
        assert not state.index.holds(1) and state.is_precise
    finally:
        await sub.stop()
        publisher.close()


async def test_unreplayable_gap_degrades_until_the_cache_turns_over(
    ctx: zmq.asyncio.Context,
) -> None:
    pub_ep, replay_ep = endpoints()
    publisher = LossyPublisher(KVEventsConfig(pub_ep, replay_ep, buffer_steps=2),
                               drop={1, 2, 3})
    sub = subscriber(pub_ep, replay_ep, ctx)
    state = sub.state
    try:
        sub.start()
        await until(lambda: state.is_precise)
        await asyncio.sleep(0.3)
        publisher.publish(stored(1, 2, 3), 0)
        await until(lambda: state.index.holds(3))
        for batch in (stored(10), stored(11), stored(12)):  # 1..3 lost, buffer keeps 2
            publisher.publish(batch, 0)
        publisher.publish(stored(13), 0)
        await until(lambda: state.mode == "degraded" and state.index.holds(13))
        assert state.counters.drops_total == 1 and not state.index.holds(1)
        # The replica evicts a block it stored after the drop: what we missed is gone too.
        publisher.publish(removed(13), 0)
        await until(lambda: state.is_precise)
        assert "rebuilt" in state.reason
    finally:
        await sub.stop()
        publisher.close()


async def test_gap_without_replay_endpoint_degrades(ctx: zmq.asyncio.Context) -> None:
    pub_ep, _ = endpoints()
    publisher = LossyPublisher(KVEventsConfig(pub_ep), drop={1})
    sub = subscriber(pub_ep, None, ctx)
    state = sub.state
    try:
        sub.start()
        await asyncio.sleep(0.3)
        publisher.publish(stored(*range(1, 11)), 0)  # seq 0: the publisher's first batch
        await until(lambda: state.is_precise)
        publisher.publish(stored(20), 0)
        publisher.publish(stored(30), 0)
        await until(lambda: state.mode == "degraded")
        # Dropped: until the replica has stored as many blocks as it held (10), approximate.
        assert "no replay endpoint" in state.reason and state.index.holds(30)
        assert not state.index.holds(1)
    finally:
        await sub.stop()
        publisher.close()


async def test_publisher_restart_resets_the_index(ctx: zmq.asyncio.Context) -> None:
    pub_ep, replay_ep = endpoints()
    publisher = LossyPublisher(KVEventsConfig(pub_ep, replay_ep))
    sub = subscriber(pub_ep, replay_ep, ctx)
    state = sub.state
    try:
        sub.start()
        await until(lambda: state.is_precise)
        await asyncio.sleep(0.3)
        for h in (1, 2, 3):
            publisher.publish(stored(h), 0)
        await until(lambda: state.last_seq == 2)
        publisher.close()
        publisher = await reopen(KVEventsConfig(pub_ep, replay_ep))  # sequence starts at 0
        await asyncio.sleep(0.5)
        publisher.publish(stored(7), 0)
        await until(lambda: state.counters.restarts_total == 1 and state.index.holds(7))
        assert state.is_precise and not state.index.holds(1)
    finally:
        await sub.stop()
        publisher.close()


async def test_publisher_down_degrades_then_recovers(ctx: zmq.asyncio.Context) -> None:
    pub_ep, replay_ep = endpoints()
    sub = subscriber(pub_ep, replay_ep, ctx, idle_probe_s=0.2)
    state = sub.state
    sub.start()
    publisher = None
    try:
        await until(lambda: state.counters.replay_failures_total >= 1)
        assert state.mode == "degraded" and "no replay answer" in state.reason
        publisher = LossyPublisher(KVEventsConfig(pub_ep, replay_ep))
        publisher.publish(stored(5), 0)
        await until(lambda: state.is_precise and state.index.holds(5), timeout_s=5)
    finally:
        await sub.stop()
        if publisher is not None:
            publisher.close()


async def test_bound_subscriber_for_a_connecting_publisher(ctx: zmq.asyncio.Context) -> None:
    port = free_port()
    sub = subscriber(f"tcp://*:{port}", None, ctx)
    state = sub.state
    sub.start()
    # vLLM given a concrete endpoint connects its PUB to it.
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.connect(f"tcp://127.0.0.1:{port}")
    try:
        from kvgate.vllm_compat.kv_events import KVEventBatch, encode_event_batch

        await asyncio.sleep(0.3)
        payload = encode_event_batch(KVEventBatch(ts=time.time(), events=stored(9)))
        pub.send_multipart([b"kv-events", (0).to_bytes(8, "big"), payload])
        await until(lambda: state.index.holds(9))
        assert state.is_precise
    finally:
        pub.close(linger=0)
        await sub.stop()


def test_which_side_binds() -> None:
    def ep(endpoint: str, socket: Any = "auto") -> KVEventsSettings:
        return KVEventsSettings(endpoint=endpoint, socket=socket)

    assert not binds(ep("tcp://127.0.0.1:5557"))
    assert binds(ep("tcp://*:5557")) and binds(ep("tcp://0.0.0.0:5557"))
    assert binds(ep("ipc:///tmp/kv")) and binds(ep("tcp://10.0.0.2:5557", "bind"))
    assert not binds(ep("tcp://*:5557", "connect"))
