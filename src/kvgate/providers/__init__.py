"""Upstream providers, built from config by their settings type once at start-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvgate.config.schema import (
    AnthropicSettings,
    MockProviderSettings,
    OpenAICompatibleSettings,
    OpenAISettings,
)
from kvgate.core.provider import Provider
from kvgate.providers.mock import MockProvider
from kvgate.providers.openai_compatible import OpenAICompatibleProvider, OpenAIProvider


def _anthropic(name: str, settings: Any) -> Provider:
    # Imported when configured: its translation layer is not needed by other providers.
    from kvgate.providers.anthropic import AnthropicProvider

    return AnthropicProvider(name, settings)


def _engine_metrics_url(settings: Any) -> str | None:
    """vLLM serves /metrics at the server root, beside /v1."""
    base = str(settings.api_base).rstrip("/")
    return (base[:-3] if base.endswith("/v1") else base) + "/metrics"


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """A provider type in the registry: how to build it and what it can do, read from its
    settings, so the composer never branches on a provider's name."""

    factory: Callable[[str, Any], Provider]
    #: Whether a stream cut mid-answer may be continued there (vLLM's continue_final_message).
    resumes_streams: Callable[[Any], bool] = lambda settings: bool(settings.resume_streams)
    #: Where the engine publishes vLLM's load metrics, or None for engines that do not.
    engine_metrics_url: Callable[[Any], str | None] = lambda settings: None


PROVIDERS: dict[type, ProviderEntry] = {
    MockProviderSettings: ProviderEntry(MockProvider, resumes_streams=lambda settings: True),
    OpenAISettings: ProviderEntry(OpenAIProvider),
    OpenAICompatibleSettings: ProviderEntry(
        OpenAICompatibleProvider, engine_metrics_url=_engine_metrics_url
    ),
    AnthropicSettings: ProviderEntry(_anthropic),
}


def provider_entry(settings: object) -> ProviderEntry:
    """The registry entry for this settings type."""
    return PROVIDERS[type(settings)]


def build_provider(name: str, settings: object) -> Provider:
    """Instantiate the provider class registered for this settings type."""
    return provider_entry(settings).factory(name, settings)


__all__ = ["PROVIDERS", "Provider", "ProviderEntry", "build_provider", "provider_entry"]
