"""Damaged replicas: restore fails loudly naming the object, or an earlier point still works.

Scenarios 23 (a flipped byte, an object truncated to half), 24 (a deleted segment mid-chain,
a deleted first segment of an index, a whole index deleted; point-in-time before the gap
still works) and 25 (the whole replica prefix wiped while the replicator runs: detected,
re-seeded with a full snapshot). Neighbours: a deleted or damaged snapshot (the
generation cannot be restored; an older generation is used, and said so), the snapshot
alone deleted while running, and a retention pass interrupted half-way (the replica must
stay restorable, by us and by real Litestream 0.3.13, whose restore requires every WAL
index of a generation to start at offset 0).

The pristine replica is built once by the library (``DB.sync``/``Replica.sync_once``,
PASSIVE checkpoints for new WAL indexes, a TRUNCATE for a second generation), recording
after every sync the ledger commit k and a time t: a point-in-time restore at t must be
EXACT (k). Each damage case works on a copy (mtimes kept). Every failed restore must
leave neither the output nor any temporary file behind.

Not covered: a snapshot altered *and* re-compressed into a valid LZ4 frame. The v0.3
format has no whole-database checksum, so only ``integrity_check`` could notice; bit rot
and truncation are caught by the LZ4 content checksum, and WAL segments by the
salt/checksum chain.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from relsupport import (
    Ledger,
    caught_up,
    finish_app,
    flip_byte,
    make_db,
    max_id,
    processes,
    record,
    restore_litestream,
    restore_ours,
    scaled,
    start_app,
    truncate_half,
    wait_for,
)

from litestream_fast import replica as replica_mod
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.config import DBConfig, ReplicaConfig
from litestream_fast.db import DB
from litestream_fast.errors import (
    CorruptObject,
    IntegrityCheckFailed,
    NoBackupFound,
    RestoreError,
)
from litestream_fast.replica import Replica
from litestream_fast.scheduler import Replicator
from litestream_fast.validation import validate

FIGURES = {"damaged_objects": 0, "restores": 0, "loud_failures": 0}


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    record("damaged_replicas", **FIGURES)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Two generations: A (snapshot + 2 indexes), then B after a TRUNCATE (4 indexes)."""
    base = tmp_path_factory.mktemp("damage")
    db = str(base / "app.db")
    replica = str(base / "replica")
    make_db(db)
    ledger = Ledger(db, size=300)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    points = []  # (generation, k, time after the sync)

    def step(n):
        ledger.commit(n)
        r.sync_once()
        time.sleep(0.03)  # file mtimes use a coarse clock: keep t clear of both sides
        points.append((dbo.generation, ledger.k, datetime.now(timezone.utc)))
        time.sleep(0.03)

    for _ in range(2):
        for _ in range(2):
            step(15)
        dbo.checkpoint("PASSIVE")
    gen_a = dbo.generation
    dbo.checkpoint("TRUNCATE")
    for _ in range(4):
        for _ in range(3):
            step(15)
        dbo.checkpoint("PASSIVE")
    step(5)
    gen_b = dbo.generation
    assert gen_a != gen_b
    yield {"db": db, "replica": replica, "points": points, "gen_a": gen_a, "gen_b": gen_b,
           "k": ledger.k, "dbo": dbo, "base": base}  # fmt: skip
    dbo.close()
    ledger.close()


def _copy(pristine, name):
    dst = str(pristine["base"] / name)
    shutil.copytree(pristine["replica"], dst)
    return dst


def _segments(replica, gen):
    c = FileReplicaClient(replica)
    return c, c.wal_segments(gen)


def _mid_segment(replica, gen, where="mid"):
    """A segment of generation ``gen`` in the middle index of its chain: the index's first
    segment, one with segments before and after it ("mid"), or its last one ("tail")."""
    c, segs = _segments(replica, gen)
    indexes = sorted({s.index for s in segs})
    idx = indexes[len(indexes) // 2]
    group = [s for s in segs if s.index == idx]
    assert len(group) >= 3
    s = {"first": group[0], "mid": group[len(group) // 2], "tail": group[-1]}[where]
    return s, c.object_key(gen, s.index, s.offset)


def _expect_loud(replica, out_dir, key, exc_type=RestoreError, **kw):
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "out.db")
    with pytest.raises(exc_type) as ei:
        restore_ours(replica, out, **kw)
    assert key in str(ei.value), str(ei.value)
    assert os.listdir(out_dir) == []  # no output, no temp file
    FIGURES["loud_failures"] += 1
    return ei.value


def _cli_loud(replica, out_dir, key):
    out = os.path.join(out_dir, "cli.db")
    r = subprocess.run([sys.executable, "-m", "litestream_fast", "restore", "-o", out,
                        f"file://{replica}"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and key in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not os.path.exists(out)
    FIGURES["loud_failures"] += 1


def _pitr_before(pristine, replica, out_dir, created_at, gen):
    """Every recorded point of ``gen`` strictly before ``created_at`` restores EXACTly."""
    n = 0
    for g, k, t in pristine["points"]:
        if g != gen or t >= created_at:
            continue
        out = os.path.join(out_dir, f"pitr-{n}.db")
        assert restore_ours(replica, out, timestamp=t) == k
        os.unlink(out)
        n += 1
    FIGURES["restores"] += n
    return n


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_segment_mid_chain(pristine, tmp_path, damage):
    replica = _copy(pristine, f"r-{damage}")
    gen = pristine["gen_b"]
    seg, key = _mid_segment(replica, gen)
    if damage == "flip":
        flip_byte(key, os.path.getsize(key) // 2)
    else:
        truncate_half(key)
    FIGURES["damaged_objects"] += 1
    exc = _expect_loud(replica, str(tmp_path / "o1"), key, CorruptObject)
    assert exc.key == key
    _cli_loud(replica, str(tmp_path / "o1"), key)
    # Point in time before the damaged object: exact.
    assert _pitr_before(pristine, replica, str(tmp_path / "o2"), seg.created_at, gen) >= 3
    # Point in time after it: loud too.
    after = [t for g, _k, t in pristine["points"] if g == gen and t > seg.created_at]
    _expect_loud(replica, str(tmp_path / "o3"), key, CorruptObject, timestamp=after[0])
    # The validation job flags it as well.
    v = Replica(pristine["dbo"], FileReplicaClient(replica))
    with pytest.raises(CorruptObject) as ei:
        validate(v, tmpdir=str(tmp_path))
    assert ei.value.key == key


@pytest.mark.parametrize("which", ["mid", "first", "index"])
def test_deleted_segments(pristine, tmp_path, which):
    replica = _copy(pristine, f"r-del-{which}")
    gen = pristine["gen_b"]
    seg, key = _mid_segment(replica, gen, "mid" if which == "mid" else "first")
    c, segs = _segments(replica, gen)
    victims = [s for s in segs if s.index == seg.index] if which == "index" else [seg]
    for s in victims:
        os.unlink(c.object_key(gen, s.index, s.offset))
    FIGURES["damaged_objects"] += len(victims)
    _expect_loud(replica, str(tmp_path / "o1"), key)
    _cli_loud(replica, str(tmp_path / "o1"), key)
    first_gone = min(s.created_at for s in victims)
    assert _pitr_before(pristine, replica, str(tmp_path / "o2"), first_gone, gen) >= 3


def test_deleted_last_segment_of_an_index(pristine, tmp_path):
    """The last segment of a non-final index deleted. v0.3 objects do not record where an
    index ends, so no object check can see this gap; the restored database is then a mix
    of states, and the integrity check after the restore is the net: it must fail the
    restore (IntegrityCheckFailed, one line from the CLI), never leave a database behind."""
    replica = _copy(pristine, "r-del-tail")
    gen = pristine["gen_b"]
    seg, key = _mid_segment(replica, gen, "tail")
    os.unlink(key)
    FIGURES["damaged_objects"] += 1
    os.makedirs(tmp_path / "o1")
    try:
        k = restore_ours(replica, str(tmp_path / "o1" / "out.db"))
    except IntegrityCheckFailed:
        assert os.listdir(tmp_path / "o1") == []
        _cli_loud(replica, str(tmp_path / "o1"), "restored database failed PRAGMA")
    else:
        # The lost tail held no user data (typically only the replicator's own
        # _litestream_seq frame written before a checkpoint): then the restore must be
        # exactly the newest ledger state, nothing lost, nothing mixed.
        assert k == max(kk for g, kk, _t in pristine["points"] if g == gen)
        os.unlink(tmp_path / "o1" / "out.db")
    # Restoring up to the damaged index (inclusive) is a consistent, older state.
    out = str(tmp_path / "o1" / "upto.db")
    k = restore_ours(replica, out, generation=gen, index=seg.index)
    assert any(g == gen and kk == k for g, kk, _t in pristine["points"])
    assert _pitr_before(pristine, replica, str(tmp_path / "o2"), seg.created_at, gen) >= 3


def test_snapshot_deleted_or_damaged(pristine, tmp_path, caplog):
    gen_a, gen_b = pristine["gen_a"], pristine["gen_b"]
    last_a = max(k for g, k, _t in pristine["points"] if g == gen_a)
    # A damaged snapshot of the newest generation: loud, naming it.
    replica = _copy(pristine, "r-snapflip")
    c = FileReplicaClient(replica)
    key = c.object_key(gen_b, c.snapshots(gen_b)[0].index)
    flip_byte(key, os.path.getsize(key) // 3)
    FIGURES["damaged_objects"] += 1
    _expect_loud(replica, str(tmp_path / "o1"), key, CorruptObject)
    # Generation A is untouched: point in time inside it is exact.
    assert _pitr_before(pristine, replica, str(tmp_path / "o2"), datetime.now(timezone.utc), gen_a)

    # A deleted snapshot: generation B cannot be restored (exactly like a crash between a
    # snapshot's segments and the snapshot); the restore uses generation A and says so.
    replica = _copy(pristine, "r-snapdel")
    c = FileReplicaClient(replica)
    os.unlink(c.object_key(gen_b, c.snapshots(gen_b)[0].index))
    FIGURES["damaged_objects"] += 1
    with caplog.at_level(logging.WARNING, logger="litestream_fast"):
        k = restore_ours(replica, str(tmp_path / "a.db"))
    assert k == last_a
    assert any(gen_b in r.getMessage() and "no snapshot" in r.getMessage() for r in caplog.records)
    # With no other generation: NoBackupFound, no output.
    shutil.rmtree(os.path.join(replica, "generations", gen_a))
    os.makedirs(tmp_path / "o3")
    with pytest.raises(NoBackupFound):
        restore_ours(replica, str(tmp_path / "o3" / "x.db"))
    assert os.listdir(tmp_path / "o3") == []
    FIGURES["restores"] += 1
    FIGURES["loud_failures"] += 1


def test_interrupted_retention_keeps_replica_restorable(pristine, tmp_path):
    """Retention deletes the segments older than the snapshot it keeps; a pass cut short
    (crash, or a storage error on a delete) must leave a replica that both we and real
    Litestream 0.3.13 restore (Litestream requires every index to start at offset 0)."""
    replica = _copy(pristine, "r-retention")
    dbo = pristine["dbo"]

    class FailingDeletes(FileReplicaClient):
        def delete_wal_segments(self, positions):
            # Fail in the middle of an index: between two segments of the same index.
            cut = next(i for i in range(max(1, len(positions) // 2), len(positions))
                       if positions[i].index == positions[i - 1].index)  # fmt: skip
            super().delete_wal_segments(positions[:cut])
            raise OSError("simulated storage error in the middle of a delete")

    r = Replica(dbo, FailingDeletes(replica), retention=0.001)
    r.sync_once()
    r.snapshot()  # a snapshot at the current index makes every older segment deletable
    time.sleep(0.05)
    with pytest.raises(OSError):
        r.enforce_retention()
    FIGURES["damaged_objects"] += 1
    k = restore_ours(replica, str(tmp_path / "ours.db"))
    assert k == pristine["k"]
    assert restore_litestream(replica, str(tmp_path / "ls.db")) == k
    FIGURES["restores"] += 2


def test_interrupted_generation_deletion_leaves_no_broken_generation(pristine, tmp_path):
    """Retention deletes a whole old generation; a deletion cut short (kill -9 in the middle
    of removing its objects, found by the kill -9 test) must not leave that generation
    looking restorable (a snapshot with holes in its chain): any generation that still has
    a snapshot restores, and real Litestream restores the latest state."""
    replica = _copy(pristine, "r-gendel")
    gen_a = pristine["gen_a"]

    class FailingGenerationDelete(FileReplicaClient):
        def delete_generation(self, generation):
            # Like an rmtree killed half-way: some objects gone, in directory order.
            d = os.path.join(self.root, "generations", generation)
            files = sorted(os.path.join(p, n) for p, _d, ns in os.walk(d) for n in ns)
            for f in files[len(files) // 3 :: 2]:
                os.unlink(f)
            raise OSError("simulated crash while deleting a generation")

    r = Replica(pristine["dbo"], FailingGenerationDelete(replica), retention=0.001)
    r.sync_once()
    time.sleep(0.05)
    with pytest.raises(OSError):
        r.enforce_retention()
    FIGURES["damaged_objects"] += 1
    c = FileReplicaClient(replica)
    assert gen_a in c.generations()  # the deletion was cut short
    for g in c.generations():
        if c.snapshots(g):
            k = restore_ours(replica, str(tmp_path / f"{g}.db"), generation=g)
            assert any(gg == g and kk == k for gg, kk, _t in pristine["points"])
            FIGURES["restores"] += 1
    assert restore_litestream(replica, str(tmp_path / "ls.db")) == pristine["k"]
    FIGURES["restores"] += 1


def test_replica_wiped_while_running_is_reseeded(tmp_path, monkeypatch):
    """The whole replica directory (or just its snapshots) is deleted while the replicator
    runs and the application keeps writing: an uploading replica checks, at most every
    REMOTE_CHECK_INTERVAL (30 s; 0.5 s here), that its generation still has a snapshot;
    when it does not, a new generation starts and its snapshot re-seeds the replica. The
    check waits REMOTE_CHECK_GRACE (10 s; 0.5 s here) after the replica's own snapshot
    upload, for stores whose listings lag their writes. An idle replica makes no request,
    so it notices at its next upload."""
    monkeypatch.setattr(replica_mod, "REMOTE_CHECK_GRACE", 0.5)
    monkeypatch.setattr(replica_mod, "REMOTE_CHECK_INTERVAL", 0.5)
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    cfg = DBConfig(path=db, monitor_interval=0.1, checkpoint_interval=0.5,
                   min_checkpoint_page_count=50,
                   replicas=[ReplicaConfig(type="file", path=replica, sync_interval=0.1)])  # fmt: skip
    rep = Replicator.from_config([cfg])
    m = rep.dbs[0]
    wipes, reseed_s = 0, []

    def reseeded():
        c = FileReplicaClient(replica)
        return any(c.snapshots(g) for g in c.generations())

    with processes() as procs:
        writer = start_app(db, "--rate", "100", "--size", "200")
        procs.append(writer)
        rep.start()
        try:
            for kind in scaled(["all", "snapshot"], ["all", "snapshot"] * 5):
                time.sleep(0.7)
                k_wipe = max_id(db)
                assert caught_up(m)
                if kind == "all":
                    # rm -rf while uploads go on: it may race with a new object; the
                    # snapshots are gone either way.
                    for _ in range(5):
                        shutil.rmtree(replica, ignore_errors=True)
                        if not os.path.exists(replica):
                            break
                else:
                    c = FileReplicaClient(replica)
                    for g in c.generations():
                        for s in c.snapshots(g):
                            c.delete_snapshot(g, s.index)
                wipes += 1
                t0 = time.monotonic()
                assert wait_for(reseeded, timeout=15), "replica not re-seeded after it was wiped"
                reseed_s.append(round(time.monotonic() - t0, 2))
                assert caught_up(m)
                out = str(tmp_path / f"out{wipes}.db")
                assert restore_ours(replica, out) >= k_wipe
            app = finish_app(writer)
            assert caught_up(m)
        finally:
            rep.stop(timeout=10)
    assert restore_ours(replica, str(tmp_path / "final.db")) == app["last"]
    reasons = dict(m.db.generation_reasons)
    record("replica_wiped_while_running", wipes=wipes, reseed_seconds=reseed_s,
           generation_reasons=reasons, restores=wipes + 1)  # fmt: skip
    assert reasons.get("replica lost its snapshot") == wipes
