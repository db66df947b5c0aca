"""Requests for the virtual fleet (:mod:`kvgate.bench.virtual_fleet`) and the arrival sources
the scenarios share.

- :class:`RequestBuilder`: an OpenAI body -> the engine request a ``kvgate sim`` replica would
  build from it (the replica's own parser, :func:`kvgate.sim.openai_api.parse_generation`),
  so prompts, images and planned answers are exactly what an HTTP replica would see.
- :class:`UserSessions`: closed-loop users; a user's next turn arrives a think time after the
  previous answer finished, and carries that answer (what a chat client resends).
- :class:`ClosedLoop`: ``concurrency`` requests outstanding, each slot refilled the moment its
  request finishes (vLLM's ``benchmark_serving --max-concurrency``), engines taken in turn.
- :class:`OpenLoop`: each body at its own time, whatever the fleet is doing (Poisson arrivals,
  a trace's timestamps).
- :class:`ScriptedConversations`: a workload's prebuilt conversations as :class:`UserSessions`
  users.

:func:`route_body` is how a source hands a body to the fleet's router; given a :class:`Refusals` it
counts a request the gateway or a replica refuses instead of raising, so a benchmark can
report refusals per arm (a router must never look good by shedding load).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from kvgate.bench.loadgen import conversation_chains
from kvgate.bench.request import BenchRequest
from kvgate.bench.virtual_fleet import OnFinished, Pacing, VirtualFleet
from kvgate.errors import GatewayError
from kvgate.sim import openai_api
from kvgate.sim.engine import Engine, RequestRejected
from kvgate.sim.profiles import Profile
from kvgate.sim.prompt import PromptRenderer
from kvgate.sim.request import EngineRequest, RequestStats
from kvgate.vllm_compat.sim_tokenizer import MemoTokenizer


class RequestBuilder:
    """OpenAI request bodies -> engine requests, as a ``kvgate sim`` replica parses them."""

    def __init__(self, profile: Profile, image_tokens: int | None = None,
                 model: str | None = None) -> None:
        self.profile = profile
        #: The model name bodies must carry (default: the profile's served model name).
        self.model = model or profile.served_model_name
        # Memoized: conversations resend earlier turns and users share system prompts.
        self.renderer = PromptRenderer(profile, MemoTokenizer(), image_tokens)

    def build(self, body: bytes, request_id: str
              ) -> tuple[EngineRequest, openai_api.Generation]:
        """The engine request for a chat/completions body; raises ``openai_api.ApiError``."""
        generation = openai_api.parse_generation(body, "chat", self.renderer, self.model,
                                                 request_id)
        request = EngineRequest(
            request_id=request_id,
            prompt_token_ids=generation.prompt.token_ids,
            output_token_ids=generation.answer.token_ids,
            final_finish_reason=generation.answer.finish_reason,
            mm_items=generation.prompt.mm_items,
            cache_salt=generation.cache_salt,
        )
        return request, generation


#: Why a request never reached an engine: the gateway refused it (a bad body, or a strategy
#: shedding load), the replica's API server rejected its body, or no engine could ever run it.
REFUSED = (GatewayError, openai_api.ApiError, RequestRejected)


class Refusals:
    """Requests refused before reaching an engine, counted by kind (``"GatewayError 503"``)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def count(self, error: Exception) -> None:
        status = getattr(error, "status", None)
        kind = type(error).__name__ if status is None else f"{type(error).__name__} {status}"
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class Routed:
    """A body the gateway routed: the chosen engine and the request it will get."""

    engine_index: int
    request: EngineRequest
    generation: openai_api.Generation

    def submit(self, fleet: VirtualFleet, on_finished: OnFinished) -> None:
        fleet.submit(self.engine_index, self.request, self.generation.prompt.num_image_tokens,
                     on_finished)


async def route_body(fleet: VirtualFleet, builder: RequestBuilder, body: bytes, request_id: str,
                refusals: Refusals | None = None) -> Routed | None:
    """Route ``body`` now, as the gateway would; None if it was refused.

    The engine request is built and checked against the first engine before routing (a
    fleet's engines share their limits), so a strategy never records a request that no engine
    could run. Without ``refusals`` a refusal raises.
    """
    try:
        request, generation = builder.build(body, request_id)
        fleet.engines[0].validate(request)
        engine_index = await fleet.route(body, request_id)
    except REFUSED as error:
        if refusals is None:
            raise
        refusals.count(error)
        return None
    return Routed(engine_index, request, generation)


class Conversations(Protocol):
    """Where users' turns come from."""

    def next_body(self, user: int) -> bytes:
        """The user's next request body (OpenAI chat)."""
        ...

    def answered(self, user: int, answer: str) -> bool:
        """The engine answered the user's last turn; True while the user has turns left."""
        ...


class UserSessions:
    """Users ``0..n-1``; user ``i`` starts at ``first_arrivals_s[i]`` (simulated seconds).

    Think times must be at least the pacing quantum, so that a follow-up turn is never due in
    the past: ``min_think_s`` is checked on every pause. With ``refusals``, a refused turn is
    counted there and its user leaves; without, it raises.
    """

    def __init__(self, users: Conversations, builder: RequestBuilder,
                 first_arrivals_s: Sequence[float], think_s: Callable[[], float],
                 min_think_s: float, refusals: Refusals | None = None) -> None:
        self._users = users
        self._builder = builder
        self._think_s = think_s
        self._min_think_s = min_think_s
        self._refusals = refusals
        self._arrivals = [(at_s, user) for user, at_s in enumerate(first_arrivals_s)]
        heapq.heapify(self._arrivals)
        self._sent = 0

    def next_due_s(self) -> float | None:
        return self._arrivals[0][0] if self._arrivals else None

    async def dispatch_due(self, fleet: VirtualFleet) -> None:
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= fleet.now_s:
            _, user = heapq.heappop(arrivals)
            request_id = f"r{self._sent}"
            self._sent += 1
            routed = await route_body(fleet, self._builder, self._users.next_body(user), request_id,
                                 self._refusals)
            if routed is not None:
                routed.submit(fleet, self._on_finished(user, routed.generation.answer.text))

    def _on_finished(self, user: int, answer: str) -> Callable[[RequestStats], None]:
        def finished(stats: RequestStats) -> None:
            if self._users.answered(user, answer):
                pause_s = self._think_s()
                if pause_s < self._min_think_s:
                    raise ValueError(f"think times must be at least {self._min_think_s} s")
                heapq.heappush(self._arrivals, (stats.finished_s + pause_s, user))
        return finished


class ScriptedConversations:
    """A workload's prebuilt conversations (its requests grouped by session, see
    :func:`kvgate.bench.loadgen.conversation_chains`) as :class:`UserSessions` users: user
    ``i`` sends conversation ``i``'s bodies in order, whatever the replica answered."""

    def __init__(self, requests: Sequence[BenchRequest]) -> None:
        self._bodies = [[requests[i].body for i in chain]
                        for chain in conversation_chains(requests)]
        self._sent = [0] * len(self._bodies)

    @property
    def num_users(self) -> int:
        return len(self._bodies)

    def next_body(self, user: int) -> bytes:
        return self._bodies[user][self._sent[user]]

    def answered(self, user: int, answer: str) -> bool:
        self._sent[user] += 1
        return self._sent[user] < len(self._bodies[user])


class OpenLoop:
    """Open loop: body ``i`` is sent at ``arrivals_s[i]`` (simulated seconds), whatever the
    fleet is doing. Request ids are ``r<i>``; each finished request's stats go to
    ``on_finished``; refusals as in :func:`route_body`."""

    def __init__(self, bodies: Sequence[bytes], arrivals_s: Sequence[float],
                 builder: RequestBuilder, on_finished: OnFinished,
                 refusals: Refusals | None = None) -> None:
        if len(bodies) != len(arrivals_s):
            raise ValueError("one arrival time per body")
        self._bodies = bodies
        self._builder = builder
        self._on_finished = on_finished
        self._refusals = refusals
        self._order = sorted(range(len(bodies)), key=arrivals_s.__getitem__)
        self._arrivals_s = arrivals_s
        self._next = 0

    def next_due_s(self) -> float | None:
        if self._next >= len(self._order):
            return None
        return self._arrivals_s[self._order[self._next]]

    async def dispatch_due(self, fleet: VirtualFleet) -> None:
        order, arrivals_s = self._order, self._arrivals_s
        while self._next < len(order) and arrivals_s[order[self._next]] <= fleet.now_s:
            index = order[self._next]
            self._next += 1
            routed = await route_body(fleet, self._builder, self._bodies[index], f"r{index}",
                                      self._refusals)
            if routed is not None:
                routed.submit(fleet, self._on_finished)


class ClosedLoop:
    """``concurrency`` requests outstanding until ``requests`` runs out; engines in turn.

    ``requests`` yields (request, vision tokens) pairs, built lazily so a long run never holds
    every prompt at once. Not routed: the fleet needs no strategy.
    """

    def __init__(self, requests: Iterator[tuple[EngineRequest, int]], concurrency: int) -> None:
        self._requests = requests
        self._free_slots = concurrency
        self._exhausted = False
        self._sent = 0

    def next_due_s(self) -> float | None:
        # A free slot is filled at once; otherwise nothing is due until a request finishes.
        return 0.0 if self._free_slots and not self._exhausted else None

    async def dispatch_due(self, fleet: VirtualFleet) -> None:
        while self._free_slots and not self._exhausted:
            item = next(self._requests, None)
            if item is None:
                self._exhausted = True
                return
            request, num_image_tokens = item
            self._free_slots -= 1
            fleet.submit(self._sent % len(fleet.engines), request, num_image_tokens,
                         self._on_finished)
            self._sent += 1

    def _on_finished(self, _: RequestStats) -> None:
        self._free_slots += 1


def run_closed_loop(engines: Sequence[Engine], requests: Iterator[tuple[EngineRequest, int]],
                    concurrency: int) -> VirtualFleet:
    """:class:`ClosedLoop` on an unrouted fleet of ``engines``, run until every request has
    finished; returns the fleet (``finished`` holds the stats)."""
    fleet = VirtualFleet(engines, None)
    asyncio.run(fleet.drive(ClosedLoop(requests, concurrency), Pacing()))
    return fleet
