"""Harnesses that run real engines beside the gateway, for end-to-end tests and benchmarks.

Nothing here is imported by the gateway itself; each harness talks to its engine through
subprocesses, so the engine's heavy dependencies never enter the gateway's interpreter.
"""
