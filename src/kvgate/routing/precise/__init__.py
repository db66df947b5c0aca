"""Precise KV-aware routing from vLLM's KV-cache events (strategy ``precise_kv``).

- ``subscriber``: one ZMQ SUB (+ replay DEALER) task per deployment;
- ``replica``: sequence tracking, gaps, replay, degrade and rebuild, as synchronous state;
- ``index``: the block hashes each replica holds, by medium, with pending dispatches;
- ``renderers`` and ``request_hasher``: a request's vLLM block hashes, token-exact;
- ``event_clock``: the no-tokenizer fallback;
- ``strategy``: ties them to ``prefix_kv_aware``'s scoring and load guard.
"""
