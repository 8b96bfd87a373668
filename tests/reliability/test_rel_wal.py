"""SQLite/WAL dynamics under replication: the application's own checkpoints, WAL restarts,
VACUUM, page sizes.

Scenarios: 1 (a burst of small transactions, then a clean stop drains everything), 2 (one
huge transaction: 1 GiB under ``LITESTREAM_FAST_SOAK=1`` only; CI runs 100 MiB in
``tests/test_replicate_process.py``), 3 (the application's PASSIVE checkpoint and a WAL
restart: no frame lost or duplicated, EXACT at every sampled commit), 4 (the
application's TRUNCATE while frames are unsynced), 5 (kill, 5k transactions and a TRUNCATE while down, restart: new generation),
6 (``wal_autocheckpoint`` off, and on), 8 (VACUUM and incremental_vacuum: same page count,
no stale pages past the new end), 9 (page size changed through VACUUM: new generation, the
restore has the new page size), 11 (page sizes 512, 4096 and 65536; the database past
1 GiB around the lock-byte page only under ``LITESTREAM_FAST_SOAK=1``: 1.1 GiB per page
size is too much for CI, and 4096 is covered by ``tests/test_scheduler.py``).

The application's checkpoints in all four modes run from a writer process while the
replicator runs and while it is down. While it runs, its read transaction keeps the WAL
from being reset past frames it has not copied: PASSIVE backfills up to it, and FULL,
RESTART and TRUNCATE wait for the application's own busy timeout and then report
busy=1 (as with Litestream, which holds the same read lock). While it is down they
succeed, and the restart detects what happened (one restart: same generation, next index;
more, or a truncation: a new generation and snapshot). The replicator itself never runs
a RESTART checkpoint (``DB.checkpoint_count`` has no RESTART key).
"""

from __future__ import annotations

import os
import random
import time
from datetime import datetime, timezone

import apsw
import pytest
from relsupport import (
    SOAK,
    Ledger,
    caught_up,
    check_prefix,
    finish_app,
    make_db,
    max_id,
    page_info,
    processes,
    record,
    remove_db,
    restore_litestream,
    restore_ours,
    scaled,
    start_app,
    wait_for,
)
from support import content_hash, integrity_ok

from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.config import DBConfig, ReplicaConfig
from litestream_fast.db import DB
from litestream_fast.replica import Replica
from litestream_fast.scheduler import Replicator


def _config(db: str, replica: str) -> DBConfig:
    return DBConfig(path=db, monitor_interval=0.1, checkpoint_interval=0.5,
                    min_checkpoint_page_count=50,
                    replicas=[ReplicaConfig(type="file", path=replica, sync_interval=0.1)])  # fmt: skip


@pytest.mark.parametrize("autocheckpoint", [1000, 0], ids=["autockpt-on", "autockpt-off"])
def test_app_checkpoints_all_modes_running_and_down(tmp_path, autocheckpoint):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    phase = scaled(1.2, 20.0)
    restores, ckpts, reasons, app_stats = 0, {}, {}, []
    with processes() as procs:
        writer = start_app(db, "--rate", "250", "--size", "150",
                           "--autocheckpoint", str(autocheckpoint), "--checkpoint-every", "40",
                           "--checkpoint-modes", "PASSIVE,FULL,RESTART,TRUNCATE",
                           "--checkpoint-busy-timeout", "200")  # fmt: skip
        procs.append(writer)
        assert wait_for(lambda: max_id(db) > 20)
        for run in range(2):
            rep = Replicator.from_config([_config(db, replica)])
            rep.start()
            m = rep.dbs[0]
            try:
                time.sleep(phase)
                k0 = max_id(db)
                assert caught_up(m)
                out = str(tmp_path / f"run{run}.db")
                k = restore_ours(replica, out)
                restores += 1
                assert k >= k0
                remove_db(out)
            finally:
                rep.stop(final_sync=False, timeout=10)
            for mode, n in m.db.checkpoint_count.items():
                ckpts[mode] = ckpts.get(mode, 0) + n
            for why, n in m.db.generation_reasons.items():
                reasons[why] = reasons.get(why, 0) + n
            # Down: the application keeps writing and checkpointing in every mode.
            time.sleep(phase)
        app_stats = finish_app(writer)
    last = app_stats["last"]
    assert app_stats["busy"] == 0, app_stats  # the writer never saw SQLITE_BUSY
    # A last run ships what was written while down.
    rep = Replicator.from_config([_config(db, replica)])
    rep.start()
    try:
        assert caught_up(rep.dbs[0])
    finally:
        rep.stop(timeout=10)
    for why, n in rep.dbs[0].db.generation_reasons.items():
        reasons[why] = reasons.get(why, 0) + n
    assert restore_ours(replica, str(tmp_path / "final.db")) == last
    assert restore_litestream(replica, str(tmp_path / "final-ls.db")) == last
    restores += 2
    assert "RESTART" not in ckpts
    record(f"app_checkpoints[autocheckpoint={autocheckpoint}]", commits=last, restores=restores,
           our_checkpoints=ckpts, generations=reasons,
           app_checkpoints=app_stats["checkpoints"], max_commit_latency=app_stats["max_latency"])  # fmt: skip


def test_wal_restarts_exact_at_every_commit(tmp_path):
    """WAL restarts by our checkpoint, by the application's PASSIVE checkpoint while we are
    down (one restart: same generation), and two restarts while down (new generation):
    point-in-time restores at every sampled commit are EXACT."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=120)
    points = []
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))

    def ship(n):
        app.commit(n)
        r.sync_once()
        time.sleep(0.03)  # object times come from a coarse clock: keep t clear of them
        points.append((app.k, datetime.now(timezone.utc), dbo.pos()))
        time.sleep(0.03)

    rounds = scaled(3, 20)
    for _ in range(rounds):
        ship(7)
        ship(9)
        assert dbo.checkpoint("PASSIVE")  # our checkpoint: next index, same generation
        ship(20)
        # Down: the application checkpoints fully and restarts the WAL once.
        gen = dbo.generation
        dbo.close()
        app.commit(11)  # never copied before the restart: must still be shipped
        assert app.checkpoint("PASSIVE")[0] == 0
        app.commit(1)  # this write restarts the WAL (salt-1 + 1), frames from offset 32
        dbo = DB(db, checkpoint_interval=0)
        r = Replica(dbo, FileReplicaClient(replica))
        r.sync_once()  # before the new WAL overwrites the frame we ended on
        assert dbo.generation == gen, dbo.generation_reasons  # one restart: continued
        ship(4)
    # Two restarts while down: the second one may hide frames, so a new generation.
    gen = dbo.generation
    dbo.close()
    for _ in range(2):
        app.commit(6)
        assert app.checkpoint("PASSIVE")[0] == 0
    app.commit(2)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    ship(3)
    assert dbo.generation != gen
    assert "wal restarted more than once between syncs" in dbo.generation_reasons or (
        "wal overwritten by another process" in dbo.generation_reasons
    ), dbo.generation_reasons
    ship(8)
    n = 0
    for k, t, _pos in points:
        out = str(tmp_path / f"pitr{n}.db")
        assert restore_ours(replica, out, timestamp=t) == k, f"point {n}"
        remove_db(out)
        n += 1
    assert restore_ours(replica, str(tmp_path / "latest.db")) == app.k
    assert restore_litestream(replica, str(tmp_path / "latest-ls.db")) == app.k
    dbo.close()
    app.close()
    record("wal_restarts_exact", points=len(points), restores=n + 2,
           generations=len(FileReplicaClient(replica).generations()))  # fmt: skip


@pytest.mark.parametrize("mode", ["TRUNCATE", "RESTART", "FULL"])
def test_app_checkpoint_with_unsynced_frames(tmp_path, mode):
    """Scenario 4: frames committed but not yet copied when the application checkpoints.
    Our read transaction keeps the WAL from being reset: the checkpoint reports busy, and
    the next sync ships everything with no gap."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=200)
    app.conn.set_busy_timeout(100)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    app.commit(20)
    r.sync_once()
    gen = dbo.generation
    app.commit(30)  # not synced yet
    t0 = time.monotonic()
    busy = app.checkpoint(mode)[0]
    waited = time.monotonic() - t0
    assert busy == 1  # could not reset the WAL past our read mark
    app.commit(5)
    r.sync_once()
    assert dbo.generation == gen  # no discontinuity, nothing lost
    assert restore_ours(replica, str(tmp_path / "out.db")) == app.k
    dbo.close()
    app.close()
    record(f"app_{mode}_with_unsynced_frames", busy=busy, app_wait_s=round(waited, 3))


def test_truncate_while_down_5k_transactions(tmp_path):
    """Scenario 5: the replicator is killed, the application commits 5,000 transactions and
    runs TRUNCATE; on restart the discontinuity is detected, a new snapshot is taken and
    the restore holds every commit."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=100, autocheckpoint=1000)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    app.commit(100)
    r.sync_once()
    gen = dbo.generation
    dbo._close_connections()  # like kill -9: no final sync, locks and reader gone
    dbo = None
    app.commit(scaled(5000, 50000))
    assert app.checkpoint("TRUNCATE")[0] == 0
    assert os.path.getsize(db + "-wal") == 0
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    r.sync_once()
    assert dbo.generation != gen
    assert dbo.generation_reasons == {"wal truncated by another process": 1}
    assert FileReplicaClient(replica).snapshots(dbo.generation)
    assert restore_ours(replica, str(tmp_path / "out.db")) == app.k
    assert restore_litestream(replica, str(tmp_path / "ls.db")) == app.k
    dbo.close()
    app.close()
    record("truncate_while_down", commits=app.k, reasons=dbo.generation_reasons)


def _logical(db: str) -> tuple[str, int, int]:
    ps, pc = page_info(db)
    return content_hash(db), ps, pc


def test_vacuum_and_incremental_vacuum(tmp_path):
    """Scenario 8: the file shrinks and many pages move; the restore has the same page
    count and content, and no stale page past its end."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db, auto_vacuum="INCREMENTAL")
    app = Ledger(db, size=300)
    app.conn.execute("CREATE TABLE junk (id INTEGER PRIMARY KEY, x BLOB)")
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    checks = []

    def check(label):
        r.sync_once()
        out = str(tmp_path / f"{label}.db")
        restore_ours(replica, out)
        want = _logical(db)
        got = _logical(out)
        assert got == want, label
        assert os.path.getsize(out) == got[1] * got[2], f"{label}: stale pages past the end"
        checks.append((label, want[2]))

    for i in range(scaled(300, 3000)):
        app.commit()
        app.conn.execute("INSERT INTO junk (x) VALUES (randomblob(?))", (1000 + i % 3000,))
    check("filled")
    app.conn.execute("DELETE FROM junk WHERE id % 3 != 0")
    app.commit(5)
    check("deleted")
    app.conn.execute("PRAGMA incremental_vacuum(200)").fetchall()
    app.commit(5)
    check("incremental")
    dbo.checkpoint("PASSIVE")
    app.conn.execute("PRAGMA incremental_vacuum").fetchall()
    check("incremental-all")
    app.conn.execute("DELETE FROM junk WHERE id % 2 = 0")
    app.conn.execute("VACUUM")
    app.commit(5)
    check("vacuum")
    dbo.checkpoint("PASSIVE")
    app.conn.execute("DROP TABLE junk")
    app.conn.execute("VACUUM")
    check("vacuum-drop")
    ls = str(tmp_path / "ls.db")
    assert restore_litestream(replica, ls) == app.k
    assert _logical(ls) == _logical(db)
    dbo.close()
    app.close()
    record(
        "vacuum", page_counts=[f"{label}:{pc}" for label, pc in checks], restores=len(checks) + 1
    )


def test_page_size_change_through_vacuum_while_down(tmp_path):
    """Scenario 9: journal_mode=DELETE, page_size=8192, VACUUM, back to WAL while the
    replicator is down; on restart a new generation, and the restore has 8192-byte pages.
    While it runs, the application cannot leave WAL mode at all (our connections are
    open), and replication goes on unaffected."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=250)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    app.commit(300)
    r.sync_once()
    gen = dbo.generation
    # While running: leaving WAL mode is refused.
    c = apsw.Connection(db)
    c.set_busy_timeout(200)
    try:
        mode = c.execute("PRAGMA journal_mode=DELETE").fetchall()[0][0]
    except apsw.BusyError:
        mode = "busy"
    c.close()
    assert mode in ("wal", "busy")
    app.commit(10)
    r.sync_once()
    assert dbo.generation == gen
    # Down.
    dbo.close()
    app.close()
    c = apsw.Connection(db)
    assert c.execute("PRAGMA journal_mode=DELETE").fetchall()[0][0] == "delete"
    c.execute("PRAGMA page_size=8192")
    c.execute("VACUUM")
    assert c.execute("PRAGMA journal_mode=WAL").fetchall()[0][0] == "wal"
    c.close()
    app = Ledger(db, size=250)
    app.commit(50)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    r.sync_once()
    app.commit(20)
    r.sync_once()
    assert dbo.generation != gen and dbo.page_size == 8192
    out, ls = str(tmp_path / "out.db"), str(tmp_path / "ls.db")
    assert restore_ours(replica, out) == app.k
    assert page_info(out)[0] == 8192
    assert restore_litestream(replica, ls) == app.k and page_info(ls)[0] == 8192
    # The old generation still restores, with its 4096-byte pages.
    old = str(tmp_path / "old.db")
    assert restore_ours(replica, old, generation=gen) == 310 and page_info(old)[0] == 4096
    dbo.close()
    app.close()
    record("page_size_change", old_page_size=4096, new_page_size=8192,
           reasons=dbo.generation_reasons, restores=3)  # fmt: skip


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_page_sizes(tmp_path, page_size):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db, page_size=page_size)
    app = Ledger(db, size=700)
    dbo = DB(db, checkpoint_interval=0, min_checkpoint_page_count=10)
    r = Replica(dbo, FileReplicaClient(replica))
    points = []
    for i in range(scaled(12, 60)):
        app.commit(15)
        r.sync_once()
        time.sleep(0.03)
        points.append((app.k, datetime.now(timezone.utc)))
        time.sleep(0.03)
        if i % 3 == 2:
            dbo.checkpoint("PASSIVE")
        if i == 7:
            app.conn.execute("DELETE FROM ledger WHERE id > ?", (app.k - 30,))
            app.conn.execute("VACUUM")
            app.k -= 30
            app.commit(10)
    r.sync_once()
    assert page_info(db)[0] == page_size
    for j, (k, t) in enumerate(points[::4]):
        out = str(tmp_path / f"p{j}.db")
        restore_ours(replica, out, timestamp=t)
        # After the VACUUM the ledger was cut back and regrown, so compare the content.
        assert check_prefix(out) == k
        remove_db(out)
    out, ls = str(tmp_path / "out.db"), str(tmp_path / "ls.db")
    assert restore_ours(replica, out) == app.k and page_info(out)[0] == page_size
    assert restore_litestream(replica, ls) == app.k and page_info(ls)[0] == page_size
    assert integrity_ok(ls)
    dbo.close()
    app.close()
    record(f"page_size[{page_size}]", commits=app.k, indexes=dbo.index + 1,
           restores=len(points[::4]) + 2)  # fmt: skip


@pytest.mark.skipif(not SOAK, reason="1.1 GiB databases: only with LITESTREAM_FAST_SOAK=1")
@pytest.mark.parametrize("page_size", [512, 65536])
def test_lock_byte_page_soak(tmp_path, page_size):
    """Scenario 11 at full size: writes around the lock-byte page (byte 0x40000000)."""
    db, replica = str(tmp_path / "big.db"), str(tmp_path / "replica")
    c = apsw.Connection(db)
    c.execute(f"PRAGMA page_size={page_size}")
    c.execute("PRAGMA journal_mode=OFF").fetchall()
    c.execute("PRAGMA synchronous=OFF")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    with c:
        for _ in range(1100):
            c.execute("INSERT INTO t (x) VALUES (zeroblob(1000000))")
    assert c.execute("PRAGMA journal_mode=WAL").fetchall()[0][0] == "wal"
    c.close()
    app = Ledger(db, size=100)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    r.sync_once()
    with app.conn:
        for rid in range(1060, 1100, 3):
            app.conn.execute("UPDATE t SET x = randomblob(1000000) WHERE id = ?", (rid,))
    app.commit(10)
    r.sync_once()
    dbo.checkpoint("PASSIVE")
    app.commit(10)
    r.sync_once()
    out = str(tmp_path / "out.db")
    restore_ours(replica, out)
    assert content_hash(out) == content_hash(db)
    dbo.close()
    app.close()


def test_burst_of_small_transactions_clean_stop(tmp_path):
    """Scenario 1: single-row autocommit transactions as fast as possible with a 1 s sync
    interval, then a clean stop: the final sync drains everything (k = last commit). The
    object count is one segment per sync per WAL index (v0.3 has no compaction; retention
    bounds it over time), never one per transaction."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    n = scaled(3000, 20000)
    cfg = DBConfig(path=db, monitor_interval=1.0, checkpoint_interval=60.0,
                   replicas=[ReplicaConfig(type="file", path=replica, sync_interval=1.0)])  # fmt: skip
    rep = Replicator.from_config([cfg])
    rep.start()
    app = Ledger(db, size=60)
    t0 = time.monotonic()
    try:
        for _ in range(n):
            app.commit()
        elapsed = time.monotonic() - t0
    finally:
        rep.stop(final_sync=True, timeout=60)  # clean stop: drain
    objects = len(FileReplicaClient(replica).wal_segments(rep.dbs[0].db.generation))
    assert restore_ours(replica, str(tmp_path / "out.db")) == app.k == n
    assert objects <= elapsed / 1.0 * 4 + 8  # per sync (and index), not per transaction
    app.close()
    record("burst_small_txns", commits=n, txn_per_s=round(n / elapsed), segments=objects,
           restores=1)  # fmt: skip


@pytest.mark.skipif(not SOAK, reason="a 1 GiB transaction: only with LITESTREAM_FAST_SOAK=1 "
                    "(CI: tests/test_replicate_process.py::test_large_transaction_bounded_memory, 100 MiB)")  # fmt: skip
def test_huge_transaction_soak(tmp_path):
    """Scenario 2 at size: one 1 GiB transaction; the replicator's RSS stays bounded while
    it copies and uploads it, and a restore after a kill -9 at a random moment is the
    state before or after the transaction, never in between."""
    from relsupport import kill9, start_replicator, write_config

    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=100)
    app.commit(10)
    cfg = write_config(str(tmp_path / "ls.yml"), db, replica, {"monitor_interval": "100ms"})
    p = start_replicator(cfg)
    peak = 0
    try:
        time.sleep(3)
        with app.conn:
            app.conn.execute("CREATE TABLE big (x BLOB)")
            for _ in range(1024):
                app.conn.execute("INSERT INTO big VALUES (randomblob(1048576))")
        app.commit(1)
        deadline = time.monotonic() + random.uniform(5, 60)
        while time.monotonic() < deadline:
            with open(f"/proc/{p.pid}/status") as f:
                peak = max(peak, *(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")))
            time.sleep(0.1)
    finally:
        kill9(p)
    out = str(tmp_path / "out.db")
    k = restore_ours(replica, out)
    c = apsw.Connection(out)
    big = c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'big'").fetchall()[0][0]
    rows = c.execute("SELECT count(*) FROM big").fetchall()[0][0] if big else 0
    c.close()
    assert k in (10, 11) and rows in (0, 1024) and (k == 10 or rows == 1024)
    assert peak < 256 * 1024  # KiB
    app.close()
    record("huge_transaction", peak_rss_mb=round(peak / 1024), restored_k=k, big_rows=rows)
