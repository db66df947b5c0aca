"""Requests for the virtual fleet (:mod:`kvgate.bench.virtual_fleet`) and the arrival sources
the scenarios share.

- :class:`RequestBuilder`: an OpenAI body -> the engine request a ``kvgate sim`` replica would
  build from it (the replica's own parser, :func:`kvgate.sim.openai_api.parse_generation`),
  so prompts, images and planned answers are exactly what an HTTP replica would see.
- :class:`UserSessions`: closed-loop users; a user's next turn arrives a think time after the
  previous answer finished, and carries that answer (what a chat client resends).
- :class:`ClosedLoop`: ``concurrency`` requests outstanding, each slot refilled the moment its
  request finishes (vLLM's ``benchmark_serving --max-concurrency``), engines taken in turn.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from kvgate.bench.virtual_fleet import Pacing, VirtualFleet
from kvgate.sim import openai_api
from kvgate.sim.engine import Engine
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
    the past: ``min_think_s`` is checked on every pause.
    """

    def __init__(self, users: Conversations, builder: RequestBuilder,
                 first_arrivals_s: Sequence[float], think_s: Callable[[], float],
                 min_think_s: float) -> None:
        self._users = users
        self._builder = builder
        self._think_s = think_s
        self._min_think_s = min_think_s
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
            body = self._users.next_body(user)
            target = await fleet.route(body, request_id)
            request, generation = self._builder.build(body, request_id)
            fleet.submit(target, request, generation.prompt.num_image_tokens,
                         self._on_finished(user, generation.answer.text))

    def _on_finished(self, user: int, answer: str) -> Callable[[RequestStats], None]:
        def finished(stats: RequestStats) -> None:
            if self._users.answered(user, answer):
                pause_s = self._think_s()
                if pause_s < self._min_think_s:
                    raise ValueError(f"think times must be at least {self._min_think_s} s")
                heapq.heappush(self._arrivals, (stats.finished_s + pause_s, user))
        return finished


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
