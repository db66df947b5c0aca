"""Typed, frozen configuration: parsed and validated once at start-up."""

from kvgate.config.loader import ConfigError, load_settings, parse_settings
from kvgate.config.schema import Settings

__all__ = ["ConfigError", "Settings", "load_settings", "parse_settings"]
