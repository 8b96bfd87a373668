"""Snapshots on an interval and retention (Litestream v0.3 semantics) on a file replica.

Object ages are set with os.utime on the replica's files: the file client's object time is
the file's mtime, exactly what retention and point-in-time restore read.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from support import connect, content_hash, integrity_ok, litestream_bin

from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.db import DB
from litestream_fast.replica import Replica

DAY = 24 * 3600.0


def age_all(replica_dir: str, seconds: float) -> None:
    """Make every object of the replica ``seconds`` older."""
    for root, _dirs, files in os.walk(replica_dir):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture
def env(tmp_path):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(path, checkpoint_interval=0)
    replica_dir = str(tmp_path / "replica")
    r = Replica(db, FileReplicaClient(replica_dir), retention=DAY)
    yield app, db, r, replica_dir, path
    db.close()
    app.close()


def insert(app, n):
    for _ in range(n):
        app.execute("INSERT INTO t (x) VALUES (randomblob(300))")


def restore_ok(replica_dir, source, out):
    subprocess.run(
        [litestream_bin(), "restore", "-o", out, f"file://{replica_dir}"],
        check=True,
        capture_output=True,
    )
    assert integrity_ok(out) and content_hash(out) == content_hash(source)


def test_retention_takes_snapshot_and_drops_old_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 20)
    r.sync_once()
    old_gen = db.generation
    # A second generation (the WAL truncated by someone while we were down).
    db.close()
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    insert(app, 20)
    r.sync_once()
    assert db.generation != old_gen
    db.checkpoint("PASSIVE")
    insert(app, 20)
    r.sync_once()
    age_all(replica_dir, 2 * DAY)
    deleted = r.enforce_retention()
    assert deleted > 0
    assert r.client.generations() == [db.generation]
    snaps = r.client.snapshots(db.generation)
    assert [s.index for s in snaps] == [1]  # a fresh snapshot replaced the expired one
    assert all(s.index >= 1 for s in r.client.wal_segments(db.generation))
    insert(app, 5)
    r.sync_once()
    restore_ok(replica_dir, path, str(tmp_path / "out.db"))


def test_retention_keeps_recent_snapshots_and_what_they_need(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 20)
    r.sync_once()
    for _ in range(2):
        db.checkpoint("PASSIVE")
        insert(app, 20)
        r.sync_once()
    age_all(replica_dir, 2 * DAY)
    r.snapshot()  # index 2, recent
    insert(app, 5)
    r.sync_once()
    r.enforce_retention()
    assert [s.index for s in r.client.snapshots(db.generation)] == [2]
    assert {s.index for s in r.client.wal_segments(db.generation)} == {2}
    restore_ok(replica_dir, path, str(tmp_path / "out.db"))


def test_retention_disabled_deletes_nothing(env):
    app, db, r, replica_dir, path = env
    r.retention = 0
    insert(app, 5)
    r.sync_once()
    age_all(replica_dir, 10 * DAY)
    assert r.enforce_retention() == 0
    assert r.client.snapshots(db.generation)


def test_snapshot_interval(env):
    app, db, r, replica_dir, path = env
    insert(app, 5)
    r.sync_once()
    assert not r.snapshot_due()  # interval off by default
    r.snapshot_interval = 3600
    assert not r.snapshot_due()
    assert r.snapshot_due(now=time.time() + 3601)
    r._periodic()  # not due yet: nothing happens
    assert len(r.client.snapshots(db.generation)) == 1
    r.last_snapshot_at -= 3601
    r._periodic()
    assert len(r.client.snapshots(db.generation)) == 2
