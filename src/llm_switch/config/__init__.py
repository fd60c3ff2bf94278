"""config.yaml: typed, frozen, validated once. Every error names its YAML key path."""

from .groups import AnyOf
from .load import find_path, load, parse
from .types import (DEFAULT_BACKEND, DEFAULT_HEALTH_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_BODY, DEFAULT_MAX_QUEUE,
                    DEFAULT_MAX_WAIT, Config, Model, PromptCacheSettings)
from .values import format_size
from .values import listen as parse_listen

__all__ = ["AnyOf", "find_path", "load", "parse", "parse_listen", "format_size", "Config", "Model", "DEFAULT_BACKEND",
           "DEFAULT_HEALTH_TIMEOUT", "DEFAULT_LISTEN", "DEFAULT_MAX_BODY", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_WAIT",
           "PromptCacheSettings"]
