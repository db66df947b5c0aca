"""Upstream providers, built from config by name once at start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvgate.config.schema import (
    AnthropicSettings,
    MockProviderSettings,
    OpenAICompatibleSettings,
    OpenAISettings,
)
from kvgate.providers.base import Provider
from kvgate.providers.mock import MockProvider
from kvgate.providers.openai_compatible import OpenAICompatibleProvider, OpenAIProvider


def _anthropic(name: str, settings: Any) -> Provider:
    from kvgate.providers.anthropic import AnthropicProvider

    return AnthropicProvider(name, settings)


_FACTORIES: dict[type, Callable[[str, Any], Provider]] = {
    MockProviderSettings: MockProvider,
    OpenAISettings: OpenAIProvider,
    OpenAICompatibleSettings: OpenAICompatibleProvider,
    AnthropicSettings: _anthropic,
}


def build_provider(name: str, settings: object) -> Provider:
    """Instantiate the provider class registered for this settings type."""
    return _FACTORIES[type(settings)](name, settings)


__all__ = ["Provider", "build_provider"]
