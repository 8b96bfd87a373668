"""The ``litestream-fast`` command line: Litestream's commands, flags and exit codes.

Litestream spells long flags with one dash (``-config``, ``-o``); every flag here takes
that spelling and the two-dash one. Library errors (``LitestreamError``) become a one-line
``error: …`` message and exit status 1, never a traceback. Each command lives in its own
module and registers itself on ``cli``.
"""

from __future__ import annotations

import sys

import click

from litestream_fast import __version__
from litestream_fast._backend import BACKEND
from litestream_fast.errors import LitestreamError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class Group(click.Group):
    """A click group that turns library errors into one-line messages and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LitestreamError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
def cli() -> None:
    """litestream-fast: streaming replication for SQLite (Litestream v0.3 compatible)."""


@cli.command()
def version() -> None:
    """Print the version and which WAL backend (cython or python) is loaded."""
    click.echo(f"litestream-fast v{__version__} (backend: {BACKEND})")


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="litestream-fast", standalone_mode=True)


# Register every command on the group (each module does ``@cli.command()``).
from litestream_fast.cli import commands  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
