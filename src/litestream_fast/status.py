"""What a running replicator publishes about itself, and how ``status`` reads it.

Every database's state (generation, position, WAL size, each replica's position, lag and
last error) is written as ``<meta>/status.json`` about once a second (atomically), with
the process id. ``litestream-fast status`` reads those files, so it works without a
metrics address; a file whose process is gone or that stopped being refreshed is reported
as "not running" rather than trusted.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

STATUS_FILE = "status.json"
STALE_AFTER = 15.0


def db_state(managed) -> dict[str, Any]:
    """db_state describes one ManagedDB (a DB with its replicas) as plain JSON data."""
    db = managed.db
    pos = db.pos()
    return {
        "path": db.path,
        "generation": pos.generation or None,
        "position": str(pos) if pos.generation else None,
        "index": pos.index,
        "offset": pos.offset,
        "page_size": db.page_size,
        "db_size": _size(db.path),
        "wal_size": db.wal_size(),
        "open": db.is_open,
        "last_error": db.last_error,
        "sync_count": db.sync_count,
        "sync_error_count": db.sync_error_count,
        "checkpoint_count": dict(db.checkpoint_count),
        "new_generations": dict(db.generation_reasons),
        "replicas": [
            {
                "name": r.name,
                "type": r.client.type,
                "location": r.client.describe(),
                "generation": r.pos.generation or None,
                "position": str(r.pos) if r.pos.generation else None,
                "lag_seconds": round(r.lag(), 3),
                "last_sync_at": r.last_sync_at,
                "last_error": r.last_error,
            }
            for r in managed.replicas
        ],
    }


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def publish(meta_path: str, state: dict[str, Any]) -> None:
    """publish writes ``state`` to ``<meta>/status.json`` atomically (temp + rename)."""
    path = os.path.join(meta_path, STATUS_FILE)
    tmp = path + ".tmp"
    # json.dumps, not json.dump: only the one-shot form uses the C encoder.
    doc = json.dumps(dict(state, pid=os.getpid(), updated_at=time.time()))
    try:
        f = open(tmp, "w")
    except FileNotFoundError:
        os.makedirs(meta_path, exist_ok=True)
        f = open(tmp, "w")
    with f:
        f.write(doc)
    os.replace(tmp, path)


def read(meta_path: str) -> dict[str, Any] | None:
    """read returns the published state if a live replicator refreshed it recently."""
    try:
        with open(os.path.join(meta_path, STATUS_FILE)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if time.time() - float(doc.get("updated_at", 0)) > STALE_AFTER:
        return None
    try:
        os.kill(int(doc.get("pid", 0)), 0)
    except (OSError, ValueError):
        return None
    return doc
