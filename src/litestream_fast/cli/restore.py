"""``litestream-fast restore``: recover a database from a replica (latest, -index, -timestamp).

Flags are Litestream v0.3.13's (``-o``, ``-config``, ``-no-expand-env``, ``-replica``,
``-generation``, ``-index`` (hex, inclusive), ``-timestamp`` (RFC3339),
``-if-db-not-exists``, ``-if-replica-exists``, ``-parallelism``) plus ``-dry-run`` (print
the plan and stop), ``-integrity-check none|quick|full`` (default quick) and ``-json``.
The target choice and its edge cases are documented in ``litestream_fast.restore``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any

import click

from litestream_fast.cli import cli
from litestream_fast.cli.common import config_options
from litestream_fast.cli.inspect import open_replicas, rfc3339
from litestream_fast.errors import NoBackupFound, OutputExists, UsageError
from litestream_fast.restore import (
    DEFAULT_PARALLELISM,
    INTEGRITY_CHECKS,
    RestorePlan,
    plan_restore,
    restore,
)

#: Show a progress bar only for restores bigger than this (and only on a terminal).
PROGRESS_MIN_BYTES = 4 << 20

_RFC3339_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)
TIMESTAMP_ERROR = "invalid -timestamp, must specify in ISO 8601 format (e.g. 2000-01-01T00:00:00Z)"


def parse_timestamp(s: str) -> datetime:
    """parse_timestamp reads an RFC3339 time as Go's ``time.Parse(time.RFC3339, s)`` does."""
    m = _RFC3339_RE.match(s.strip())
    if not m:
        raise UsageError(TIMESTAMP_ERROR)
    date, clock, frac, zone = m.groups()
    micro = (frac[1:] + "000000")[:6] if frac else "000000"
    zone = "+00:00" if zone.upper() == "Z" else zone
    try:
        t = datetime.fromisoformat(f"{date}T{clock}.{micro}{zone}")
    except ValueError:
        raise UsageError(TIMESTAMP_ERROR) from None
    return t.astimezone(timezone.utc)


def parse_index(s: str) -> int:
    """parse_index reads ``-index`` as hex (Litestream: ``strconv.ParseInt(s, 16, 32)``)."""
    try:
        n = int(s, 16)
    except ValueError:
        n = -1
    if not 0 <= n <= 0x7FFFFFFF or s.strip().lower().startswith(("0x", "+", "-")):
        raise UsageError(f'invalid value "{s}" for flag -index: invalid hexadecimal format')
    return n


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def _plan_text(plan: RestorePlan, output: str) -> str:
    d = plan.to_dict()
    idx = plan.indexes
    last = plan.last_segment
    lines = [
        f"replica:     {plan.replica} ({plan.client.describe()})",
        f"generation:  {plan.generation}",
        f"snapshot:    {plan.snapshot.index:08x} ({plan.snapshot.size} bytes, "
        f"created {rfc3339(plan.snapshot.created_at)})",
        "wal indexes: " + (f"{idx[0]:08x}..{idx[-1]:08x}" if idx else "none (snapshot only)"),
        f"segments:    {len(plan.segments)} ({d['segment_bytes']} bytes)",
        f"download:    {plan.total_bytes} bytes",
        "last:        "
        + (f"{plan.generation}/{last.index:08x}:{last.offset}" if last else "snapshot"),
        f"restores to: {rfc3339(plan.restores_to)}",
        f"output:      {output}"
        + ("  (exists; a restore would refuse)" if os.path.lexists(output) else ""),
    ]
    return "\n".join(lines)


@cli.command("restore")
@click.argument("target", required=False, metavar="DB_PATH|REPLICA_URL")
@click.option(
    "-o",
    "--output",
    "output",
    metavar="PATH",
    help="Output path (default: the DB path; required with a URL).",
)
@config_options
@click.option(
    "-replica",
    "--replica",
    "replica_name",
    metavar="NAME",
    help="Restore from this replica (default: the one with the latest data).",
)
@click.option(
    "-generation",
    "--generation",
    metavar="NAME",
    help="Restore from this generation (default: the one with the latest data).",
)
@click.option(
    "-index",
    "--index",
    "index_str",
    metavar="HEX",
    help="Restore up to this WAL index, inclusive (hex; needs -generation).",
)
@click.option(
    "-timestamp",
    "--timestamp",
    "timestamp_str",
    metavar="RFC3339",
    help="Restore to this point in time.",
)
@click.option(
    "-if-db-not-exists",
    "--if-db-not-exists",
    is_flag=True,
    help="Exit 0 if the output already exists.",
)
@click.option(
    "-if-replica-exists", "--if-replica-exists", is_flag=True, help="Exit 0 if no backup is found."
)
@click.option(
    "-parallelism",
    "--parallelism",
    type=int,
    default=DEFAULT_PARALLELISM,
    show_default=True,
    help="WAL segments downloaded in parallel.",
)
@click.option("-dry-run", "--dry-run", is_flag=True, help="Print what would be restored and stop.")
@click.option(
    "-integrity-check",
    "--integrity-check",
    type=click.Choice(INTEGRITY_CHECKS),
    default="quick",
    show_default=True,
    help="Check run on the restored database.",
)
@click.option("-json", "--json", "as_json", is_flag=True, help="Print the plan or result as JSON.")
def restore_cmd(
    target: str | None,
    output: str | None,
    config_path: str | None,
    no_expand_env: bool,
    replica_name: str | None,
    generation: str | None,
    index_str: str | None,
    timestamp_str: str | None,
    if_db_not_exists: bool,
    if_replica_exists: bool,
    parallelism: int,
    dry_run: bool,
    integrity_check: str,
    as_json: bool,
) -> None:
    """Restore a database from a replica: DB_PATH (via the config file) or REPLICA_URL."""
    if not target:
        raise UsageError("database path or replica URL required")
    timestamp = parse_timestamp(timestamp_str) if timestamp_str else None
    index = parse_index(index_str) if index_str is not None else None
    if index is not None and not generation:
        raise UsageError("must specify generation when restoring to index")
    if index is not None and timestamp is not None:
        raise UsageError("cannot specify index & timestamp to restore")

    replicas = open_replicas(target, config_path, no_expand_env, replica_name)
    if replicas.db_path is None:
        if not output:
            raise UsageError("output path required")
        replica_name = None  # a URL is one replica; Litestream ignores -replica here
    output = os.path.abspath(os.path.expanduser(output or replicas.db_path or ""))

    def skip(reason: str) -> None:
        if as_json:
            _print_json({"status": "skipped", "reason": reason, "output": output})
        else:
            click.echo(f"{reason}, skipping", err=True)

    exists = os.path.lexists(output)
    if exists and if_db_not_exists:
        skip("database already exists")
        return
    if exists and not dry_run:
        raise OutputExists(f"cannot restore, output path already exists: {output}")

    try:
        plan = plan_restore(
            replicas.clients,
            generation=generation,
            index=index,
            timestamp=timestamp,
            replica=replica_name,
            parallelism=max(1, parallelism),
        )
    except NoBackupFound as exc:
        if if_replica_exists:
            skip(str(exc))
            return
        raise

    if dry_run:
        if as_json:
            d = plan.to_dict()
            d.update(status="dry-run", output=output, output_exists=exists)
            _print_json(d)
        else:
            click.echo(_plan_text(plan, output))
        return

    bar = None
    if not as_json and plan.total_bytes > PROGRESS_MIN_BYTES and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                   desc="restore", file=sys.stderr, leave=False)  # fmt: skip
    try:
        result = restore(
            plan,
            output,
            parallelism=max(1, parallelism),
            integrity_check=integrity_check,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()

    if as_json:
        d = result.to_dict()
        d["status"] = "restored"
        _print_json(d)
    else:
        click.echo(
            f"restored {result.output} from replica {result.replica}, generation "
            f"{result.generation}: snapshot {result.snapshot_index:08x} + "
            f"{result.segments} WAL segments up to {result.pos}; state as of "
            f"{rfc3339(result.restored_to)} ({result.bytes_downloaded} bytes downloaded, "
            f"{result.db_size} byte database, {result.elapsed:.2f}s)"
        )
