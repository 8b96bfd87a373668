"""Compatibility with the real Litestream v0.3.13 binary.

Litestream replicates a database to a file replica while the test writes (single-row
commits about a second apart, then a bulk insert past min-checkpoint-page-count so its
PASSIVE checkpoint starts WAL index 1, then more commits). We restore latest, by index and
by timestamp and compare with the source and with Litestream's own restore of the same
replica; our ``generations``/``snapshots``/``wal`` listings must match Litestream's.
Litestream must also accept the replicas our test writer builds (so the damage tests in
test_restore.py start from a valid v0.3 replica).
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta, timezone

import pytest
from click.testing import CliRunner
from replica_writer import ReplicaWriter
from support import connect, content_hash, integrity_ok, litestream_bin, row_count

from litestream_fast.cli import cli, commands  # noqa: F401  (registers the commands)
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.restore import plan_restore, restore

pytestmark = pytest.mark.compat

ENV = {**os.environ, "TZ": "UTC"}


def _ls_restore(exe: str, url: str, out: str, *args: str) -> None:
    """Litestream's own restore into ``out`` (it leaves .tmp-shm/.tmp-wal beside it)."""
    r = subprocess.run([exe, "restore", *args, "-o", out, url], capture_output=True, text=True,
                       env=ENV, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    exe = litestream_bin("0.3.13")
    d = tmp_path_factory.mktemp("compat")
    db, replica = str(d / "app.db"), str(d / "replica")
    conn = connect(db)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    with open(d / "litestream.log", "w") as log:
        proc = subprocess.Popen([exe, "replicate", db, "file://" + replica], stdout=log,
                                stderr=subprocess.STDOUT, env=ENV)  # fmt: skip
    try:
        time.sleep(1.5)  # first sync: generation, snapshot, first segment
        for _ in range(3):
            conn.execute("INSERT INTO t(v) VALUES (randomblob(100))")
            time.sleep(1.1)
        with conn:  # > 1000 pages: Litestream's PASSIVE checkpoint starts WAL index 1
            for _ in range(1200):
                conn.execute("INSERT INTO t(v) VALUES (randomblob(4000))")
        time.sleep(2.2)
        for _ in range(2):
            conn.execute("INSERT INTO t(v) VALUES (randomblob(100))")
            time.sleep(1.1)
        time.sleep(1.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    source_hash = content_hash(db)
    rows = row_count(db)
    conn.close()
    yield {"exe": exe, "dir": d, "db": db, "replica": replica, "url": "file://" + replica,
           "hash": source_hash, "rows": rows}  # fmt: skip


def test_replica_has_several_wal_indexes(replicated):
    client = FileReplicaClient(replicated["replica"])
    (gen,) = client.generations()
    segs = client.wal_segments(gen)
    assert max(s.index for s in segs) >= 1
    assert len({s.created_at for s in segs}) >= 4


def test_restore_latest(replicated, tmp_path):
    client = FileReplicaClient(replicated["replica"])
    plan = plan_restore({"file": client})
    assert len(plan.indexes) >= 2
    out = str(tmp_path / "ours.db")
    result = restore(plan, out)
    assert integrity_ok(out)
    assert content_hash(out) == replicated["hash"]
    assert row_count(out) == replicated["rows"] == 1205
    theirs = str(tmp_path / "theirs.db")
    _ls_restore(replicated["exe"], replicated["url"], theirs)
    assert content_hash(theirs) == content_hash(out)
    assert result.pos.index == plan.indexes[-1]


def test_restore_by_index(replicated, tmp_path):
    client = FileReplicaClient(replicated["replica"])
    (gen,) = client.generations()
    plan = plan_restore({"file": client}, generation=gen, index=0)
    assert plan.indexes == [0]
    out = str(tmp_path / "ours.db")
    restore(plan, out)
    theirs = str(tmp_path / "theirs.db")
    _ls_restore(replicated["exe"], replicated["url"], theirs, "-generation", gen, "-index", "0")
    assert content_hash(out) == content_hash(theirs)
    assert integrity_ok(out)


def test_restore_by_timestamp(replicated, tmp_path):
    client = FileReplicaClient(replicated["replica"])
    (gen,) = client.generations()
    segs = client.wal_segments(gen)
    times = sorted({s.created_at for s in segs})
    # Probe halfway between consecutive segment times (they are ~1 s apart).
    probes = [
        a + (b - a) / 2
        for a, b in zip(times, times[1:], strict=False)
        if b - a > timedelta(seconds=0.3)
    ]
    assert len(probes) >= 4
    counts = []
    for i, t in enumerate(probes):
        plan = plan_restore({"file": client}, timestamp=t)
        assert all(s.created_at <= t for s in plan.segments)
        out = str(tmp_path / f"ours-{i}.db")
        restore(plan, out)
        assert integrity_ok(out)
        stamp = t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        theirs = str(tmp_path / f"theirs-{i}" / "db")
        _ls_restore(replicated["exe"], replicated["url"], theirs, "-timestamp", stamp)
        assert content_hash(out) == content_hash(theirs), stamp
        counts.append(row_count(out))
    assert counts == sorted(counts)
    assert len(set(counts)) >= 4  # distinct states, not just "latest" every time
    assert counts[-1] <= replicated["rows"]


def _run(*args):
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, r.output
    return r.stdout


def _theirs(exe, *args):
    r = subprocess.run([exe, *args], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_inspect_output_matches_litestream(replicated):
    exe, url = replicated["exe"], replicated["url"]
    assert _run("snapshots", url) == _theirs(exe, "snapshots", url)
    assert _run("wal", url) == _theirs(exe, "wal", url)
    (gen,) = FileReplicaClient(replicated["replica"]).generations()
    assert _run("wal", "-generation", gen, url) == _theirs(exe, "wal", "-generation", gen, url)
    ours = [line.split() for line in _run("generations", url).splitlines()]
    theirs = [line.split() for line in _theirs(exe, "generations", url).splitlines()]
    assert len(ours) == len(theirs) == 2
    assert ours[0] == theirs[0] == ["name", "generation", "lag", "start", "end"]
    # Lag is measured against "now"; every other column must be equal.
    assert [c for i, c in enumerate(ours[1]) if i != 2] == [
        c for i, c in enumerate(theirs[1]) if i != 2
    ]


def test_inspect_objects_listed(replicated):
    """Every object in the replica appears once in our listings with its stored size."""
    url = replicated["url"]
    root = os.path.join(replicated["replica"], "generations")
    (gen,) = os.listdir(root)
    wal_dir = os.path.join(root, gen, "wal")
    expected = sorted(
        (int(n[:8], 16), int(n[9:17], 16), os.path.getsize(os.path.join(wal_dir, n)))
        for n in os.listdir(wal_dir)
    )
    rows = [line.split() for line in _run("wal", url).splitlines()[1:]]
    assert sorted((int(r[2]), int(r[3]), int(r[4])) for r in rows) == expected
    assert all(r[0] == "file" and r[1] == gen for r in rows)


def test_litestream_restores_test_writer_replica(tmp_path):
    """The test writer's replicas are valid v0.3 replicas: Litestream restores them too."""
    w = ReplicaWriter(str(tmp_path / "w.db"), str(tmp_path / "replica"))
    w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    w.snapshot()
    for idx in range(3):
        for _ in range(2):
            w.insert_rows(20, size=300)
            w.sync(split=2)
        if idx < 2:
            w.next_index()
    theirs = str(tmp_path / "theirs" / "db")
    _ls_restore(litestream_bin("0.3.13"), "file://" + str(tmp_path / "replica"), theirs)
    assert content_hash(theirs) == w.hash()
    w.close()
