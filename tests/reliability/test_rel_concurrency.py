"""Readers and writers in other processes while the replicator runs.

Scenarios 7 (a long-lived reader pins the WAL while writers continue: the replicator never
takes a RESTART checkpoint, never blocks writers past their busy timeout, the WAL size is
visible while it grows, and the WAL drains once the reader ends) and 12 (several writer
processes plus readers with ``busy_timeout=5s``: no SQLITE_BUSY caused by the replicator;
the restored commit order is the ledger's).

Writers are ``rel_app.py`` processes sharing one ledger (``BEGIN IMMEDIATE``, max(id)+1,
so commit k is row k whoever commits it); they count every ``BusyError`` and their worst
commit latency. The replicator runs in-process (``Replicator``) with aggressive checkpoint
settings, so its write barrier and checkpoints meet the writers as often as possible.
The emergency TRUNCATE (``truncate-page-n``) is set low in the long-reader test: it is
the one checkpoint that waits for readers, and it does so for at most our own busy
timeout (1 s), which stays under the writers' 5 s. 30-minute durations of the scenarios
are soak-mode (``LITESTREAM_FAST_SOAK=1``) figures; CI runs seconds.
"""

from __future__ import annotations

import time

from relsupport import (
    caught_up,
    check_prefix,
    finish_app,
    make_db,
    max_id,
    processes,
    record,
    remove_db,
    restore_litestream,
    restore_ours,
    scaled,
    start_app,
    wait_for,
)

from litestream_fast import status
from litestream_fast.config import DBConfig, ReplicaConfig
from litestream_fast.scheduler import Replicator


def _replicator(db: str, replica: str, **db_keys) -> Replicator:
    cfg = DBConfig(path=db, monitor_interval=0.1, checkpoint_interval=0.3,
                   min_checkpoint_page_count=30,
                   replicas=[ReplicaConfig(type="file", path=replica, sync_interval=0.1)],
                   **db_keys)  # fmt: skip
    return Replicator.from_config([cfg])


def test_long_lived_reader(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    hold = scaled(5.0, 1800.0)
    rep = _replicator(db, replica, truncate_page_n=400)
    rep.start()
    m = rep.dbs[0]
    figures: dict = {}
    with processes() as procs:
        try:
            writer = start_app(db, "--rate", "150", "--size", "300", "--autocheckpoint", "0")
            procs.append(writer)
            assert wait_for(lambda: max_id(db) > 50 and m.replicas[0].pos.offset > 0)
            time.sleep(0.5)
            reader = start_app(db, "--mode", "hold", "--hold", str(hold))
            procs.append(reader)
            assert reader.stdout.readline().strip() == "HOLDING"
            gen, index = m.db.generation, m.db.index
            k0 = max_id(db)
            # Lock-free reads only: an emergency TRUNCATE holds the DB's lock for up to
            # our busy timeout while it waits for the reader.
            max_wal, t_end = 0, time.monotonic() + hold - 1.5
            while time.monotonic() < t_end:
                max_wal = max(max_wal, m.db.wal_size())
                # Pinned: the WAL cannot restart, so the position index stays put.
                assert (m.db.generation, m.db.index) == (gen, index), m.db.generation_reasons
                time.sleep(0.1)
            max_status_wal = status.db_state(m)["wal_size"]
            # What is committed still ships while the reader pins the WAL.
            assert caught_up(m)
            k = restore_ours(replica, str(tmp_path / "pinned.db"))
            assert k >= k0
            figures["held_s"] = round(finish_app(reader, timeout=hold + 30)["held"], 1)
            # The reader is gone: the WAL drains (restarts or is truncated).
            t0 = time.monotonic()
            assert wait_for(lambda: (m.db.generation, m.db.index) != (gen, index), 20)
            figures["drain_s"] = round(time.monotonic() - t0, 2)
            app = finish_app(writer)
        finally:
            rep.stop(timeout=10)
    assert app["busy"] == 0, app
    assert app["max_latency"] < 5.0
    ckpts = dict(m.db.checkpoint_count)
    assert "RESTART" not in ckpts
    assert max_status_wal > 400 * 4096  # the growing WAL is visible in status/metrics
    out = str(tmp_path / "final.db")
    assert restore_ours(replica, out) == app["last"]
    record("long_lived_reader", **figures, commits=app["last"], writer_busy=app["busy"],
           max_commit_latency_s=app["max_latency"], max_wal_mb=round(max_wal / 2**20, 1),
           our_checkpoints=ckpts, checkpoint_errors=dict(m.db.checkpoint_error_count),
           generations=dict(m.db.generation_reasons), restores=2)  # fmt: skip


def test_many_writers_and_readers(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    n_writers, n_readers = scaled(3, 8), scaled(4, 16)
    duration = scaled(6.0, 1800.0)
    rep = _replicator(db, replica)
    rep.start()
    m = rep.dbs[0]
    with processes() as procs:
        try:
            writers = [
                start_app(db, "--rate", "60", "--size", "200", "--seed", str(i + 1))
                for i in range(n_writers)
            ]
            readers = [
                start_app(
                    db, "--mode", "read", "--rate", "40", "--hold", "0.05", "--seed", str(100 + i)
                )  # fmt: skip
                for i in range(n_readers)
            ]
            procs += writers + readers
            restores, t_end = 0, time.monotonic() + duration
            while time.monotonic() < t_end:
                time.sleep(min(2.0, max(0.0, t_end - time.monotonic())))
                k0 = max_id(db)
                assert caught_up(m)
                out = str(tmp_path / f"mid{restores}.db")
                assert restore_ours(replica, out) >= k0
                remove_db(out)
                restores += 1
            w = [finish_app(p) for p in writers]
            rd = [finish_app(p) for p in readers]
            assert caught_up(m)
        finally:
            rep.stop(timeout=10)
    last = max(x["last"] for x in w)
    assert sum(x["commits"] for x in w) == last  # one shared ledger, no commit lost
    busy = sum(x["busy"] for x in w) + sum(x["busy"] for x in rd)
    assert busy == 0, (w, rd)
    assert sum(x["errors"] for x in rd) == 0  # no reader saw a hole in the ledger
    assert "RESTART" not in m.db.checkpoint_count
    out = str(tmp_path / "final.db")
    assert restore_ours(replica, out) == last
    assert restore_litestream(replica, str(tmp_path / "final-ls.db")) == last
    assert check_prefix(db) == last
    record("writers_and_readers", writers=n_writers, readers=n_readers, commits=last,
           reads=sum(x["reads"] for x in rd), busy=busy, restores=restores + 2,
           max_commit_latency_s=max(x["max_latency"] for x in w),
           our_checkpoints=dict(m.db.checkpoint_count),
           checkpoint_errors=dict(m.db.checkpoint_error_count))  # fmt: skip
