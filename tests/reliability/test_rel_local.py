"""Local resources and identity: disk full, the database deleted, two databases to one
replica.

Scenarios 32 (disk full where the replicator keeps its own state, the shadow WAL: the
error is visible, the application keeps writing, nothing local is corrupted, and
replication recovers by itself when space returns), 29 (the database deleted while
replicating: reported, nothing empty uploaded, no remote history deleted; a database
created again at the path is a new generation) and 28 (two databases misconfigured to
the same replica location).

Disk full is real when we may mount a small tmpfs as the meta directory (root); without
that permission the tmpfs test is skipped, and the same checks run with ENOSPC injected
into the shadow-WAL writes in-process (that variant always runs).

Scenario 28 across processes or hosts cannot be caught with the v0.3 format: its objects
carry no database identity (LTX-era formats add one). One configuration naming the same
location for two databases is refused before anything starts.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import subprocess
import sys
import time

import pytest
from relsupport import (
    Ledger,
    caught_up,
    finish_app,
    make_db,
    max_id,
    processes,
    record,
    remove_db,
    replica_objects,
    restore_ours,
    scaled,
    start_app,
    wait_for,
)

from litestream_fast import db as dbmod
from litestream_fast import shadow as shadowmod
from litestream_fast.config import DBConfig, ReplicaConfig
from litestream_fast.scheduler import Replicator


def _replicator(db: str, replica: str, meta: str | None = None) -> Replicator:
    cfg = DBConfig(path=db, meta_path=meta, monitor_interval=0.1, checkpoint_interval=0.3,
                   min_checkpoint_page_count=40,
                   replicas=[ReplicaConfig(type="file", path=replica, sync_interval=0.1)])  # fmt: skip
    return Replicator.from_config([cfg])


def _disk_full_run(tmp_path, fill, free, label, caplog):
    """Replicate while the meta directory's disk fills up, then frees up again."""
    db, replica, meta = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "meta")
    os.makedirs(meta, exist_ok=True)
    make_db(db)
    rep = _replicator(db, replica, meta)
    m = rep.dbs[0]
    fig: dict = {}
    with processes() as procs, caplog.at_level(logging.ERROR, logger="litestream_fast"):
        writer = start_app(db, "--rate", "120", "--size", "500", "--autocheckpoint", "0")
        procs.append(writer)
        rep.start()
        try:
            assert wait_for(lambda: max_id(db) > 30)
            k_full = max_id(db)
            assert caught_up(m)
            fill(meta)
            t_full = time.monotonic()
            # Out of space: the error is visible, the application keeps writing.
            assert wait_for(lambda: m.db.sync_error_count > 0 and m.db.last_error, 10)
            assert "No space left" in (m.db.last_error or ""), m.db.last_error
            k_during = max_id(db)
            time.sleep(1.5)
            assert max_id(db) > k_during + 50  # writes went on
            # Visible: the replica's last error and health (/healthz answers 503). Its lag
            # stays 0: it is measured against the shadow WAL, which cannot grow now.
            assert "No space left" in (m.replicas[0].last_error or "")
            assert not rep.healthy_and_synced()
            fig["lag_while_full"] = round(m.replicas[0].lag(), 1)
            out = str(tmp_path / "during.db")
            assert restore_ours(replica, out) >= k_full  # what shipped before stays good
            remove_db(out)
            fig["errors_while_full"] = m.db.sync_error_count
            # Space returns: replication catches up by itself.
            free(meta)
            t_free = time.monotonic()
            assert caught_up(m, 60)
            fig["recovery_s"] = round(time.monotonic() - t_free, 2)
            fig["outage_s"] = round(t_free - t_full, 2)
            app = finish_app(writer)
            assert caught_up(m)
        finally:
            rep.stop(timeout=10)
        assert any("No space left" in r.getMessage() for r in caplog.records)
    assert app["busy"] == 0
    assert restore_ours(replica, str(tmp_path / "final.db")) == app["last"]
    record(f"disk_full[{label}]", commits=app["last"], writer_busy=app["busy"],
           max_commit_latency_s=app["max_latency"], generations=dict(m.db.generation_reasons),
           restores=2, **fig)  # fmt: skip


def test_disk_full_on_tmpfs_meta_dir(tmp_path, caplog):
    meta = tmp_path / "meta"
    meta.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(meta)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); see the injected test")
    balloon = str(meta / "balloon")

    def fill(_meta):
        fd = os.open(balloon, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
        finally:
            os.close(fd)

    def free(_meta):
        os.unlink(balloon)

    try:
        _disk_full_run(tmp_path, fill, free, "tmpfs", caplog)
    finally:
        subprocess.run(["umount", "-l", str(meta)], check=False)


def test_disk_full_injected(tmp_path, caplog, monkeypatch):
    """ENOSPC injected into every file write the DB engine and the shadow module make."""
    full = {"on": False}
    real_open = builtins.open

    class FullFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if full["on"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FullFile(f) if any(c in mode for c in "wa+") else f

    monkeypatch.setattr(dbmod, "open", fake_open, raising=False)
    monkeypatch.setattr(shadowmod, "open", fake_open, raising=False)
    _disk_full_run(
        tmp_path,
        lambda _m: full.update(on=True),
        lambda _m: full.update(on=False),
        "injected",
        caplog,
    )


def test_database_deleted_while_replicating(tmp_path, caplog):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=200)
    rep = _replicator(db, replica)
    rep.start()
    m = rep.dbs[0]
    try:
        for _ in range(20):
            app.commit(10)
            time.sleep(0.02)
        assert caught_up(m)
        k = app.k
        gen = m.db.generation
        app.close()
        before = replica_objects(replica)
        with caplog.at_level(logging.ERROR, logger="litestream_fast"):
            remove_db(db)  # rm db db-wal db-shm
            assert wait_for(lambda: "deleted" in (m.db.last_error or ""), 10)
            time.sleep(1.0)  # ten sync intervals
        assert any("deleted" in r.getMessage() for r in caplog.records)
        assert not os.path.exists(db)  # never recreated by us
        after = replica_objects(replica)
        assert after == before  # nothing uploaded (no empty snapshot), nothing deleted
        assert restore_ours(replica, str(tmp_path / "out.db")) == k
        # A new database appears at the path: a new generation; the history stays.
        make_db(db)
        app = Ledger(db, size=200)
        app.commit(7)
        assert wait_for(lambda: m.db.generation not in (None, gen), 10)
        assert caught_up(m)
    finally:
        rep.stop(timeout=10)
    app.close()
    assert restore_ours(replica, str(tmp_path / "new.db")) == 7
    assert restore_ours(replica, str(tmp_path / "old.db"), generation=gen) == k
    assert all(os.path.exists(os.path.join(replica, p)) for p in before)
    record("database_deleted", commits_before=k, objects_kept=len(before), restores=3,
           generations=dict(m.db.generation_reasons))  # fmt: skip


def test_two_databases_one_replica_location_refused(tmp_path):
    a, b, shared = str(tmp_path / "a.db"), str(tmp_path / "b.db"), str(tmp_path / "shared")
    make_db(a)
    make_db(b)
    cfg = tmp_path / "ls.yml"
    cfg.write_text(
        f"dbs:\n  - path: {a}\n    replicas:\n      - path: {shared}\n"
        f"  - path: {b}\n    replicas:\n      - url: file://{shared}/\n"
    )
    p = subprocess.Popen([sys.executable, "-m", "litestream_fast", "replicate", "-config",
                          str(cfg)], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    objects = replica_objects(shared) if os.path.exists(shared) else {}
    assert p.returncode == 1, f"both databases replicated into {shared}: {sorted(objects)}"
    assert shared in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(shared)  # refused before any upload
    record("shared_replica_location", refused=True, message=err.strip()[:160])


def test_many_idle_databases(tmp_path):
    """Scenario 31, scaled: many small databases in one replicator with default intervals
    (1 s). Once each has its snapshot and sits idle: no object is written (0 PUTs) and the
    process's CPU stays low; a database that starts writing again ships within seconds."""
    import resource

    n = scaled(40, 1000)
    cfgs, paths = [], []
    for i in range(n):
        db = str(tmp_path / f"db{i:04d}.db")
        make_db(db)
        led = Ledger(db, size=100)
        led.commit(5)
        led.close()
        paths.append(db)
        cfgs.append(DBConfig(path=db, replicas=[ReplicaConfig(type="file",
                             path=str(tmp_path / "r" / f"{i:04d}"))]))  # fmt: skip
    rep = Replicator.from_config(cfgs)
    rep.start()
    try:
        assert wait_for(lambda: all(r.pos.offset > 0 for m in rep.dbs for r in m.replicas), 60, 0.2)
        time.sleep(1.5)  # the last syncs settle
        before = replica_objects(str(tmp_path / "r"))
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(scaled(3.0, 60.0))
        ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        after = replica_objects(str(tmp_path / "r"))
        cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / (t1 - t0)
        assert after == before  # idle: nothing written to the replicas
        # One database wakes up: shipped within a few sync intervals.
        led = Ledger(paths[n // 2], size=100)
        led.commit(3)
        m = rep.dbs[n // 2]
        t2 = time.monotonic()
        assert caught_up(m, 10)
        pickup = time.monotonic() - t2
        led.close()
    finally:
        rep.stop(timeout=30)
    assert restore_ours(str(tmp_path / "r" / f"{n // 2:04d}"), str(tmp_path / "w.db")) == 8
    record("idle_databases", dbs=n, idle_cpu_percent=round(cpu * 100, 1), idle_objects_written=0,
           wakeup_ship_s=round(pickup, 2), threads=2 * n)  # fmt: skip
    assert cpu < 0.25  # well under a quarter of one core for all of them
