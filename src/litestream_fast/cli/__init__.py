"""The ``litestream-fast`` command line: Litestream's commands, flags and exit codes.

Litestream spells long flags with one dash (``-config``, ``-o``); every flag here takes
that spelling and the two-dash one. Library errors (``LitestreamError``) become a one-line
``error: …`` message and exit status 1, never a traceback. Each command lives in its own
module and registers itself on ``cli``; a module is imported only when one of its commands
is looked up, so ``restore`` does not pay for importing the replication engine (start-up
is part of every restore's wall time).
"""

from __future__ import annotations

import importlib
import sys

import click

from litestream_fast import __version__
from litestream_fast._backend import BACKEND
from litestream_fast.errors import LitestreamError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

#: The module (under ``litestream_fast.cli``) that defines each command.
COMMAND_MODULES = {
    "databases": "inspect",
    "generations": "inspect",
    "replicate": "replicate",
    "restore": "restore",
    "snapshots": "inspect",
    "status": "status",
    "verify": "verify",
    "wal": "inspect",
}


class Group(click.Group):
    """A click group that turns library errors into one-line messages and exit 1, and
    imports a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"litestream_fast.cli.{module}")
        return super().get_command(ctx, cmd_name)

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


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: every error is one line on stderr and exit status 1."""
    try:
        rv = cli.main(args=args, prog_name="litestream-fast", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare command: help, as Litestream
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(1)
    except click.UsageError as exc:
        hint = (
            f" (see 'litestream-fast {exc.ctx.info_name} -h')" if exc.ctx and exc.ctx.parent else ""
        )
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
