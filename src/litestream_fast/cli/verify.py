"""``litestream-fast verify``: prove on demand that a replica restores to our database."""

from __future__ import annotations

import json
import os
import tempfile

import click

from litestream_fast import status as status_mod
from litestream_fast.cli import cli
from litestream_fast.cli.common import config_options, json_option, load_config
from litestream_fast.config import URL_RE, build_client, replica_config_from_url
from litestream_fast.db import DB
from litestream_fast.errors import ConfigError, LitestreamError
from litestream_fast.replica import Replica
from litestream_fast.restore import plan_restore, restore
from litestream_fast.shadow import meta_dir_for


@cli.command()
@click.argument("target")
@config_options
@click.option("-replica", "--replica", "replica_name", metavar="NAME", help="Only this replica.")
@json_option
def verify(
    target: str,
    config_path: str | None,
    no_expand_env: bool,
    replica_name: str | None,
    as_json: bool,
) -> None:
    """Verify DB_PATH's replicas, or that REPLICA_URL restores cleanly.

    With DB_PATH (replicas from the config): uploads what is pending, then restores each
    replica at the current position and compares its CRC-64 with the database at that
    same position; exit status 1 on any mismatch. Run it while no replicator runs for the
    database (a running one validates itself with validation-interval). With
    REPLICA_URL: restores the latest state to a temporary file with a full integrity check.
    """
    if URL_RE.match(target):
        if config_path:
            raise ConfigError("cannot specify a replica URL and the -config flag")
        client = build_client(replica_config_from_url(target))
        with tempfile.TemporaryDirectory(prefix="litestream-verify-") as work:
            plan = plan_restore({"replica": client})
            res = restore(plan, os.path.join(work, "db"), integrity_check="full")
        doc = {
            "ok": True,
            "replica": target,
            "position": str(res.pos),
            "restores_to": plan.to_dict()["restores_to"],
        }
        click.echo(
            json.dumps([doc]) if as_json else f"ok: {target} restores to {res.pos} (integrity ok)"
        )
        return
    cfg = load_config(config_path, no_expand_env)
    dbc = cfg.db(target)
    if dbc is None:
        raise ConfigError(f"database not found in config: {target}")
    running = status_mod.read(dbc.meta_path or meta_dir_for(dbc.path))
    if running is not None:
        raise LitestreamError(
            f"a replicator (pid {running['pid']}) is running for {dbc.path}; stop it first, "
            "or set validation-interval on its replicas"
        )
    db = DB(dbc.path, meta_path=dbc.meta_path, checkpoint_interval=0, busy_timeout=dbc.busy_timeout)
    if not db.open():
        raise LitestreamError(f"database does not exist: {dbc.path}")
    from litestream_fast.validation import validate

    results = []
    try:
        for rc in dbc.replicas:
            if replica_name and rc.display_name != replica_name:
                continue
            r = Replica(db, build_client(rc), name=rc.display_name)
            results.append(validate(r))
    finally:
        db.close()
    if replica_name and not results:
        raise ConfigError(f"replica not found: {replica_name}")
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results]))
    else:
        for r in results:
            word = "ok" if r.ok else "MISMATCH"
            line = f"{word}: replica {r.replica} at {r.pos} crc64={r.replica_crc64:016x}"
            if not r.ok:
                line += f" expected={r.expected_crc64:016x} ({r.detail})"
            click.echo(line)
    if not all(r.ok for r in results):
        raise SystemExit(1)
