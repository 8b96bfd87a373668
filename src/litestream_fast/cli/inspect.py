"""Replica inspection commands: ``generations``, ``snapshots``, ``wal``, ``databases``.

Same arguments and columns as Litestream v0.3.13 (DB_PATH looked up in the config file, or
a REPLICA_URL; ``-replica`` filters by name, ``wal -generation`` by generation), printed
the way Go's ``text/tabwriter`` aligns them (two spaces of padding, last column unpadded)
with RFC3339 UTC times. ``-json`` prints a JSON array of objects instead.

One difference: when listing a replica fails, Litestream logs it and still exits 0; here
the error is printed, the other replicas are still listed, and the exit status is 1.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import click

from litestream_fast.cli import cli
from litestream_fast.cli.common import config_options, json_option, load_config
from litestream_fast.config import URL_RE, build_client, replica_config_from_url
from litestream_fast.errors import ConfigError, LitestreamError, UsageError
from litestream_fast.replica_client import ReplicaClient


@dataclass
class Replicas:
    """The replicas a command works on: from a config entry (``db_path`` set) or a URL."""

    db_path: str | None
    clients: dict[str, ReplicaClient]


def open_replicas(
    target: str | None,
    config_path: str | None,
    no_expand_env: bool,
    replica_name: str | None = None,
) -> Replicas:
    """open_replicas resolves DB_PATH (via the config file) or REPLICA_URL to clients.

    With a URL, the replica is named after its type ("file", "s3") as in Litestream, and
    ``-replica`` is ignored (as Litestream does); ``-config`` with a URL is an error.
    """
    if not target:
        raise UsageError("database path or replica URL required")
    if URL_RE.match(target):
        if config_path:
            raise UsageError("cannot specify a replica URL and the -config flag")
        rc = replica_config_from_url(target, "replica URL")
        return Replicas(None, {rc.display_name: build_client(rc)})
    cfg = load_config(config_path, no_expand_env)
    path = os.path.abspath(os.path.expanduser(target))
    db = cfg.db(path)
    if db is None:
        raise ConfigError(f"database not found in config: {path}")
    configs = db.replicas
    if replica_name:
        configs = [rc for rc in configs if rc.display_name == replica_name]
        if not configs:
            raise ConfigError(f'replica "{replica_name}" not found for database "{db.path}"')
    return Replicas(db.path, {rc.display_name: build_client(rc) for rc in configs})


# --------------------------------------------------------------------------- formatting


def rfc3339(t: datetime) -> str:
    """Go's ``time.RFC3339`` in UTC: seconds precision, ``Z`` suffix."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(t: datetime) -> str:
    """RFC3339 in UTC with the sub-second part (trailing zeros trimmed), for JSON."""
    t = t.astimezone(timezone.utc)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def tabwrite(rows: Sequence[Sequence[str]]) -> str:
    """tabwrite aligns rows like Go's ``tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)``.

    Every cell but the last of a line is padded to its column's widest cell plus two.
    """
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + 2) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + (row[-1] if row else ""))
    return "\n".join(lines) + "\n"


def _frac(v: int, prec: int) -> str:
    whole, rest = divmod(v, 10**prec)
    digits = f"{rest:0{prec}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def go_duration(ns: int) -> str:
    """go_duration formats nanoseconds like Go's ``time.Duration.String`` ("1h2m3.5s")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_frac(u, 6)}ms"
    out = _frac(u % 60_000_000_000, 9) + "s"
    minutes = u // 60_000_000_000
    if minutes:
        out = f"{minutes % 60}m" + out
        if minutes >= 60:
            out = f"{minutes // 60}h" + out
    return sign + out


def truncate_duration(ns: int) -> int:
    """Litestream's ``truncateDuration``: fewer digits the larger the lag."""

    def trunc(v: int, m: int) -> int:  # Go's Duration.Truncate: toward zero
        return v - (abs(v) % m) * (1 if v >= 0 else -1)

    a = abs(ns)
    if a > 10 * 10**9:
        return trunc(ns, 10**9)
    if a > 10**9:
        return trunc(ns, 10**8)
    if a > 10**6:
        return trunc(ns, 10**6)
    if a > 10**3:
        return trunc(ns, 10**3)
    return ns


def emit(
    as_json: bool,
    header: list[str],
    rows: list[list[str]],
    records: list[dict[str, Any]],
) -> None:
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        click.echo(tabwrite([header, *rows]), nl=False)


def _each_replica(replicas: Replicas, fn: Callable[[str, ReplicaClient], None]) -> bool:
    """Run ``fn`` for each replica; print failures and keep going. True if all succeeded."""
    ok = True
    for name, client in replicas.clients.items():
        try:
            fn(name, client)
        except (LitestreamError, OSError) as exc:
            click.echo(f"error: replica {name}: {exc}", err=True)
            ok = False
    return ok


def _db_updated_at(db_path: str | None) -> float:
    """Litestream's ``DB.UpdatedAt``: newest mtime of the DB and its WAL (now if missing)."""
    if db_path is None:
        return time.time()
    times = []
    for p in (db_path, db_path + "-wal"):
        try:
            times.append(os.stat(p).st_mtime_ns / 1e9)
        except FileNotFoundError:
            pass
    return max(times) if times else time.time()


_replica_option = click.option(
    "-replica", "--replica", "replica_name", metavar="NAME", help="Only this replica."
)

# --------------------------------------------------------------------------- commands


@cli.command()
@click.argument("target", required=False, metavar="DB_PATH|REPLICA_URL")
@config_options
@_replica_option
@json_option
def generations(
    target: str | None,
    config_path: str | None,
    no_expand_env: bool,
    replica_name: str | None,
    as_json: bool,
) -> None:
    """List generations with their lag behind the database and the time range they cover."""
    from litestream_fast.restore import list_generations

    replicas = open_replicas(target, config_path, no_expand_env, replica_name)
    updated_at = _db_updated_at(replicas.db_path)
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []

    def one(name: str, client: ReplicaClient) -> None:
        for info in list_generations({name: client}):
            start, end = info.created_at, info.updated_at
            if start is None or end is None:
                rows.append([name, info.generation, "-", "-", "-"])
                records.append({"replica": name, "generation": info.generation,
                                "lag_seconds": None, "start": None, "end": None})  # fmt: skip
                continue
            lag = truncate_duration(round((updated_at - end.timestamp()) * 1e9))
            rows.append([name, info.generation, go_duration(lag), rfc3339(start), rfc3339(end)])
            records.append({
                "replica": name, "generation": info.generation, "lag_seconds": lag / 1e9,
                "start": rfc3339_nano(start), "end": rfc3339_nano(end),
                "snapshots": len(info.snapshots), "wal_segments": len(info.segments),
            })  # fmt: skip

    ok = _each_replica(replicas, one)
    emit(as_json, ["name", "generation", "lag", "start", "end"], rows, records)
    if not ok:
        raise SystemExit(1)


@cli.command()
@click.argument("target", required=False, metavar="DB_PATH|REPLICA_URL")
@config_options
@_replica_option
@json_option
def snapshots(
    target: str | None,
    config_path: str | None,
    no_expand_env: bool,
    replica_name: str | None,
    as_json: bool,
) -> None:
    """List snapshots (index in decimal, stored size in bytes, creation time)."""
    replicas = open_replicas(target, config_path, no_expand_env, replica_name)
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []

    def one(name: str, client: ReplicaClient) -> None:
        for gen in client.generations():
            for s in client.snapshots(gen):
                rows.append([name, s.generation, str(s.index), str(s.size), rfc3339(s.created_at)])
                records.append({"replica": name, "generation": s.generation, "index": s.index,
                                "size": s.size, "created": rfc3339_nano(s.created_at)})  # fmt: skip

    ok = _each_replica(replicas, one)
    emit(as_json, ["replica", "generation", "index", "size", "created"], rows, records)
    if not ok:
        raise SystemExit(1)


@cli.command()
@click.argument("target", required=False, metavar="DB_PATH|REPLICA_URL")
@config_options
@_replica_option
@click.option("-generation", "--generation", metavar="NAME", help="Only this generation.")
@json_option
def wal(
    target: str | None,
    config_path: str | None,
    no_expand_env: bool,
    replica_name: str | None,
    generation: str | None,
    as_json: bool,
) -> None:
    """List WAL segments (index and offset in decimal, stored size, creation time)."""
    replicas = open_replicas(target, config_path, no_expand_env, replica_name)
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []

    def one(name: str, client: ReplicaClient) -> None:
        gens = [generation] if generation else client.generations()
        for gen in gens:
            for s in client.wal_segments(gen):
                rows.append([name, s.generation, str(s.index), str(s.offset), str(s.size),
                             rfc3339(s.created_at)])  # fmt: skip
                records.append({"replica": name, "generation": s.generation, "index": s.index,
                                "offset": s.offset, "size": s.size,
                                "created": rfc3339_nano(s.created_at)})  # fmt: skip

    ok = _each_replica(replicas, one)
    emit(as_json, ["replica", "generation", "index", "offset", "size", "created"], rows, records)
    if not ok:
        raise SystemExit(1)


@cli.command()
@click.argument("args", nargs=-1)
@config_options
@json_option
def databases(
    args: tuple[str, ...], config_path: str | None, no_expand_env: bool, as_json: bool
) -> None:
    """List the databases in the config file and their replicas."""
    if args:
        raise UsageError("too many arguments")
    cfg = load_config(config_path, no_expand_env)
    rows = [[d.path, ",".join(r.display_name for r in d.replicas)] for d in cfg.dbs]
    records: list[dict[str, Any]] = [
        {"path": d.path, "replicas": [r.display_name for r in d.replicas]} for d in cfg.dbs
    ]
    emit(as_json, ["path", "replicas"], rows, records)
