"""Typed, frozen configuration: parsed and validated once at start-up."""

from kvgate.config.loader import (
    ConfigError,
    ConfigProblem,
    ConfigReport,
    check_config,
    check_config_file,
    load_settings,
    parse_settings,
)
from kvgate.config.schema import Settings

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "ConfigReport",
    "Settings",
    "check_config",
    "check_config_file",
    "load_settings",
    "parse_settings",
]
