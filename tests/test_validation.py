"""Validation: a replica restored at a known position matches the database there (CRC-64),
and a replica holding different data is reported as a mismatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support import connect

from litestream_fast import compression
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.db import DB
from litestream_fast.naming import snapshot_path
from litestream_fast.replica import Replica
from litestream_fast.validation import validate


@pytest.fixture
def env(tmp_path):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    for _ in range(200):
        app.execute("INSERT INTO t (x) VALUES (randomblob(300))")
    db = DB(path, checkpoint_interval=0)
    r = Replica(db, FileReplicaClient(str(tmp_path / "replica")))
    yield app, db, r, path, tmp_path
    db.close()
    app.close()


def test_validation_ok_across_indexes(env):
    app, db, r, path, tmp_path = env
    res = validate(r)
    assert res.ok and res.expected_crc64 == res.replica_crc64 and res.pos.index == 0
    db.checkpoint("PASSIVE")
    app.execute("UPDATE t SET x = randomblob(10) WHERE id % 7 = 0")
    res = validate(r)
    assert res.ok and res.pos.index == 1
    assert r.validations == {"ok": 2}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".litestream-validate")]


def test_validation_detects_a_replica_with_other_data(env):
    app, db, r, path, tmp_path = env
    r.sync_once()
    db.checkpoint("PASSIVE")
    app.execute("INSERT INTO t (x) VALUES (1)")
    r.sync_once()
    r.snapshot()  # snapshot at index 1
    # Replace it with a valid snapshot of a different database file (one page altered).
    data = bytearray(open(path, "rb").read())
    page = 4096 * 5 + 2000
    data[page] ^= 0xFF
    key = snapshot_path(r.client.root, db.generation, 1)
    with open(key, "wb") as f:
        f.write(compression.compress(bytes(data)))
    res = validate(r)
    assert not res.ok and res.detail == "database checksums differ"
    assert r.validations == {"error": 1}


def test_verify_command(env):
    app, db, r, path, tmp_path = env
    db.close()
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"dbs:\n  - path: {path}\n    replicas:\n      - path: {tmp_path / 'replica'}\n")
    p = subprocess.run([sys.executable, "-m", "litestream_fast", "verify", "-config", str(cfg), path, "-json"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["ok"] is True
    p = subprocess.run([sys.executable, "-m", "litestream_fast", "verify", f"file://{tmp_path / 'replica'}"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0 and p.stdout.startswith("ok:"), p.stderr


def test_validation_interval_runs_in_the_upload_loop(env):
    app, db, r, path, tmp_path = env
    r.sync_once()
    r._periodic()
    assert r.validations == {}  # off by default
    r.validation_interval = 60
    r._last_validation_at -= 61
    r._periodic()
    assert r.validations == {"ok": 1}
