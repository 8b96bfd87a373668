"""Options and helpers shared by the CLI commands (config file lookup and loading)."""

from __future__ import annotations

import os

from litestream_fast.config import DEFAULT_CONFIG_PATH, Config, parse_config
from litestream_fast.errors import ConfigError


def default_config_path() -> str:
    """The config path when -config is not given: $LITESTREAM_CONFIG or /etc/litestream.yml."""
    return os.environ.get("LITESTREAM_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str | None, no_expand_env: bool = False) -> Config:
    """load_config reads and parses a config file; a missing or unreadable file is a
    ConfigError naming the path."""
    path = path or default_config_path()
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(text, expand=not no_expand_env, source=path)
