"""``litestream-fast status``: what the running replicator says about each database."""

from __future__ import annotations

import json
import time

import click

from litestream_fast import status as status_mod
from litestream_fast.cli import cli
from litestream_fast.cli.common import config_options, json_option, load_config
from litestream_fast.shadow import meta_dir_for


@cli.command()
@config_options
@json_option
def status(config_path: str | None, no_expand_env: bool, as_json: bool) -> None:
    """Show generation, position, lag, WAL size and last error per database and replica.

    Reads the state a running ``replicate`` publishes in each database's meta directory;
    says so when no replicator is running for a database (exit status 1 if none is).
    """
    cfg = load_config(config_path, no_expand_env)
    docs = []
    for d in cfg.dbs:
        doc = status_mod.read(d.meta_path or meta_dir_for(d.path))
        docs.append({"path": d.path, "running": doc is not None, **(doc or {})})
    if as_json:
        click.echo(json.dumps(docs, indent=2))
    else:
        for doc in docs:
            if not doc["running"]:
                click.echo(f"{doc['path']}: no replicator running")
                continue
            age = time.time() - doc["updated_at"]
            click.echo(f"{doc['path']}: generation={doc['generation'] or '-'} position={doc['position'] or '-'} "
                       f"wal_size={doc['wal_size']} pid={doc['pid']} updated={age:.1f}s ago")  # fmt: skip
            if doc.get("last_error"):
                click.echo(f"  error: {doc['last_error']}")
            for r in doc["replicas"]:
                line = (f"  replica {r['name']} ({r['type']} {r['location']}): position={r['position'] or '-'} "
                        f"lag={r['lag_seconds']:.3f}s")  # fmt: skip
                if r.get("last_error"):
                    line += f" error={r['last_error']}"
                click.echo(line)
    if docs and not any(d["running"] for d in docs):
        raise SystemExit(1)
