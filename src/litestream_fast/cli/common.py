"""Options and helpers shared by the CLI commands (config file lookup and loading)."""

from __future__ import annotations

import os

import click

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


def config_options(f):
    """config_options adds Litestream's ``-config PATH`` and ``-no-expand-env`` flags."""
    f = click.option(
        "-no-expand-env", "--no-expand-env", is_flag=True,
        help="Do not expand $VAR in the config file.",
    )(f)  # fmt: skip
    f = click.option(
        "-config", "--config", "config_path", metavar="PATH",
        help="Config file (default $LITESTREAM_CONFIG or /etc/litestream.yml).",
    )(f)  # fmt: skip
    return f


json_option = click.option("-json", "--json", "as_json", is_flag=True, help="Print JSON.")
