"""Byte-exact reimplementations of vLLM's prefix-cache identities (target: vLLM 0.33.0).

Everything a router needs to agree with a vLLM replica about *which* KV blocks exist:

- `hashing`: the chained block hash (sha256 / sha256_cbor / xxhash / xxhash_cbor), NONE_HASH seed
  rules, extra keys for multimodal items, LoRA and cache_salt, and the 64-bit event integer.
- `mm_hash`: the blake3 multimodal hash vLLM derives from an image's encoded bytes.
- `kv_events`: the KV-cache event structs and their msgpack wire layouts (current map-tagged and
  legacy array-tagged), with one decoder for both.
- `sim_tokenizer`, `sim_prompt`: the simulated model's tokenizer and prompt format, which a
  `kvgate sim` replica serves and the precise router reproduces (`kvgate-sim:<profile>`).

These modules import nothing from the rest of KVGate, so the simulator and the precise router can
share them without a dependency cycle.
"""
