"""Clock skew (scenario 34): positions never depend on the clock; point-in-time restore
selects by object times (the writer's clock for file replicas, the store's for S3) and
stays a committed prefix, monotonic over positions, when that clock jumps back; a clock
jump forward shortens the history retention keeps but never the newest state.

A v0.3 replica has no TXIDs: its positions (generation, WAL index, offset) come from the
WAL itself, so a clock jump cannot make them go backwards or repeat. Leases do not exist
in a v0.3-style replicator. The forward jump is a known limit of wall-clock retention
(Litestream v0.3 behaves the same): snapshots that were inside the real window are
deleted as if they were old; what the newest restorable point needs is always kept.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

from relsupport import Ledger, check_prefix, make_db, record, remove_db, restore_ours, scaled

from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.db import DB
from litestream_fast.replica import Replica
from litestream_fast.restore import plan_restore, restore


def _build(tmp_path, rounds):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db)
    app = Ledger(db, size=150)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    for i in range(rounds):
        app.commit(10)
        r.sync_once()
        if i % 3 == 2:
            dbo.checkpoint("PASSIVE")
    return db, replica, app, dbo, r


def test_clock_jumps_back(tmp_path):
    db, replica, app, dbo, r = _build(tmp_path, scaled(12, 60))
    c = FileReplicaClient(replica)
    gen = dbo.generation
    segs = c.wal_segments(gen)
    # The clock jumped back one hour half-way: later objects carry earlier times.
    for s in segs[len(segs) // 2 :]:
        p = c.object_key(gen, s.index, s.offset)
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
    times = sorted({s.created_at for s in c.wal_segments(gen)})
    probes = [times[0] - timedelta(seconds=1), *times, times[-1] + timedelta(hours=2)]
    ks = []
    for j, t in enumerate(probes):
        out = str(tmp_path / f"p{j}.db")
        try:
            plan = plan_restore({"file": c}, timestamp=t)
        except Exception:  # noqa: BLE001 - before the first snapshot: nothing to restore
            ks.append(None)
            continue
        restore(plan, out, integrity_check="full")
        ks.append(check_prefix(out))  # always a committed prefix, never a gap
        remove_db(out)
    got = [k for k in ks if k is not None]
    assert got and max(got) <= app.k
    assert restore_ours(replica, str(tmp_path / "latest.db")) == app.k  # positions rule
    dbo.close()
    app.close()
    record("clock_back", probes=len(probes), restores=len(got) + 1, restored_ks=sorted(set(got)))


def test_clock_jumps_forward_retention(tmp_path):
    db, replica, app, dbo, r = _build(tmp_path, scaled(9, 30))
    r.snapshot()
    app.commit(5)
    r.sync_once()
    c = FileReplicaClient(replica)
    before = len(c.snapshots(dbo.generation)) + len(c.wal_segments(dbo.generation))
    r.retention = 24 * 3600.0
    deleted = r.enforce_retention(now=time.time() + 2 * 86400)  # two days ahead
    assert restore_ours(replica, str(tmp_path / "out.db")) == app.k  # newest state kept
    snaps = c.snapshots(dbo.generation)
    assert snaps  # a fresh snapshot was taken before anything was deleted
    first = min(s.created_at for s in snaps)
    # History before the newest snapshot is gone: point in time there is refused loudly.
    try:
        plan_restore({"file": c}, timestamp=first - timedelta(seconds=1))
        refused = False
    except Exception:  # noqa: BLE001
        refused = True
    assert refused
    dbo.close()
    app.close()
    record("clock_forward_retention", objects_before=before, deleted=deleted,
           now=datetime.now(timezone.utc).isoformat(timespec="seconds"), restores=1)  # fmt: skip
