"""Options and helpers shared by the CLI commands (config file lookup and loading)."""

from __future__ import annotations

import ctypes
import os
import sys

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


#: glibc's mallopt parameter for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def limit_heap_growth() -> None:
    """limit_heap_growth makes glibc serve allocations of 1 MiB or more (the 4 MiB LZ4
    blocks, the 8 MiB WAL read buffer) with mmap, returned to the system when freed.

    By default glibc raises that threshold the first time such a block is freed, after
    which every worker thread's arena keeps its freed blocks: a restore's peak RSS went
    from 47 to 67 MiB that way. Only the CLI calls this (it owns the process); it is a
    no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
