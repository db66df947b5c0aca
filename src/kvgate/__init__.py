"""KVGate: an OpenAI-compatible gateway that routes by KV-cache affinity."""

__version__ = "0.1.0"
