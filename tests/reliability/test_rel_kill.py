"""kill -9 of the replicator, at random instants and at exact points of its work.

Scenarios (``shared/reference/scenarios.md``): 5 (kill, the app writes and TRUNCATEs,
restart: discontinuity detected, new snapshot), 13 (kill -9 at many random instants,
including mid-snapshot upload; no partial object in a restore plan; local staging
bounded) and 15 (power loss of the replicator host: what its state directory had not
fsynced is lost; local metadata is revalidated, never trusted blindly).

One database with 16 MiB of random ballast (so a snapshot takes a moment) and a ledger
writer process (``tests/ledger_writer.py``: commit k = row k, with the application's own
PASSIVE autocheckpoints) run for the whole test. The replicator is the real CLI
(``python -m litestream_fast replicate -config``) started and killed 30 times (200 under
``LITESTREAM_FAST_SOAK=1``). Each kill is one of:

* ``random``: SIGKILL from outside at a uniformly random instant;
* ``snapshot-tmp``: SIGKILL from outside as soon as the snapshot's ``.tmp`` object appears
  (a snapshot upload in flight), after the app TRUNCATEd the WAL while we were down;
* a crash point of ``crashpoint.py`` (mid checkpoint while moving its read pin, mid
  checkpoint under its write barrier, after the checkpoint, after our own WAL restart, mid snapshot, between a snapshot's segments and
  the snapshot, mid segment, after a segment before the position advances, mid shadow
  copy, right after a new generation is recorded, mid retention deletion).

After some kills the replicator's state directory is damaged the way a power loss can
damage it (the shadow WAL's unsynced tail cut, sometimes back past what the replica
already holds, a stale temp file, the generation file lost, the whole directory lost).

After every kill the replica is restored (our library, our CLI, and every fifth time also
the real Litestream 0.3.13, which must agree) and must be PREFIX-OK: the ledger at some k
with ``floor <= k``, floor being the last commit seen at least 2 s before the kill
while the replicator was up and its generation had a snapshot. The replicator's own
durable watermark (the replica position it publishes in ``status.json``, read just before
the kill) must be included too: the restore is at or past it. A final clean run ships
everything: EXACT at the last commit; then every generation left with a snapshot
restores to a ledger prefix (the "any generation with a snapshot is restorable" rule).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import apsw
import pytest
from relsupport import (
    LEDGER_WRITER,
    Ledger,
    current_generation,
    dir_size,
    generations_with_snapshot,
    kill9,
    make_db,
    max_id,
    meta_dir,
    parse_pos,
    processes,
    record,
    remote_end,
    remove_db,
    restore_cli,
    restore_litestream,
    restore_ours,
    restore_ours_pos,
    scaled,
    start_replicator,
    stop,
    tmp_objects,
    wait_for,
    write_config,
)

from litestream_fast import status, wal
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.db import DB
from litestream_fast.replica import Replica
from litestream_fast.restore import list_generations

CRASH_POINTS = [
    "checkpoint-pin-move",
    "checkpoint-barrier",
    "checkpoint-after",
    "checkpoint-restarted",
    "snapshot-mid",
    "snapshot-before",
    "segment-mid",
    "segment-after",
    "shadow-copy",
    "new-generation",
    "retention",
]
NEEDS_NEW_GENERATION = {"snapshot-tmp", "snapshot-mid", "snapshot-before", "new-generation"}
ONCE_PER_RUN = NEEDS_NEW_GENERATION | {"retention"}  # points reached once per run at most
POWER_LOSS = ["unsynced-tail", "stale-tmp", "generation-file-lost", "meta-wiped"]
MARGIN = 2.0  # seconds between a commit and the kill for it to count as replicated
SIZE = 200  # ledger row payload


def _schedule(n: int, rng: random.Random) -> list[str]:
    modes = list(CRASH_POINTS) + ["snapshot-tmp"] * max(3, n // 10)
    modes += ["random"] * max(0, n - len(modes))
    modes = (modes * (n // len(modes) + 1))[:n] if n > len(modes) else modes[:n]
    rng.shuffle(modes)
    return modes


def _app_truncate(db: str) -> None:
    """The application's TRUNCATE checkpoint while the replicator is down."""
    c = apsw.Connection(db)
    c.set_busy_timeout(5000)
    try:
        for _ in range(20):
            if c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0] == 0:
                return
            time.sleep(0.05)
        raise AssertionError("application TRUNCATE checkpoint stayed busy")
    finally:
        c.close()


def _has_snapshot_tmp(replica: str) -> bool:
    gens = os.path.join(replica, "generations")
    try:
        for g in os.listdir(gens):
            d = os.path.join(gens, g, "snapshots")
            if os.path.isdir(d) and any(n.endswith(".snapshot.lz4.tmp") for n in os.listdir(d)):
                return True
    except FileNotFoundError:
        pass
    return False


def _newest_has_snapshot(replica: str) -> bool:
    infos = list_generations({"file": FileReplicaClient(replica)})
    newest = max(infos, key=lambda g: g.updated_at)
    return bool(newest.snapshots)


def _started_after(replica: str, generation: str, t: float) -> bool:
    snaps = FileReplicaClient(replica).snapshots(generation)
    return bool(snaps) and min(s.created_at.timestamp() for s in snaps) > t - 0.05


def _ready(meta: str, replica: str) -> bool:
    g = current_generation(meta)
    if not g:
        return False
    d = os.path.join(replica, "generations", g, "snapshots")
    return os.path.isdir(d) and any(n.endswith(".snapshot.lz4") for n in os.listdir(d))


def _power_loss(kind: str, meta: str, replica: str, rng: random.Random) -> bool:
    """Damage the replicator's state directory as a power loss could; True if applied."""
    g = current_generation(meta)
    if kind == "meta-wiped":
        shutil.rmtree(meta, ignore_errors=True)
        return True
    if kind == "generation-file-lost":
        if not os.path.exists(os.path.join(meta, "generation")):
            return False
        os.unlink(os.path.join(meta, "generation"))
        return True
    if not g:
        return False
    wdir = os.path.join(meta, "generations", g, "wal")
    names = sorted(n for n in os.listdir(wdir) if n.endswith(".wal")) if os.path.isdir(wdir) else []
    if kind == "stale-tmp":
        with open(os.path.join(wdir if names else meta, "00000000.wal.tmp"), "wb") as f:
            f.write(os.urandom(5000))
        with open(os.path.join(meta, "generation.tmp"), "w") as f:
            f.write("0123456789abcdef\n")
        return True
    # unsynced-tail: shadow appends are not fsynced, so any tail may be lost: half the
    # time only what the replica does not hold yet, half the time also what it does (the
    # replica is then ahead of the shadow; the WAL refills it or a new generation starts).
    if not names:
        return False
    last = os.path.join(wdir, names[-1])
    index = int(names[-1][:8], 16)
    with open(last, "rb") as f:
        hdr = wal.WalHeader.try_parse(f.read(32))
    size = os.path.getsize(last)
    if hdr is None:
        return False
    fs = hdr.frame_size
    lo = max(remote_end(replica, g, index), 32) if rng.random() < 0.5 else 32
    frames = (size - lo) // fs
    if frames <= 0:
        return False
    cut = lo + rng.randint(0, frames - 1) * fs
    # A torn frame too: a partial frame at the end must be discarded on recovery.
    os.truncate(last, cut + rng.choice([0, 0, fs // 3]))
    return True


def test_watermark_never_ahead_of_what_restores(tmp_path):
    """While a new generation's snapshot is being uploaded, the replica's position (what
    status, metrics and the kill -9 test's watermark report as replicated) must not move
    into that generation: if the process died right then, no restore could reach it."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db, ballast_mb=2)
    ledger = Ledger(db)
    dbo = DB(db, checkpoint_interval=0)
    gate, entered = threading.Event(), threading.Event()

    class SlowSnapshots(FileReplicaClient):
        def write_snapshot(self, generation, index, data):
            entered.set()
            gate.wait(10)
            return super().write_snapshot(generation, index, data)

    r = Replica(dbo, SlowSnapshots(replica))
    observed = []
    try:
        for round_ in range(2):
            ledger.commit(10)
            if round_:
                r.sync_once()
                k_before = ledger.k
                assert dbo.checkpoint("TRUNCATE")  # a new generation: a new snapshot
                ledger.commit(5)
            entered.clear()
            gate.clear()
            t = threading.Thread(target=r.sync_once)
            t.start()
            try:
                assert entered.wait(10)
                w = r.pos  # the snapshot is being written right now
                observed.append(str(w))
                if not w.is_zero:
                    assert FileReplicaClient(replica).snapshots(w.generation), (
                        f"position {w} reported while its generation has no snapshot"
                    )
                    # A crash now: the restore holds what the position claims.
                    k, restored = restore_ours_pos(replica, str(tmp_path / f"mid{round_}.db"))
                    assert restored >= w and k >= k_before
            finally:
                gate.set()
                t.join(30)
        assert r.pos == dbo.pos()
    finally:
        dbo.close()
        ledger.close()
    record("watermark_during_snapshot", observed=observed)


def test_generation_change_during_replica_init_snapshot(tmp_path):
    """The DB starts a new generation while a replica is taking the first snapshot of the
    previous one (found by the kill -9 test: after a restart, a checkpoint's WAL restart
    was judged an overwrite). The replica must not loop taking snapshots: the sync ends,
    and the next one carries on in the new generation."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db, ballast_mb=1)
    ledger = Ledger(db)
    dbo = DB(db, checkpoint_interval=0)
    ledger.commit(20)
    dbo.sync()
    writes = []

    class Switching(FileReplicaClient):
        def snapshots(self, generation):
            out = super().snapshots(generation)
            if not out and generation == dbo.generation and not writes:
                dbo.new_generation("simulated: changed during the replica's first sync")
            return out

        def write_snapshot(self, generation, index, data):
            writes.append(generation)
            if len(writes) > 5:
                raise RuntimeError(f"snapshot loop: {len(writes)} snapshots in one sync")
            return super().write_snapshot(generation, index, data)

    r = Replica(dbo, Switching(replica))
    try:
        r.sync_once()
        ledger.commit(5)
        r.sync_once()
        assert r.pos == dbo.pos()
        assert len(writes) <= 2, writes
        assert restore_ours(replica, str(tmp_path / "out.db")) == ledger.k
    finally:
        dbo.close()
        ledger.close()
    record("generation_change_during_init", snapshots=len(writes))


@pytest.mark.slow
def test_kill9_replicator_many_times(tmp_path):
    n_kills = scaled(30, 200)
    rng = random.Random(20261123)
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    meta = meta_dir(db)
    make_db(db, ballast_mb=scaled(16, 48))
    base_keys = {"monitor_interval": "100ms", "checkpoint_interval": "500ms",
                 "min_checkpoint_page_count": 40}  # fmt: skip
    cfg = write_config(str(tmp_path / "ls.yml"), db, replica, base_keys,
                       {"retention": "20s", "retention_check_interval": "3s"})  # fmt: skip
    cfg_ret = write_config(str(tmp_path / "ls-ret.yml"), db, replica, base_keys,
                           {"retention": "2s", "retention_check_interval": "500ms"})  # fmt: skip
    log = str(tmp_path / "replicator.log")
    schedule = _schedule(n_kills, rng)
    stats = {"kills": 0, "crash_points_hit": 0, "missed_points": 0, "snapshot_kills": 0,
             "power_loss": 0, "restores": 0, "litestream_agreed": 0, "fresh_floor_kills": 0,
             "watermark_checks": 0}  # fmt: skip
    floor, max_meta, t0 = 0, 0, time.monotonic()
    missed: list[str] = []
    with processes() as procs:
        writer = subprocess.Popen([sys.executable, LEDGER_WRITER, db, "--rate", "150",
                                   "--size", str(SIZE)], stdout=subprocess.PIPE)  # fmt: skip
        procs.append(writer)
        assert wait_for(lambda: max_id(db) > 10)
        for i, mode in enumerate(schedule):
            point = mode if mode in CRASH_POINTS else None
            gen_before = current_generation(meta)
            if mode in NEEDS_NEW_GENERATION:
                _app_truncate(db)
            p = start_replicator(
                cfg_ret if mode == "retention" else cfg,
                crash=point,
                crash_after=rng.randint(1, 2) if point and point not in ONCE_PER_RUN else 1,
                log=log,
            )
            procs.append(p)
            started = time.monotonic()
            # Half the random kills land in the start-up (open, first sync, snapshot), half
            # late enough that commits seen after start-up must have been shipped.
            kill_at = started + (rng.uniform(0.05, 1.2) if i % 2 else rng.uniform(3.0, 3.8))
            samples: list[tuple[float, int]] = []
            last_sample = 0.0
            while True:
                now = time.monotonic()
                if p.poll() is not None:
                    assert point, f"replicator exited by itself ({p.returncode}); see {log}"
                    # Only its own SIGKILL counts: a crash-point run that failed to start
                    # (say, a hook on a function that was renamed) must not pass for a hit.
                    assert p.returncode == -signal.SIGKILL, (
                        f"crash point {point}: exited with {p.returncode}, not killed; see {log}"
                    )
                    stats["crash_points_hit"] += 1
                    break
                if mode == "snapshot-tmp":
                    if _has_snapshot_tmp(replica):
                        time.sleep(rng.uniform(0, 0.03))
                        stats["snapshot_kills"] += 1
                        break
                elif now - last_sample >= 0.05 and now - started >= 1.0:
                    last_sample = now
                    fresh = (
                        mode not in NEEDS_NEW_GENERATION or current_generation(meta) != gen_before
                    )
                    if fresh and _ready(meta, replica):
                        samples.append((now, max_id(db)))
                if mode == "random" and now >= kill_at:
                    break
                if now - started > 8:
                    stats["missed_points"] += 1
                    missed.append(mode)
                    break
                time.sleep(0.003 if mode == "snapshot-tmp" else 0.02)
            st = status.read(meta) if p.poll() is None else None
            watermark = parse_pos(st["replicas"][0]["position"]) if st else None
            kill9(p)
            t_kill = time.monotonic()
            with open(log, "a") as f:
                f.write(f"---- test: kill {i} ({mode}) at {time.time():.3f}; samples "
                        f"{[(round(t - t_kill, 2), k) for t, k in samples][-3:]}\n")  # fmt: skip
            stats["kills"] += 1
            floor = max([floor] + [k for t, k in samples if t <= t_kill - MARGIN])
            if samples and samples[0][0] <= t_kill - MARGIN:
                stats["fresh_floor_kills"] += 1
            max_meta = max(max_meta, dir_size(meta))

            out = str(tmp_path / f"out{i}.db")
            if not generations_with_snapshot(replica):
                # Killed before the very first snapshot completed: nothing to restore yet,
                # and nothing was ever acknowledged.
                assert floor == 0
                stats["before_first_snapshot"] = stats.get("before_first_snapshot", 0) + 1
                continue
            if i % 3 == 2:
                k, restored = restore_cli(replica, out), None
            else:
                k, restored = restore_ours_pos(replica, out)
            stats["restores"] += 1
            if watermark and restored:
                # What the replicator reported as replicated (its status, the durable
                # watermark) must be in the restore: same generation at or past it, or a
                # generation that started after it.
                stats["watermark_checks"] += 1
                if restored.generation == watermark.generation:
                    assert restored >= watermark, f"kill {i}: restored {restored} < {watermark}"
                else:
                    assert _started_after(replica, restored.generation, st["updated_at"]), (
                        f"kill {i} ({mode}): status said {watermark} was replicated, the "
                        f"restore is {restored}"
                    )
            assert floor <= k <= max_id(db), f"kill {i} ({mode}): restored k={k}, floor={floor}"
            if i % 5 == 4:
                try:
                    k_ls = restore_litestream(replica, out + ".ls")
                except AssertionError as exc:
                    print("litestream restore failed:", exc)
                    # Litestream 0.3.13 cannot restore when the newest generation has no
                    # snapshot yet (we skip such a generation); that is its limitation.
                    assert not _newest_has_snapshot(replica)
                    stats["litestream_no_snapshot"] = stats.get("litestream_no_snapshot", 0) + 1
                else:
                    assert k_ls == k, f"kill {i}: litestream restored {k_ls}, we restored {k}"
                    stats["litestream_agreed"] += 1
                    stats["restores"] += 1
                remove_db(out + ".ls")
            remove_db(out)
            if i % 4 == 3:
                kind = POWER_LOSS[(i // 4) % len(POWER_LOSS)]
                if _power_loss(kind, meta, replica, rng):
                    stats["power_loss"] += 1

        writer.send_signal(15)
        last = int(writer.communicate(timeout=30)[0])
        # A clean run ships everything.
        p = start_replicator(cfg, log=log)
        procs.append(p)
        assert wait_for(lambda: _ready(meta, replica), timeout=30)
        time.sleep(1.0)
        assert stop(p) == 0
    out = str(tmp_path / "final.db")
    assert restore_ours(replica, out) == last
    assert restore_litestream(replica, out + ".ls") == last
    stats["restores"] += 2
    gens = generations_with_snapshot(replica)
    for g in gens:
        o = str(tmp_path / f"gen-{g}.db")
        assert 0 <= restore_ours(replica, o, generation=g) <= last
        stats["restores"] += 1
    stats["crash_points_hit"] = (
        f"{stats['crash_points_hit']}/{sum(m in CRASH_POINTS for m in schedule)}"
    )
    record(
        "kill9_replicator",
        **stats,
        floor=floor,
        last_commit=last,
        generations_restorable=len(gens),
        missed=",".join(missed) or "-",
        replica_tmp_left=len(tmp_objects(replica)),
        max_meta_mb=round(max_meta / 2**20, 1),
        seconds=round(time.monotonic() - t0, 1),
    )
    assert stats["missed_points"] <= max(2, n_kills // 10)
    assert max_meta < 64 << 20  # local staging stays bounded
