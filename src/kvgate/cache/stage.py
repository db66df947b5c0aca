"""The response cache stage: the exact cache first, then (when enabled) the semantic cache.

A deterministic request (``temperature`` 0 or a ``seed``, one choice) is looked up by its
canonical key, then by meaning (``semantic.py``); a miss goes on to routing, and the answer is
stored for both. An answer that needed failover is not stored: it may come from a fallback
deployment, and the next request should get the primary's answer (PEERS.md). Streams are
served from the cache as replayed chunks; streamed answers are not stored.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING, Any

from kvgate.cache.exact import cache_key, is_cacheable, replay_as_stream
from kvgate.cache.semantic_key import semantic_key
from kvgate.cache.store import CachedResponse, ResponseStore
from kvgate.config.schema import SemanticCacheSettings
from kvgate.core.call import CacheStatus, Call, Completion, Outcome, Stage, StreamingCompletion
from kvgate.extras import require
from kvgate.observability.metrics import Metrics

if TYPE_CHECKING:
    # NOTE: numpy (the `semantic` extra) is imported only when a semantic cache is built, so
    # the exact cache, on by default, works with the core install alone.
    import numpy as np

    from kvgate.cache.embedders import Embedder
    from kvgate.cache.semantic import SemanticIndex


class SemanticCache:
    """The index, its embedder and threshold, for the stage."""

    def __init__(self, index: SemanticIndex, embedder: Embedder, threshold: float, *,
                 embed_off_loop: bool) -> None:
        self.index = index
        self.embedder = embedder
        self.threshold = threshold
        # NOTE: a model embedder takes milliseconds of CPU per prompt (numpy releases the GIL
        # in its matrix products); the hashing one takes tens of microseconds.
        self._embed_off_loop = embed_off_loop

    @classmethod
    def from_settings(cls, settings: SemanticCacheSettings) -> SemanticCache:
        require("semantic", "numpy", feature="the semantic cache (cache.semantic)")
        from kvgate.cache.embedders import build_embedder
        from kvgate.cache.semantic import SemanticIndex

        embedder = build_embedder(settings.embedder)
        index = SemanticIndex(dimensions=embedder.dimensions, max_entries=settings.max_entries,
                              ttl_s=settings.ttl_s)
        return cls(index, embedder, settings.threshold,
                   embed_off_loop=settings.embedder != "hashing")

    async def embed(self, text: str) -> np.ndarray:
        if self._embed_off_loop:
            return await asyncio.to_thread(self.embedder.embed, text)
        return self.embedder.embed(text)


class ResponseCacheStage:
    def __init__(self, next_stage: Stage, store: ResponseStore, metrics: Metrics,
                 semantic: SemanticCache | None = None, *, exact_enabled: bool = True) -> None:
        self._next = next_stage
        self._store = store
        self._exact = exact_enabled
        self._semantic = semantic
        results = ("exact", "semantic", "miss")
        self._lookups = {result: metrics.cache_lookups.labels(result) for result in results}

    async def __call__(self, call: Call) -> Outcome:
        if not is_cacheable(call.body):
            return await self._next(call)
        key = cache_key(call) if self._exact else None
        hit = await self._store.get(key) if key is not None else None
        if hit is not None:
            self._lookups["exact"].inc()
            return _served(call, hit, "exact")
        semantic, vector, skey = self._semantic, None, None
        if semantic is not None:
            skey = semantic_key(call)
            if skey is not None:
                vector = await semantic.embed(skey.text)
                found = semantic.index.lookup(skey.partition, vector, semantic.threshold)
                if found is not None:
                    self._lookups["semantic"].inc()
                    call.route = {"similarity": round(found.similarity, 4)}
                    return _served(call, found.response, "semantic")
        self._lookups["miss"].inc()
        outcome = await self._next(call)
        if (isinstance(outcome, Completion) and outcome.deployment is not None
                and not call.failed_attempts):
            body = copy.deepcopy(outcome.body)
            body.pop("kvgate", None)
            cached = CachedResponse(body, outcome.upstream_model, outcome.deployment.id)
            if key is not None:
                self._store.put(key, cached)
            if semantic is not None and skey is not None and vector is not None:
                semantic.index.insert(skey.partition, vector, cached)
        return outcome

    async def aclose(self) -> None:
        await self._store.aclose()

    def describe(self) -> dict[str, Any]:
        return {
            "exact_entries": self._store.size() if self._exact else None,
            "semantic_entries": len(self._semantic.index) if self._semantic else None,
            "semantic_embedder": self._semantic.embedder.name if self._semantic else None,
        }


def _served(call: Call, hit: CachedResponse, status: CacheStatus) -> Outcome:
    call.route = {"strategy": "cache", "deployment": hit.deployment_id, **call.route}
    if call.stream:
        return StreamingCompletion(replay_as_stream(hit.body, True), None, status,
                                   hit.upstream_model)
    return Completion(copy.deepcopy(hit.body), None, status, 0.0, hit.upstream_model)
