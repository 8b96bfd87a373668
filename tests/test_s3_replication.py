"""Replication to a real S3 server (SeaweedFS on 127.0.0.1): our replicator and restore,
real Litestream 0.3.13 restoring ours and we restoring its, faults through the fault proxy,
and request economy (an idle database makes no requests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from faultproxy import FaultProxy
from ledger_writer import check_prefix
from s3server import ACCESS_KEY, REGION, SECRET_KEY, make_client
from support import connect, content_hash, integrity_ok, litestream_bin, row_count

from litestream_fast.db import DB
from litestream_fast.replica import Replica
from litestream_fast.restore import plan_restore, restore


def ls_config(tmp_path, db: str, bucket, prefix: str, endpoint: str | None = None) -> str:
    """A litestream.yml both tools read: S3 on SeaweedFS, path style, explicit region."""
    cfg = tmp_path / f"ls-{prefix.strip('/').replace('/', '-')}.yml"
    cfg.write_text(
        f"dbs:\n  - path: {db}\n    monitor-interval: 100ms\n    replicas:\n"
        f"      - type: s3\n        bucket: {bucket.name}\n        path: {bucket.prefix}{prefix}\n"
        f"        endpoint: {endpoint or bucket.endpoint}\n        region: {REGION}\n"
        f"        force-path-style: true\n        access-key-id: {ACCESS_KEY}\n"
        f"        secret-access-key: {SECRET_KEY}\n        sync-interval: 100ms\n"
    )
    return str(cfg)


def our_restore(client, out: str) -> None:
    restore(plan_restore({"s3": client}), out)


def insert(app, n, size=300):
    for _ in range(n):
        app.execute("INSERT INTO t (x) VALUES (randomblob(?))", (size,))


def test_replicate_to_s3_and_restore(tmp_path, s3_bucket):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(path, checkpoint_interval=0)
    client = make_client(s3_bucket)
    r = Replica(db, client, name="s3")
    try:
        insert(app, 100)
        r.sync_once()
        db.checkpoint("PASSIVE")
        insert(app, 100)
        pos = r.sync_once()
        assert pos.index == 1
        out = str(tmp_path / "out.db")
        our_restore(client, out)
        assert integrity_ok(out) and content_hash(out) == content_hash(path)
        keys = s3_bucket.keys("db/")
        assert f"generations/{pos.generation}/snapshots/00000000.snapshot.lz4" in [
            k[3:] for k in keys
        ]
    finally:
        db.close()
        app.close()


def test_idle_database_makes_no_requests(tmp_path, s3_bucket):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(path, checkpoint_interval=0)
    client = make_client(s3_bucket)
    r = Replica(db, client, name="s3")
    try:
        insert(app, 10)
        r.sync_once()
        before = dict(client.op_counts)
        for _ in range(20):  # twenty idle sync ticks
            r.sync_once()
        assert client.op_counts == before
        insert(app, 1)
        r.sync_once()
        assert client.op_counts["PUT"] == before["PUT"] + 1  # one segment, no LIST
        assert client.op_counts["LIST"] == before["LIST"]
    finally:
        db.close()
        app.close()


def test_real_litestream_restores_our_s3_replica_and_we_restore_its(tmp_path, s3_bucket):
    # We replicate (CLI, same config file Litestream reads); Litestream restores.
    path = str(tmp_path / "ours.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    insert(app, 50)
    cfg = ls_config(tmp_path, path, s3_bucket, "ours")
    p = subprocess.Popen([sys.executable, "-m", "litestream_fast", "replicate", "-config", cfg],
                         stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1.5)
    insert(app, 50)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    out = str(tmp_path / "ls-out.db")
    subprocess.run(
        [litestream_bin(), "restore", "-config", cfg, "-o", out, path],
        check=True,
        capture_output=True,
    )
    assert integrity_ok(out) and content_hash(out) == content_hash(path)
    app.close()

    # Litestream replicates; we restore.
    path2 = str(tmp_path / "theirs.db")
    app2 = connect(path2)
    app2.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    insert(app2, 50)
    cfg2 = ls_config(tmp_path, path2, s3_bucket, "theirs")
    p = subprocess.Popen([litestream_bin(), "replicate", "-config", cfg2], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(2.0)
    insert(app2, 50)
    time.sleep(2.5)
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    out2 = str(tmp_path / "our-out.db")
    r = subprocess.run([sys.executable, "-m", "litestream_fast", "restore", "-config", cfg2, "-o", out2, path2],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert integrity_ok(out2) and content_hash(out2) == content_hash(path2)
    app2.close()


def test_replication_survives_failing_store_then_catches_up(tmp_path, s3_bucket):
    """30% of requests fail (5xx / SlowDown / dropped bodies) for a while, then the store
    recovers: the restore holds every commit made before recovery, with no gap."""
    db_path = str(tmp_path / "app.db")
    with FaultProxy(
        int(s3_bucket.endpoint.rsplit(":", 1)[1]), seed=7, error_rate=0.2,
        drop_request_rate=0.05, drop_response_rate=0.05, max_faults=10_000, lifetime=120,
    ) as proxy:  # fmt: skip
        cfg = ls_config(tmp_path, db_path, s3_bucket, "faulty", endpoint=proxy.endpoint)
        writer = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "ledger_writer.py"),
                                   db_path, "--rate", "200", "--size", "200"], stdout=subprocess.PIPE)  # fmt: skip
        time.sleep(0.5)
        p = subprocess.Popen([sys.executable, "-m", "litestream_fast", "replicate", "-config", cfg],
                             stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(6)  # replicate through the faults
            proxy.configure(error_rate=0.0, drop_request_rate=0.0, drop_response_rate=0.0)
            writer.send_signal(signal.SIGTERM)
            last = int(writer.communicate(timeout=30)[0])
            time.sleep(4)  # recovery: backoff (max a few seconds) + one sync interval
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
        assert proxy.stats["faults"] > 10
    out = str(tmp_path / "out.db")
    client = make_client(s3_bucket, prefix="faulty")
    our_restore(client, out)
    assert check_prefix(out, 200) == last


def test_restore_through_dropped_connections(tmp_path, s3_bucket):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(path, checkpoint_interval=0)
    r = Replica(db, make_client(s3_bucket), name="s3")
    try:
        for _i in range(3):
            with app:
                for _j in range(200):
                    app.execute("INSERT INTO t (x) VALUES (randomblob(4000))")  # incompressible
            r.sync_once()
            db.checkpoint("PASSIVE")
        r.sync_once()
    finally:
        db.close()
    port = int(s3_bucket.endpoint.rsplit(":", 1)[1])
    with FaultProxy(
        port, seed=3, drop_response_rate=1.0, methods=("GET",), min_drop_body=1000, max_faults=3
    ) as proxy:
        out = str(tmp_path / "out.db")
        our_restore(make_client(s3_bucket, endpoint=proxy.endpoint), out)
        assert proxy.stats["drop_response"] > 0
    assert integrity_ok(out) and content_hash(out) == content_hash(path)
    assert row_count(out) == 600
    app.close()
