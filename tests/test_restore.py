"""Restore from replicas built by the test writer: real SQLite WAL bytes, exact objects.

Covers latest, -index and point-in-time restores, multiple WAL indexes, generations and
replicas, 64 KiB pages, and every failure mode (gap, missing index, missing initial
segment, flipped byte, truncated object, broken checksum chain, existing output): each
must fail loudly naming the object, create no output and leave no temp file behind.
"""

from __future__ import annotations

import errno
import os
import struct

import lz4.frame
import pytest
from click.testing import CliRunner
from replica_writer import ReplicaWriter, at, set_mtime
from support import content_hash, direct_io_ok, integrity_ok, is_direct, row_count

from litestream_fast import compression
from litestream_fast.cli import cli, commands  # noqa: F401  (registers the commands)
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.errors import (
    CorruptObject,
    LitestreamError,
    NoBackupFound,
    OutputExists,
    RestoreError,
)
from litestream_fast.restore import plan_restore, restore


def _writer(tmp_path, name="db", replica="replica", **kw) -> ReplicaWriter:
    w = ReplicaWriter(str(tmp_path / f"{name}.sqlite"), str(tmp_path / replica), **kw)
    w.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    return w


def _out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir(exist_ok=True)
    return d


def _restore_latest(w: ReplicaWriter, out: str, **kw):
    plan = plan_restore({"file": w.client}, **kw)
    return plan, restore(plan, out)


def _assert_clean_failure(out_dir, output):
    """No output and no temp file of any kind in the output directory."""
    assert not os.path.exists(output)
    assert sorted(os.listdir(out_dir)) == []


def _flip_byte(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))


def _rewrite_segment(path: str, fn) -> None:
    """Decompress a segment, transform its bytes, store it back (valid LZ4, same mtime)."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = lz4.frame.decompress(f.read())
    with open(path, "wb") as f:
        f.write(compression.compress(fn(bytearray(data))))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# --------------------------------------------------------------------------- happy paths


def test_latest_restore_equals_source(tmp_path):
    w = _writer(tmp_path)
    w.snapshot()
    for i in range(5):
        w.insert_rows(10 + i)
        w.sync()
    out_dir = _out_dir(tmp_path)
    out = str(out_dir / "restored.db")
    plan, result = _restore_latest(w, out)
    # A normal WAL-mode database file, nothing else left beside it.
    assert os.listdir(out_dir) == ["restored.db"]
    with open(out, "rb") as f:
        hdr = f.read(20)
    assert hdr[18:20] == b"\x02\x02"
    assert content_hash(out) == w.hash()
    assert integrity_ok(out)
    assert row_count(out) == sum(10 + i for i in range(5))
    assert result.generation == w.generation
    assert result.snapshot_index == 0
    assert result.segments == len(w.segments) == 5  # the schema is in the snapshot
    assert result.pos.index == 0 and result.pos.offset == w.offset
    assert result.db_size == os.path.getsize(out)
    assert result.bytes_downloaded == plan.total_bytes
    w.close()


def test_snapshot_only_restore(tmp_path):
    w = _writer(tmp_path)
    w.insert_rows(20)
    w.snapshot()
    out = str(_out_dir(tmp_path) / "r.db")
    plan, result = _restore_latest(w, out)
    assert plan.segments == () and result.segments == 0
    assert row_count(out) == 20 and integrity_ok(out)
    assert result.pos.offset == 0
    w.close()


def test_restore_across_wal_indexes_and_to_index(tmp_path):
    w = _writer(tmp_path)
    w.snapshot()
    hashes = {}
    for idx in range(4):
        for _ in range(3):
            w.insert_rows(25, size=300)
            w.sync(split=2)
        hashes[idx] = w.hash()
        if idx == 1:
            w.snapshot()  # a second snapshot, mid-index 1 (file = start of index 1)
        if idx < 3:
            w.next_index()
    out_dir = _out_dir(tmp_path)
    client = {"file": w.client}

    plan = plan_restore(client)
    assert plan.snapshot.index == 1 and plan.indexes == [1, 2, 3]
    restore(plan, str(out_dir / "latest.db"))
    assert content_hash(str(out_dir / "latest.db")) == hashes[3]

    for idx in range(4):
        plan = plan_restore(client, generation=w.generation, index=idx)
        assert plan.snapshot.index == (0 if idx == 0 else 1)
        assert plan.indexes[-1] == idx
        out = str(out_dir / f"idx{idx}.db")
        result = restore(plan, out, parallelism=1 + idx)
        assert content_hash(out) == hashes[idx], idx
        assert integrity_ok(out)
        assert result.pos.index == idx

    with pytest.raises(RestoreError, match="WAL index 00000009 not found"):
        plan_restore(client, generation=w.generation, index=9)
    with pytest.raises(RestoreError, match="must specify generation"):
        plan_restore(client, index=1)
    w.close()


def test_point_in_time_restore(tmp_path):
    w = _writer(tmp_path)
    w.snapshot(mtime=at(0))
    states = []  # (segment time, hash after it)
    for k in range(1, 7):
        w.insert_rows(k)
        w.sync(mtime=at(10 * k))
        states.append((10 * k, w.hash()))
        if k == 3:
            w.next_index()
            # The new index's snapshot is taken later than its first segment.
    w.snapshot(mtime=at(45))
    client = {"file": w.client}
    out_dir = _out_dir(tmp_path)
    expected_rows = 0
    for k, (t, h) in enumerate(states, start=1):
        expected_rows += k
        for probe in (t, t + 5):  # exactly at the segment's time, and between segments
            plan = plan_restore(client, timestamp=at(probe))
            out = str(out_dir / f"pitr-{probe}.db")
            result = restore(plan, out)
            assert content_hash(out) == h, probe
            assert row_count(out) == expected_rows
            assert result.restored_to == at(t)
            # Snapshot 1 (t=45) is used only once it exists.
            assert plan.snapshot.index == (1 if probe >= 45 else 0)

    # Before the first segment but after the snapshot: the snapshot's state (schema only).
    plan = plan_restore(client, timestamp=at(5))
    assert plan.segments == () and plan.snapshot.index == 0
    # Before the first snapshot: a clear error.
    with pytest.raises(NoBackupFound, match="no snapshot at or before 2023-12-31T23:59:59Z"):
        plan_restore(client, timestamp=at(-1))
    # After the last segment: the latest state.
    plan = plan_restore(client, timestamp=at(10_000))
    assert plan.segments == plan_restore(client).segments
    with pytest.raises(RestoreError, match="cannot specify index & timestamp"):
        plan_restore(client, generation=w.generation, index=0, timestamp=at(5))
    w.close()


def test_64k_pages(tmp_path):
    w = _writer(tmp_path, page_size=65536)
    assert w.page_size == 65536
    w.snapshot()
    for _ in range(3):
        w.insert_rows(30, size=5000)
        w.sync(split=2)
    w.next_index()
    w.insert_rows(10, size=70000)  # overflow pages
    w.sync()
    out = str(_out_dir(tmp_path) / "big.db")
    _restore_latest(w, out)
    assert content_hash(out) == w.hash() and integrity_ok(out)
    with open(out, "rb") as f:
        f.seek(16)
        assert struct.unpack(">H", f.read(2))[0] == 1  # 65536 encodes as 1
    w.close()


def test_generations_and_replicas(tmp_path):
    # Replica "a": generation g1 (old, times 0..20) and g2 (newer, times 100..120).
    old = _writer(tmp_path, name="old", replica="a", generation="1" * 16)
    old.snapshot(mtime=at(0))
    old.insert_rows(5)
    old.sync(mtime=at(20))
    new = _writer(tmp_path, name="new", replica="a", generation="2" * 16)
    new.snapshot(mtime=at(100))
    new.insert_rows(7)
    new.sync(mtime=at(120))
    # Replica "b": one generation ending at 110 (behind replica a's latest).
    b = _writer(tmp_path, name="b", replica="b", generation="3" * 16)
    b.snapshot(mtime=at(90))
    b.insert_rows(9)
    b.sync(mtime=at(110))
    clients = {"a": FileReplicaClient(str(tmp_path / "a")), "b": b.client}

    plan = plan_restore(clients)
    assert (plan.replica, plan.generation) == ("a", "2" * 16)
    plan = plan_restore(clients, replica="b")
    assert (plan.replica, plan.generation) == ("b", "3" * 16)
    plan = plan_restore(clients, generation="1" * 16)
    assert (plan.replica, plan.generation) == ("a", "1" * 16)
    # A time inside only g1's range picks g1; inside b's and g2's ranges: the later end.
    assert plan_restore(clients, timestamp=at(15)).generation == "1" * 16
    plan = plan_restore(clients, timestamp=at(105))
    assert (plan.replica, plan.generation) == ("a", "2" * 16)
    # Between generations (g1 ended at 20, nothing started before 90): g1's final state.
    plan = plan_restore(clients, timestamp=at(50))
    assert plan.generation == "1" * 16 and len(plan.segments) == 1
    out = str(_out_dir(tmp_path) / "g1.db")
    restore(plan, out)
    assert content_hash(out) == old.hash()

    with pytest.raises(RestoreError, match="replica 'zzz' not found"):
        plan_restore(clients, replica="zzz")
    with pytest.raises(NoBackupFound, match="generation ffffffffffffffff not in"):
        plan_restore(clients, generation="f" * 16)
    with pytest.raises(NoBackupFound, match="no matching backups found"):
        plan_restore({"e": FileReplicaClient(str(tmp_path / "empty"))})
    for x in (old, new, b):
        x.close()


def test_progress_and_integrity_modes(tmp_path):
    w = _writer(tmp_path)
    w.snapshot()
    for _ in range(4):
        w.insert_rows(50, size=500)
        w.sync()
    seen = []
    plan = plan_restore({"file": w.client})
    out_dir = _out_dir(tmp_path)
    restore(plan, str(out_dir / "a.db"), progress=seen.append, integrity_check="full")
    assert sum(seen) == plan.total_bytes

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    restore(plan, str(out_dir / "b.db"), progress=bar, integrity_check="none")
    assert bar.n == plan.total_bytes
    with pytest.raises(RestoreError, match="invalid integrity check"):
        restore(plan, str(out_dir / "c.db"), integrity_check="bogus")
    w.close()


# --------------------------------------------------------------------------- failures


@pytest.fixture
def three_index_replica(tmp_path):
    """Indexes 0..2, three segments each (schema segment first), snapshot at index 0."""
    w = _writer(tmp_path)
    w.snapshot()
    for idx in range(3):
        for _ in range(3):
            w.insert_rows(10, size=200)
            w.sync()
        if idx < 2:
            w.next_index()
    yield w
    w.close()


def _fail(w: ReplicaWriter, tmp_path, exc_type, match=None):
    out_dir = _out_dir(tmp_path)
    out = str(out_dir / "restored.db")
    with pytest.raises(exc_type, match=match) as info:
        plan = plan_restore({"file": w.client})
        restore(plan, out)
    _assert_clean_failure(out_dir, out)
    return info.value


def test_gap_names_missing_segment(three_index_replica, tmp_path):
    w = three_index_replica
    segs = [s for s in w.segments if s.index == 1]
    missing = segs[1]
    os.unlink(w.segment_path(1, missing.offset))
    err = _fail(w, tmp_path, RestoreError, "missing WAL segment")
    assert w.segment_path(1, missing.offset) in str(err)


def test_missing_index_named(three_index_replica, tmp_path):
    w = three_index_replica
    for s in w.segments:
        if s.index == 1:
            os.unlink(w.segment_path(1, s.offset))
    err = _fail(w, tmp_path, RestoreError, "missing WAL index")
    assert w.segment_path(1, 0) in str(err)


def test_missing_initial_segment_named(three_index_replica, tmp_path):
    w = three_index_replica
    os.unlink(w.segment_path(2, 0))
    err = _fail(w, tmp_path, RestoreError, "missing initial WAL segment")
    assert w.segment_path(2, 0) in str(err)


@pytest.mark.parametrize("where", ["middle", "header", "checksum"])
def test_flipped_byte_in_segment(three_index_replica, tmp_path, where):
    w = three_index_replica
    seg = [s for s in w.segments if s.index == 1][1]
    path = w.segment_path(1, seg.offset)
    size = os.path.getsize(path)
    pos = {"middle": size // 2, "header": 4, "checksum": size - 1}[where]
    _flip_byte(path, pos)
    err = _fail(w, tmp_path, CorruptObject)
    assert err.key == path


def test_flipped_byte_in_snapshot(three_index_replica, tmp_path):
    w = three_index_replica
    path = w.snapshot_path(0)
    _flip_byte(path, os.path.getsize(path) // 2)
    err = _fail(w, tmp_path, CorruptObject)
    assert err.key == path


@pytest.mark.parametrize("which", ["segment", "snapshot"])
def test_truncated_object(three_index_replica, tmp_path, which):
    w = three_index_replica
    path = w.snapshot_path(0) if which == "snapshot" else w.segment_path(2, w.segments[-1].offset)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 7)
    err = _fail(w, tmp_path, CorruptObject, "truncated|lz4")
    assert err.key == path


def test_broken_checksum_chain_names_segment(three_index_replica, tmp_path):
    """Valid LZ4, but a page byte changed: the WAL checksum chain breaks at that segment."""
    w = three_index_replica
    seg = [s for s in w.segments if s.index == 0][2]
    path = w.segment_path(0, seg.offset)

    def damage(data):
        data[100] ^= 0x01  # inside the first frame's page (frame header is 24 bytes)
        return data

    _rewrite_segment(path, damage)
    err = _fail(w, tmp_path, CorruptObject, "checksum")
    assert err.key == path


def test_segment_from_other_wal_breaks_salt_chain(three_index_replica, tmp_path):
    """A segment whose frames belong to another WAL (other salts) is rejected by name."""
    w = three_index_replica
    idx1 = [s for s in w.segments if s.index == 1]
    idx2 = [s for s in w.segments if s.index == 2]
    a = w.segment_path(1, idx1[1].offset)
    b = w.segment_path(2, idx2[1].offset)
    # Replace index 1's second segment with index 2's second segment re-based to the same
    # length (frames only), so offsets stay contiguous but salts differ.
    with open(b, "rb") as f:
        other = lz4.frame.decompress(f.read())
    with open(a, "rb") as f:
        mine = lz4.frame.decompress(f.read())
    frame = 24 + w.page_size
    assert len(mine) % frame == 0 and len(other) >= frame
    replacement = (other * (len(mine) // len(other) + 1))[: len(mine)]
    _rewrite_segment(a, lambda _d: bytearray(replacement))
    err = _fail(w, tmp_path, CorruptObject, "salt")
    assert err.key == a


def test_short_segment_is_a_gap(three_index_replica, tmp_path):
    """A segment that decompresses shorter than the next offset leaves a gap: named."""
    w = three_index_replica
    seg = [s for s in w.segments if s.index == 0][1]
    path = w.segment_path(0, seg.offset)
    frame = 24 + w.page_size
    _rewrite_segment(path, lambda d: d[:-frame])
    err = _fail(w, tmp_path, RestoreError, "missing WAL segment")
    with open(path, "rb") as f:
        end = seg.offset + len(lz4.frame.decompress(f.read()))
    assert w.segment_path(0, end) in str(err)


def test_output_exists_is_refused(three_index_replica, tmp_path):
    w = three_index_replica
    out_dir = _out_dir(tmp_path)
    out = out_dir / "restored.db"
    out.write_bytes(b"precious")
    plan = plan_restore({"file": w.client})
    with pytest.raises(OutputExists, match="already exists"):
        restore(plan, str(out))
    assert out.read_bytes() == b"precious"
    assert os.listdir(out_dir) == ["restored.db"]
    # A leftover WAL beside the output would be applied by SQLite to the restored DB.
    out.unlink()
    (out_dir / "restored.db-wal").write_bytes(b"x" * 100)
    with pytest.raises(RestoreError, match="WAL file from another database"):
        restore(plan, str(out))
    assert not out.exists()


def test_object_deleted_after_planning(three_index_replica, tmp_path):
    w = three_index_replica
    plan = plan_restore({"file": w.client})
    last = w.segments[-1]
    os.unlink(w.segment_path(last.index, last.offset))
    out_dir = _out_dir(tmp_path)
    with pytest.raises(LitestreamError) as info:
        restore(plan, str(out_dir / "r.db"))
    assert w.segment_path(last.index, last.offset) in str(info.value)
    assert os.listdir(out_dir) == []


def test_snapshot_not_sqlite(tmp_path):
    w = _writer(tmp_path)
    w.snapshot()
    path = w.snapshot_path(0)
    with open(path, "wb") as f:
        f.write(compression.compress(b"\x00" * 8192))
    err = _fail(w, tmp_path, CorruptObject, "not a SQLite database")
    assert err.key == path
    w.close()


# --------------------------------------------------------------------------- CLI


def _run(*args):
    return CliRunner().invoke(cli, list(args))


def test_cli_restore_flags(three_index_replica, tmp_path):
    w = three_index_replica
    url = "file://" + str(tmp_path / "replica")
    out = str(_out_dir(tmp_path) / "cli.db")

    r = _run("restore", url)
    assert r.exit_code == 1 and "output path required" in r.stderr

    r = _run("restore", "-o", out, url)
    assert r.exit_code == 0, r.output
    assert content_hash(out) == w.hash()

    r = _run("restore", "-o", out, url)
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert "Traceback" not in r.output

    r = _run("restore", "-if-db-not-exists", "-o", out, url)
    assert r.exit_code == 0

    empty = "file://" + str(tmp_path / "nothing")
    r = _run("restore", "-o", out + "2", empty)
    assert r.exit_code == 1 and "no matching backups found" in r.stderr
    r = _run("restore", "-if-replica-exists", "-o", out + "2", empty)
    assert r.exit_code == 0
    assert not os.path.exists(out + "2")

    r = _run("restore", "-timestamp", "yesterday", "-o", out + "3", url)
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "error: invalid -timestamp, must specify in ISO 8601 format (e.g. 2000-01-01T00:00:00Z)"
    )
    r = _run("restore", "-index", "1", "-o", out + "3", url)
    assert r.exit_code == 1 and "must specify generation" in r.stderr
    r = _run("restore", "-config", "/nonexistent.yml", "-o", out + "3", url)
    assert r.exit_code == 1 and "cannot specify a replica URL and the -config flag" in r.stderr

    r = _run("restore", "-generation", w.generation, "-index", "1", "-o", out + "4", "-json", url)
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(r.stdout)
    assert d["last_index"] == 1 and d["status"] == "restored"

    r = _run("restore", "-dry-run", "-o", out + "5", url)
    assert r.exit_code == 0 and "generation:  " + w.generation in r.stdout
    assert not os.path.exists(out + "5")
    r = _run("restore", "-dry-run", "-json", "-o", out + "5", url)
    d = json.loads(r.stdout)
    assert d["segments"] == len(w.segments) and d["wal_indexes"] == [
        "00000000",
        "00000001",
        "00000002",
    ]


def test_cli_restore_from_config_and_pitr(tmp_path):
    w = _writer(tmp_path)
    w.snapshot(mtime=at(0))
    hashes = []
    for k in range(1, 4):
        w.insert_rows(k)
        w.sync(mtime=at(10 * k))
        hashes.append(w.hash())
    cfg = tmp_path / "litestream.yml"
    cfg.write_text(
        f"dbs:\n  - path: {w.db_path}\n    replicas:\n      - name: backup\n"
        f"        path: {tmp_path / 'replica'}\n"
    )
    out = str(_out_dir(tmp_path) / "pitr.db")
    r = _run("restore", "-config", str(cfg), "-timestamp", "2024-01-01T00:00:25Z", "-o", out,
             w.db_path)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert content_hash(out) == hashes[1]
    # The default output is the DB path itself, which exists: refused.
    r = _run("restore", "-config", str(cfg), w.db_path)
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = _run("restore", "-config", str(cfg), "-replica", "nope", "-o", out + "x", w.db_path)
    assert r.exit_code == 1 and 'replica "nope" not found' in r.stderr
    r = _run("restore", "-config", str(cfg), "-o", out + "x", str(tmp_path / "other.db"))
    assert r.exit_code == 1 and "database not found in config" in r.stderr
    w.close()


def test_mtime_helper_roundtrip(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x")
    set_mtime(str(p), at(1.5))
    assert os.stat(p).st_mtime_ns == int(at(1.5).timestamp() * 1e9)


# ------------------------------------------------------------- output disk failures
# Fault injection in front of the real file system: the restore's own writes and fsyncs
# fail as a full or failing disk makes them fail.


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _eio(*_a, **_k):
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("fault", ["write", "snapshot-write", "background-fsync", "final-fsync"])
def test_output_disk_failure_is_one_clean_error(three_index_replica, tmp_path, monkeypatch, fault):
    """A full disk or an I/O error on the output side fails the restore with a
    RestoreError naming the temp file it was writing, and leaves nothing behind."""
    from litestream_fast import restore as restore_mod

    w = three_index_replica
    plan = plan_restore({"file": w.client})
    if fault == "write":
        monkeypatch.setattr(os, "pwrite", _enospc)
        match = "No space left"
    elif fault == "snapshot-write":
        monkeypatch.setattr(os, "write", _enospc)  # the snapshot's DirectWriter
        match = "No space left"
    elif fault == "background-fsync":
        monkeypatch.setattr(restore_mod, "FLUSH_BYTES", 1)
        monkeypatch.setattr(os, "fdatasync", _eio)
        match = "Input/output error"
    else:
        monkeypatch.setattr(os, "fsync", _eio)
        monkeypatch.setattr(os, "fdatasync", _eio)
        match = "fsync .*Input/output error"
    out_dir = _out_dir(tmp_path)
    out = str(out_dir / "restored.db")
    with pytest.raises(RestoreError, match=match) as info:
        restore(plan, out)
    assert str(out_dir) in str(info.value)
    monkeypatch.undo()
    _assert_clean_failure(out_dir, out)
    # The same replica restores fine once the disk is healthy again.
    restore(plan, out)
    assert integrity_ok(out)
    assert content_hash(out) == w.hash()


@pytest.mark.parametrize("limited", [True, False])
def test_big_segments_decode_one_at_a_time(tmp_path, monkeypatch, limited):
    """Segments over BIG_SEGMENT_BYTES hold up to two 4 MiB blocks each while they
    decode; however high -parallelism is, only one decodes at a time (memory), while
    small ones go on in parallel. The unlimited run shows the check can see overlap."""
    import threading
    import time

    from litestream_fast import restore as restore_mod

    w = _writer(tmp_path)
    w.snapshot()
    for _ in range(8):
        w.insert_rows(20, size=400)
        w.sync()
    monkeypatch.setattr(restore_mod, "BIG_SEGMENT_BYTES", 100 if limited else 1 << 40)
    lock, open_now, peak = threading.Lock(), [0], [0]
    real = w.client.wal_segment_reader

    class Slow:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            with lock:
                open_now[0] += 1
                peak[0] = max(peak[0], open_now[0])
            time.sleep(0.05)  # hold the "slot" long enough for other workers to try
            return self.f

        def __exit__(self, *exc):
            with lock:
                open_now[0] -= 1
            self.f.close()

    monkeypatch.setattr(w.client, "wal_segment_reader", lambda pos: Slow(real(pos)))
    out = str(_out_dir(tmp_path) / "out.db")
    plan = plan_restore({"file": w.client})
    assert len(plan.segments) >= 8 and all(s.size > 100 for s in plan.segments)
    restore(plan, out, parallelism=8)
    assert content_hash(out) == w.hash() and integrity_ok(out)
    assert (peak[0] == 1) if limited else (peak[0] > 1)
    w.close()


@pytest.mark.parametrize("cold", [False, True])
def test_snapshot_write_probes_the_page_cache(tmp_path, monkeypatch, cold):
    """The restored snapshot is written through the page cache (the integrity check reads
    it back at once) unless its first PROBE_BYTES show buffered writes are slow, as on a VM
    whose free memory is cold: then the rest goes out in aligned O_DIRECT writes where the
    filesystem allows it (directio.DirectWriter). The database is exact either way: the
    WAL checkpoint and the check read what O_DIRECT wrote."""
    from litestream_fast import directio

    w = _writer(tmp_path)
    w.insert_rows(600, size=4000)  # ~2.5 MiB: bigger than the probe plus one stage
    w.snapshot()
    for _ in range(3):
        w.insert_rows(50, size=3000)
        w.sync()
    writes: list[tuple[int, bool]] = []
    real = os.write

    def write(fd, data):
        writes.append((len(data), is_direct(fd)))
        return real(fd, data)

    monkeypatch.setattr(directio, "PROBE_BYTES", directio.DIRECT_STAGE)
    # Any cost at all counts as cold, or none does: the real clock, the branch forced.
    monkeypatch.setattr(directio, "COLD_NS_PER_BYTE", -1.0 if cold else float("inf"))
    monkeypatch.setattr(os, "write", write)
    out = str(_out_dir(tmp_path) / "r.db")
    _restore_latest(w, out)
    monkeypatch.undo()
    assert content_hash(out) == w.hash() and integrity_ok(out)
    direct = sum(n for n, d in writes if d)
    if cold and direct_io_ok(str(tmp_path)):
        assert direct >= 1 << 20 and direct % 4096 == 0
    else:
        assert direct == 0
