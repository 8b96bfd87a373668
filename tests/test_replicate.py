"""Replication to a directory replica, checked by the real Litestream 0.3.13 restoring it.

Each test drives the library directly (``DB.sync``, ``Replica.sync_once``,
``DB.checkpoint``), so it controls exactly when frames are copied, checkpoints run and the
WAL restarts; the result is judged by real Litestream's restore plus integrity_check and a
content hash of the source.
"""

from __future__ import annotations

import os

import apsw
import pytest
from support import connect, content_hash, integrity_ok, ls_restore, row_count

from litestream_fast import shadow, wal
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.db import DB, FIRST_COPY_READ, check_sqlite_version
from litestream_fast.errors import SQLiteTooOld
from litestream_fast.replica import Replica


def assert_restores_to(replica_dir: str, source: str, tmp_path, name: str = "out.db") -> str:
    out = str(tmp_path / name)
    ls_restore(replica_dir, out)
    assert integrity_ok(out)
    assert content_hash(out) == content_hash(source)
    return out


@pytest.fixture
def env(tmp_path):
    """A WAL-mode database with a table, a DB, a file replica and its Replica."""
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(path, checkpoint_interval=0)
    replica_dir = str(tmp_path / "replica")
    r = Replica(db, FileReplicaClient(replica_dir))
    yield app, db, r, replica_dir, path
    db.close()
    app.close()


def insert(app: apsw.Connection, n: int, size: int = 200) -> None:
    for _ in range(n):
        app.execute("INSERT INTO t (x) VALUES (randomblob(?))", (size,))


def test_sqlite_version_gate():
    check_sqlite_version()  # the bundled SQLite is new enough
    with pytest.raises(SQLiteTooOld, match="3.51.2"):
        check_sqlite_version("3.51.2")


def test_replicate_and_real_litestream_restores(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 50)
    r.sync_once()
    insert(app, 150)
    pos = r.sync_once()
    assert pos == db.pos() and pos.offset > 32
    assert_restores_to(replica_dir, path, tmp_path)
    snaps = r.client.snapshots(pos.generation)
    assert [s.index for s in snaps] == [0]


def test_only_committed_transactions_are_shipped(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 10)
    r.sync_once()
    committed = content_hash(path)
    # A transaction in flight: its frames reach the WAL (cache spill) but no commit frame.
    app.execute("PRAGMA cache_size=10")
    app.execute("BEGIN")
    insert(app, 200, 2000)
    assert os.path.getsize(path + "-wal") > db.pos().offset
    before = db.pos()
    r.sync_once()
    assert db.pos() == before  # nothing uncommitted was copied
    assert_restores_to(replica_dir, path, tmp_path)  # the source reads the committed state
    app.execute("COMMIT")
    r.sync_once()
    assert content_hash(path) != committed
    assert_restores_to(replica_dir, path, tmp_path, "out2.db")


def test_own_connection_commits_with_synchronous_normal(env):
    """Our connection's only commits are one-frame ``_litestream_seq`` bumps (a read pin
    on a fresh frame, the first frame after a restart). Under SQLite's default
    synchronous=FULL each of them fsynced the whole WAL, i.e. every frame an application
    on synchronous=NORMAL had left unsynced, while holding the WAL write lock: an
    unthrottled writer waited 100-330 ms on such bumps. NORMAL keeps what matters:
    a checkpoint still syncs the WAL before it backfills and the database after."""
    app, db, r, replica_dir, path = env
    insert(app, 10)
    db.sync()
    assert db._conn is not None and db._ckpt is not None
    assert db._conn.execute("PRAGMA synchronous").fetchall()[0][0] == 1  # NORMAL
    assert db._ckpt.execute("PRAGMA synchronous").fetchall()[0][0] >= 1


def test_passive_checkpoint_restarts_wal_in_same_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    assert db.checkpoint("PASSIVE")
    insert(app, 100)
    pos = r.sync_once()
    assert pos.generation == gen and pos.index == 1
    assert_restores_to(replica_dir, path, tmp_path)
    segs = r.client.wal_segments(gen)
    assert {s.index for s in segs} == {0, 1}
    assert [s.offset for s in segs if s.index == 1][0] == 0


def test_sync_reads_little_of_a_stale_wal_tail(env, tmp_path, monkeypatch):
    """After a restart the WAL file keeps its old size: the frames past the new WAL are
    stale, and an idle sync must not read them all again every tick."""
    app, db, r, replica_dir, path = env
    insert(app, 600, 3000)  # a WAL of several MB
    r.sync_once()
    assert db.checkpoint("PASSIVE")
    insert(app, 1)  # the WAL restarts; the rest of the file is the old WAL's frames
    r.sync_once()
    stale = os.path.getsize(path + "-wal") - db.pos().offset
    assert stale > 4 * FIRST_COPY_READ
    read: list[int] = []
    real_preadv = os.preadv

    def counting_preadv(fd, buffers, offset):
        read.append(real_preadv(fd, buffers, offset))
        return read[-1]

    monkeypatch.setattr(os, "preadv", counting_preadv)
    for _ in range(3):
        assert not db.sync().changed
    assert 0 < sum(read) <= 3 * FIRST_COPY_READ
    insert(app, 300, 3000)  # new frames past the first read are still all copied
    r.sync_once()
    assert_restores_to(replica_dir, path, tmp_path)


def test_repeated_checkpoints_continue_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    for _ in range(4):
        assert db.checkpoint("PASSIVE")
        insert(app, 10)
    pos = r.sync_once()
    assert pos.generation == gen and pos.index == 4
    assert_restores_to(replica_dir, path, tmp_path)


def test_clean_shadow_drops_uploaded_indexes_and_lists_only_when_that_changes(
    env, tmp_path, monkeypatch
):
    """Shadow files every replica is past go, one behind is kept; the directory is listed
    once per step of the replicas' position, not on every monitor tick."""
    app, db, r, replica_dir, path = env
    listed = []
    real = shadow.shadow_indexes
    monkeypatch.setattr(shadow, "shadow_indexes", lambda *a: listed.append(a) or real(*a))
    insert(app, 50)
    r.sync_once()
    for _ in range(4):
        assert db.checkpoint("PASSIVE")
        insert(app, 10)
        r.sync_once()
        db.clean_shadow()
        db.clean_shadow()  # same positions: no listing
    assert db.index == 4
    assert real(db.meta_path, db.generation) == [3, 4]
    assert len(listed) == 4
    assert_restores_to(replica_dir, path, tmp_path)


def test_truncate_checkpoint_shrinks_wal_and_reseeds(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    assert db.checkpoint("TRUNCATE")
    assert os.path.getsize(path + "-wal") < 100 * 4096  # physically truncated, then one frame
    insert(app, 10)
    pos = r.sync_once()
    # TRUNCATE cannot prove no commit slipped in, so it re-seeds (a new generation).
    assert pos.generation != gen
    assert db.generation_reasons.get("truncate checkpoint") == 1
    assert_restores_to(replica_dir, path, tmp_path)


def test_checkpoint_policy_thresholds(tmp_path):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(
        path,
        checkpoint_interval=0,
        min_checkpoint_page_count=20,
        truncate_page_n=60,
        busy_timeout=0.2,
    )
    reader = connect(path)
    try:
        db.sync()
        assert db.checkpoint_if_needed() is None
        insert(app, 30, 3000)  # ~30 pages
        db.sync()
        assert db.checkpoint_if_needed() == "PASSIVE"
        assert db.index == 1
        gen = db.generation
        # Past truncate-page-n with a reader pinning the WAL: PASSIVE cannot reset it, so
        # TRUNCATE is tried; with the reader still there it gives up (busy) and nothing
        # is lost or re-seeded.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()
        insert(app, 80, 3000)
        db.sync()
        assert db.checkpoint_if_needed() == "TRUNCATE"
        assert db.checkpoint_count == {"PASSIVE": 2, "TRUNCATE": 1}
        assert db.generation == gen and db.index == 1
        reader.execute("COMMIT")
        # A stuck checkpoint is not retried on every tick (each takes the write barrier)...
        assert db.checkpoint_if_needed() is None
        # ...but after its backoff; the reader is gone, so PASSIVE now resets the WAL.
        db._stuck_retry_at = 0
        assert db.checkpoint_if_needed() == "PASSIVE"
        assert db.index == 2 and db.generation == gen
    finally:
        reader.close()
        db.close()
        app.close()


def test_external_truncate_while_down_starts_new_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    db.close()  # the replicator goes down
    insert(app, 100)
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    insert(app, 20)
    db2 = DB(path, checkpoint_interval=0)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        pos = r2.sync_once()
        assert pos.generation != gen
        assert db2.generation_reasons  # a reason was recorded (and logged)
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()


def test_external_truncate_while_running_is_detected(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 50)
    r.sync_once()
    gen = db.generation
    # Drop our read lock the hard way (as if it were lost) so the app can truncate.
    db._end_read()
    insert(app, 50)
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    insert(app, 5)
    db._begin_read()
    pos = r.sync_once()
    assert pos.generation != gen
    assert_restores_to(replica_dir, path, tmp_path)


def test_restart_after_clean_stop_keeps_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 50)
    r.sync_once()
    gen = db.generation
    db.close()
    insert(app, 50)  # written while we were down, same WAL
    db2 = DB(path, checkpoint_interval=0)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        pos = r2.sync_once()
        assert pos.generation == gen
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()


def test_vacuum_shrinks_and_restores(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 300, 1000)
    r.sync_once()
    app.execute("DELETE FROM t WHERE id % 3 != 0")
    app.execute("VACUUM")
    pos = r.sync_once()
    out = assert_restores_to(replica_dir, path, tmp_path)
    pc = apsw.Connection(out).execute("PRAGMA page_count").fetchall()[0][0]
    assert pc == app.execute("PRAGMA page_count").fetchall()[0][0]
    assert pos.generation == db.generation


@pytest.mark.parametrize("page_size", [512, 65536])
def test_page_sizes(tmp_path, page_size):
    path = str(tmp_path / "app.db")
    app = connect(path, page_size=page_size)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    db = DB(path, checkpoint_interval=0)
    replica_dir = str(tmp_path / "replica")
    r = Replica(db, FileReplicaClient(replica_dir))
    try:
        insert(app, 40, 3000)
        r.sync_once()
        assert db.page_size == page_size
        db.checkpoint("PASSIVE")
        insert(app, 40, 3000)
        r.sync_once()
        out = assert_restores_to(replica_dir, path, tmp_path)
        assert apsw.Connection(out).execute("PRAGMA page_size").fetchall()[0][0] == page_size
    finally:
        db.close()
        app.close()


def test_many_small_transactions(env, tmp_path):
    app, db, r, replica_dir, path = env
    db.min_checkpoint_page_count = 200
    for i in range(10_000):
        app.execute("INSERT INTO t (x) VALUES (?)", (b"%d" % i,))
        if i % 1000 == 999:
            r.sync_once()
            db.checkpoint_if_needed()
    r.sync_once()
    assert row_count(path) == 10_000
    assert db.index >= 1
    assert_restores_to(replica_dir, path, tmp_path)


def test_missing_database_is_waited_for_not_created(tmp_path):
    path = str(tmp_path / "later.db")
    db = DB(path)
    replica_dir = str(tmp_path / "replica")
    r = Replica(db, FileReplicaClient(replica_dir))
    try:
        assert db.sync().changed is False
        r.sync_once()
        assert not os.path.exists(path)
        assert not os.path.exists(replica_dir)
        app = connect(path)
        app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
        insert(app, 5)
        pos = r.sync_once()
        assert pos.generation
        assert_restores_to(replica_dir, path, tmp_path)
        app.close()
    finally:
        db.close()


def test_database_replaced_starts_new_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 20)
    r.sync_once()
    gen = db.generation
    app.close()
    other = str(tmp_path / "other.db")
    o = connect(other)
    o.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    insert(o, 7)
    o.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    o.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    os.replace(other, path)
    pos = r.sync_once()
    assert pos.generation != gen
    assert_restores_to(replica_dir, path, tmp_path)
    assert row_count(str(tmp_path / "out.db")) == 7


def test_database_deleted_uploads_nothing_and_keeps_history(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 20)
    r.sync_once()
    gen = db.generation
    app.close()
    before = sorted(os.listdir(os.path.join(replica_dir, "generations", gen, "wal")))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    r.sync_once()
    r.sync_once()
    assert db.last_error and "deleted" in db.last_error
    assert not os.path.exists(path)
    assert os.listdir(os.path.join(replica_dir, "generations")) == [gen]
    assert sorted(os.listdir(os.path.join(replica_dir, "generations", gen, "wal"))) == before


def test_shadow_wal_layout_matches_litestream(env):
    app, db, r, replica_dir, path = env
    insert(app, 5)
    r.sync_once()
    meta = os.path.join(os.path.dirname(path), ".app.db-litestream")
    with open(os.path.join(meta, "generation")) as f:
        assert f.read() == db.generation + "\n"
    shadow0 = os.path.join(meta, "generations", db.generation, "wal", "00000000.wal")
    data = open(shadow0, "rb").read()
    hdr = wal.WalHeader.parse(data)
    r2 = wal.scan(data, hdr, 32)
    assert r2.commit_end == len(data) == db.pos().offset


def test_wal_restart_while_down_continues_when_nothing_was_lost(env, tmp_path):
    """The app checkpoints and restarts the WAL once while we are down, without
    overwriting frames we had not copied: we continue the generation at the next index."""
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    db.close()
    insert(app, 3)  # not yet copied, still in the old WAL
    app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    insert(app, 1)  # restarts the WAL: overwrites frame 1 only
    db2 = DB(path, checkpoint_interval=0)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        pos = r2.sync_once()
        assert pos.generation == gen and pos.index == 1
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()


def test_two_wal_restarts_while_down_start_new_generation(env, tmp_path):
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    db.close()
    for _ in range(2):
        insert(app, 3)
        app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    insert(app, 1)
    db2 = DB(path, checkpoint_interval=0)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        pos = r2.sync_once()
        assert pos.generation != gen
        assert "wal restarted more than once between syncs" in db2.generation_reasons
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()


def _restart_with_uncopied_tail(env) -> str:
    """Replicate, stop, then let the app commit a tail we have not copied and restart the
    WAL once; returns the generation. The tail changes early pages that later commits
    (appends) do not write again, so losing it shows in the restored content."""
    app, db, r, _replica_dir, _path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    db.close()
    app.execute("UPDATE t SET x = randomblob(200) WHERE id <= 10")
    app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    insert(app, 1)  # restarts the WAL
    return gen


def test_wal_restart_while_down_then_old_tail_overwritten_is_never_a_silent_gap(
    env, tmp_path, monkeypatch
):
    """Found by the kill -9 test: the WAL restarted once while we were down, and the app's
    new WAL grew over the old WAL's uncopied tail right after we had seen the restart and
    before we copied that tail. The tail is lost; continuing the generation would leave a
    silent gap, so a new generation must start (and the replica must still restore)."""
    app, db, r, replica_dir, path = env
    gen = _restart_with_uncopied_tail(env)
    db2 = DB(path, checkpoint_interval=0)
    verify = DB._verify
    fired = []

    def verify_then_app_writes(self):
        result = verify(self)
        if result[1] is not None and not fired:
            fired.append(True)
            insert(app, 150)  # the new WAL now covers where the old tail was
        return result

    monkeypatch.setattr(DB, "_verify", verify_then_app_writes)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        pos = r2.sync_once()
        assert fired
        assert pos.generation != gen
        assert "wal overwritten by another process" in db2.generation_reasons
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()


@pytest.mark.parametrize("overwrite", [False, True])
def test_wal_restart_seen_while_a_writer_holds_the_lock(env, tmp_path, monkeypatch, overwrite):
    """Without the write lock (a writer keeps it past the busy timeout) the old tail is
    copied anyway and then checked: intact, the generation goes on; reached by the new
    WAL, a new generation starts."""
    app, db, r, replica_dir, path = env
    gen = _restart_with_uncopied_tail(env)
    holder = connect(path)
    db2 = DB(path, checkpoint_interval=0, busy_timeout=0.05)
    verify = DB._verify

    def verify_then_lock(self):
        result = verify(self)
        if result[1] is not None and holder.get_autocommit():
            if overwrite:
                insert(app, 150)
            holder.execute("BEGIN IMMEDIATE")
        return result

    monkeypatch.setattr(DB, "_verify", verify_then_lock)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        pos = r2.sync_once()
        assert not holder.get_autocommit()  # the lock was held through the sync
        holder.execute("ROLLBACK")
        if overwrite:
            assert pos.generation != gen
            assert "wal overwritten by another process" in db2.generation_reasons
        else:
            assert (pos.generation, pos.index) == (gen, 1)
        r2.sync_once()
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()
        holder.close()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_in_place(path: str, data: bytes) -> None:
    """Overwrite a file's content keeping its inode (a crash does not replace files)."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))


def test_shadow_tail_lost_in_a_crash_is_copied_again_from_the_wal(env, tmp_path):
    """The shadow WAL is not fsynced: a machine crash can cut its tail after the tail was
    uploaded. When the application's WAL still holds those frames, they are copied again
    (the same bytes) and the generation goes on."""
    app, db, r, replica_dir, path = env
    insert(app, 50)
    mid = r.sync_once().offset
    insert(app, 50)
    end = r.sync_once()
    gen = db.generation
    spath = db.shadow_wal_path(end.index)
    db.close()
    os.truncate(spath, mid)  # what reached the disk before the crash
    db2 = DB(path, checkpoint_interval=0)
    r2 = Replica(db2, FileReplicaClient(replica_dir))
    try:
        insert(app, 5)
        pos = r2.sync_once()
        assert pos.generation == gen and pos.offset > end.offset
        assert not db2.generation_reasons
        assert_restores_to(replica_dir, path, tmp_path)
    finally:
        db2.close()


@pytest.mark.parametrize("new_rows", [2, 200])
def test_replica_ahead_of_a_crashed_shadow_and_wal_starts_new_generation(env, tmp_path, new_rows):
    """A machine crash cut both the shadow WAL and the application's WAL (synchronous=
    NORMAL) back to before the last upload, and the application then wrote something
    else. The replica holds a history the database no longer has: whether the new WAL is
    still short of the replica's position (2 rows) or already past it with different
    frames (200 rows), the replicator starts a new generation, never extends the old one."""
    app, db, r, replica_dir, path = env
    insert(app, 50)
    mid = r.sync_once()
    saved_db, saved_wal = _read(path), _read(path + "-wal")
    insert(app, 50)
    end = r.sync_once()
    spath = db.shadow_wal_path(end.index)
    db.close()
    app.close()  # checkpoints and deletes the WAL; the crash image replaces both below
    _write_in_place(path, saved_db)
    with open(path + "-wal", "wb") as f:
        f.write(saved_wal)
    for extra in ("-shm",):
        if os.path.exists(path + extra):
            os.unlink(path + extra)
    os.truncate(spath, mid.offset)
    app2 = connect(path)
    try:
        assert row_count(path) == 50
        app2.execute("INSERT INTO t (x) VALUES (randomblob(300))")
        insert(app2, new_rows - 1, 300)
        db2 = DB(path, checkpoint_interval=0)
        r2 = Replica(db2, FileReplicaClient(replica_dir))
        try:
            pos = r2.sync_once()
            assert pos.generation != mid.generation
            assert "replica ahead of the shadow wal" in db2.generation_reasons
            assert pos == db2.pos()
            assert_restores_to(replica_dir, path, tmp_path)
        finally:
            db2.close()
    finally:
        app2.close()


@pytest.mark.parametrize("writer", ["commits-meanwhile", "holds-the-lock"])
def test_the_pin_after_a_checkpoint_survives_a_busy_writer(env, tmp_path, monkeypatch, writer):
    """After its checkpoint the replicator writes one frame and pins the new WAL with a
    read transaction. That write may wait on the application's commits (up to
    busy_timeout): the application must not restart the WAL twice meanwhile, so a reader
    is held while it waits. "commits-meanwhile": during the wait the application commits
    (a restart), checkpoints and commits again; with no reader held its checkpoint
    backfilled everything and the second commit restarted the WAL over the first's frames.
    "holds-the-lock": the write fails busy; the checkpoint still succeeds and the next sync
    pins. Either way the generation goes on and the replica restores exactly."""
    app, db, r, replica_dir, path = env
    insert(app, 100)
    r.sync_once()
    gen = db.generation
    run_checkpoint, bump = DB._run_checkpoint, DB._bump_seq
    armed: list[bool] = []
    app_ckpt: list[tuple] = []

    def run_checkpoint_then_arm(self, mode, retry):
        result = run_checkpoint(self, mode, retry)
        armed.append(True)
        return result

    def bump_after_the_application(self):
        if armed:
            armed.clear()
            if writer == "holds-the-lock":
                raise apsw.BusyError("database is locked")
            insert(app, 20)  # restarts the fully checkpointed WAL
            app_ckpt.append(app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0])
            insert(app, 5)  # restarts it again if that checkpoint backfilled everything
        return bump(self)

    monkeypatch.setattr(DB, "_run_checkpoint", run_checkpoint_then_arm)
    monkeypatch.setattr(DB, "_bump_seq", bump_after_the_application)
    assert db.checkpoint("PASSIVE")
    if writer == "commits-meanwhile":
        # (busy, frames in the WAL, frames backfilled): our reader held off its backfill
        assert app_ckpt and app_ckpt[0][2] < app_ckpt[0][1]
    insert(app, 30)
    pos = r.sync_once()
    r.sync_once()
    monkeypatch.undo()
    assert pos.generation == gen and list(db.generation_reasons) == ["no generation exists"]
    assert_restores_to(replica_dir, path, tmp_path)
