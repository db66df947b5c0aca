"""A simulated vLLM fleet: replicas that behave like vLLM with prefix caching, without GPUs.

In-process (no HTTP): `engine.Engine` (one replica, step-driven) and `virtual.VirtualCluster`
(many replicas on one virtual clock). As processes: `kvgate sim` (`cli.py`, `fleet.py`), each
replica serving vLLM's OpenAI API (`server.py`) and KV events over ZMQ (`kv_publisher.py`).
docs/SIMULATOR.md describes the model, its calibration and its limits.
"""
