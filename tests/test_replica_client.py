"""One conformance suite for every ReplicaClient: the file client and the S3 client (on a
real SeaweedFS server). Each backend must list, write, read and delete the v0.3 layout the
same way, keep writes atomic and report storage times."""

from __future__ import annotations

import hashlib
import os
import random
import time
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest
from s3server import make_client
from support import direct_io_ok, is_direct

from litestream_fast import naming
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.errors import ObjectNotFound, ReplicaError
from litestream_fast.pos import Pos
from litestream_fast.replica_client import ReplicaClient

GEN = "0123456789abcdef"
GEN2 = "fedcba9876543210"
MiB = 1024 * 1024


class Backend:
    """Backend wraps a client with backend-specific test helpers."""

    def __init__(self, client: ReplicaClient, put_raw, list_raw, uploads=lambda: []) -> None:
        self.client = client
        self.put_raw = put_raw  # (relative key, bytes): store junk behind the client's back
        self.list_raw = list_raw  # () -> every stored key/path, relative to the root
        self.uploads = uploads  # () -> unfinished multipart uploads


def _file_backend(tmp_path) -> Backend:
    root = str(tmp_path / "replica")
    client = FileReplicaClient(root)

    def put_raw(rel: str, data: bytes) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def list_raw() -> list[str]:
        out = []
        for d, _, files in os.walk(root):
            out += [os.path.relpath(os.path.join(d, f), root) for f in files]
        return sorted(out)

    return Backend(client, put_raw, list_raw)


def _s3_backend(bucket) -> Backend:
    prefix = "apps/db/"
    client = make_client(bucket, prefix=prefix)
    raw = bucket.client()

    def put_raw(rel: str, data: bytes) -> None:
        raw.put_object(Bucket=bucket.name, Key=bucket.key(prefix + rel), Body=data)

    def list_raw() -> list[str]:
        return [k[len(prefix) :] for k in bucket.keys(prefix)]

    return Backend(client, put_raw, list_raw, bucket.uploads)


@pytest.fixture(params=["file", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "file":
        return _file_backend(tmp_path)
    return _s3_backend(request.getfixturevalue("s3_bucket"))


def read_all(f, chunk: int = 64 * 1024) -> bytes:
    out = bytearray()
    with f:
        while True:
            data = f.read(chunk)
            if not data:
                return bytes(out)
            out += data


def test_protocol(backend):
    assert isinstance(backend.client, ReplicaClient)
    assert backend.client.type in ("file", "s3")
    assert backend.client.describe()


def test_empty_replica(backend):
    c = backend.client
    assert c.generations() == []
    assert c.snapshots(GEN) == []
    assert c.wal_segments(GEN) == []
    c.delete_generation(GEN)  # missing is not an error
    c.delete_snapshot(GEN, 0)
    c.delete_wal_segments([Pos(GEN, 0, 0)])


def test_snapshot_roundtrip(backend):
    c = backend.client
    data = os.urandom(10_000)
    info = c.write_snapshot(GEN, 0, data)
    assert (info.generation, info.index, info.size) == (GEN, 0, len(data))
    info2 = c.write_snapshot(GEN, 0x1F, [data[:10], b"", data[10:5000], data[5000:]])
    assert info2.size == len(data)
    c.write_snapshot(GEN, 2, bytearray(b"abc"))
    c.write_snapshot(GEN, 3, memoryview(b"xyz"))
    c.write_snapshot(GEN, 4, b"")

    snaps = c.snapshots(GEN)
    assert [(s.index, s.size) for s in snaps] == [
        (0, 10_000),
        (2, 3),
        (3, 3),
        (4, 0),
        (0x1F, 10_000),
    ]
    assert all(s.generation == GEN for s in snaps)
    assert read_all(c.snapshot_reader(GEN, 0)) == data
    assert read_all(c.snapshot_reader(GEN, 0x1F)) == data
    assert read_all(c.snapshot_reader(GEN, 2)) == b"abc"
    assert read_all(c.snapshot_reader(GEN, 4)) == b""
    with c.snapshot_reader(GEN, 0) as f:  # small reads, then the rest
        assert f.read(1) == data[:1]
        assert f.read(99) == data[1:100]
        assert f.read() == data[100:]
    assert "generations/" + GEN + "/snapshots/0000001f.snapshot.lz4" in backend.list_raw()

    c.write_snapshot(GEN, 0, b"replaced")  # overwriting replaces
    assert read_all(c.snapshot_reader(GEN, 0)) == b"replaced"

    c.delete_snapshot(GEN, 0)
    c.delete_snapshot(GEN, 0)
    assert [s.index for s in c.snapshots(GEN)] == [2, 3, 4, 0x1F]


def test_wal_segments_roundtrip(backend):
    c = backend.client
    positions = [
        Pos(GEN, 1, 0),
        Pos(GEN, 0, 4152),
        Pos(GEN, 0, 0),
        Pos(GEN, 0, 0x4080),
        Pos(GEN2, 0, 0),
    ]
    payloads = {p: os.urandom(100 + i) for i, p in enumerate(positions)}
    for p, data in payloads.items():
        info = c.write_wal_segment(p, [data[:7], data[7:]])
        assert (info.pos, info.size) == (p, len(data))
    segs = c.wal_segments(GEN)
    assert [s.pos for s in segs] == [
        Pos(GEN, 0, 0),
        Pos(GEN, 0, 4152),
        Pos(GEN, 0, 0x4080),
        Pos(GEN, 1, 0),
    ]
    assert [s.size for s in segs] == [len(payloads[s.pos]) for s in segs]
    for p, data in payloads.items():
        assert read_all(c.wal_segment_reader(p)) == data
    assert f"generations/{GEN}/wal/00000000_00001038.wal.lz4" in backend.list_raw()

    c.delete_wal_segments([Pos(GEN, 0, 0), Pos(GEN, 0, 4152), Pos(GEN, 7, 7)])
    assert [s.pos for s in c.wal_segments(GEN)] == [Pos(GEN, 0, 0x4080), Pos(GEN, 1, 0)]
    assert [s.pos for s in c.wal_segments(GEN2)] == [Pos(GEN2, 0, 0)]
    c.delete_wal_segments([])


def test_generations_ignore_junk(backend):
    c = backend.client
    c.write_snapshot(GEN2, 0, b"s")
    c.write_wal_segment(Pos(GEN, 0, 0), b"w")
    for rel in (
        "generations/notagen/snapshots/00000000.snapshot.lz4",
        "generations/0123456789ABCDEF/snapshots/00000000.snapshot.lz4",  # upper case
        "generations/0123456789abcde/wal/00000000_00000000.wal.lz4",  # 15 digits
        "generations/0123456789abcdef0/wal/00000000_00000000.wal.lz4",  # 17 digits
        "generations/readme.txt",
        f"generations/{GEN}/snapshots/00000001.snapshot.lz4.tmp",
        f"generations/{GEN}/snapshots/0000001.snapshot.lz4",
        f"generations/{GEN}/snapshots/notes",
        f"generations/{GEN}/wal/00000000_00000010.wal.lz4.tmp",
        f"generations/{GEN}/wal/00000000.wal.lz4",
        f"generations/{GEN}/wal/sub/00000000_00000000.wal.lz4",
        f"generations/{GEN}/snapshots/sub/00000000.snapshot.lz4",
        "other/0123456789abcdef/snapshots/00000000.snapshot.lz4",
    ):
        backend.put_raw(rel, b"junk")
    assert c.generations() == [GEN, GEN2]
    assert c.snapshots(GEN) == []
    assert [s.pos for s in c.wal_segments(GEN)] == [Pos(GEN, 0, 0)]
    # Offsets past 4 GiB print with more than 8 digits; they still list.
    c.write_wal_segment(Pos(GEN, 0, 0x1_0000_0000), b"big")
    assert [s.offset for s in c.wal_segments(GEN)] == [0, 0x1_0000_0000]


def test_missing_objects(backend):
    c = backend.client
    for open_missing in (
        lambda: c.snapshot_reader(GEN, 0),
        lambda: c.wal_segment_reader(Pos(GEN, 0, 0)),
    ):
        with pytest.raises(ObjectNotFound) as e:
            open_missing()
        assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ReplicaError)
        assert GEN in str(e.value)
    c.write_snapshot(GEN, 1, b"x")
    with pytest.raises(ObjectNotFound):
        c.snapshot_reader(GEN, 0)


def test_delete_generation(backend):
    c = backend.client
    for g in (GEN, GEN2):
        c.write_snapshot(g, 0, b"s")
        for i in range(3):
            c.write_wal_segment(Pos(g, 0, i * 10), b"w")
    c.delete_generation(GEN)
    assert c.generations() == [GEN2]
    assert c.snapshots(GEN) == [] and c.wal_segments(GEN) == []
    assert len(c.wal_segments(GEN2)) == 3
    assert not [k for k in backend.list_raw() if GEN in k]


def test_object_key(backend):
    c = backend.client
    key = c.object_key(GEN, 5)
    assert key.endswith(f"generations/{GEN}/snapshots/00000005.snapshot.lz4")
    assert c.object_key(GEN, 5, 0x4080).endswith(f"generations/{GEN}/wal/00000005_00004080.wal.lz4")
    if c.type == "s3":  # under the prefix, no leading or doubled slash
        assert key == f"{c.prefix}/generations/{GEN}/snapshots/00000005.snapshot.lz4"
        assert c.prefix.endswith("apps/db") and not key.startswith("/") and "//" not in key


class Boom(Exception):
    pass


def _failing(chunks: int, chunk_size: int):
    for i in range(chunks):
        yield random.Random(i).randbytes(chunk_size)
    raise Boom("source failed")


@pytest.mark.parametrize("size", ["small", "multipart"])
def test_failed_streaming_write_leaves_nothing(backend, size):
    c = backend.client
    c.write_snapshot(GEN, 1, b"old")
    chunks, chunk_size = (3, 1000) if size == "small" else (17, MiB)  # 2 parts sent, then boom
    with pytest.raises(Boom):
        c.write_snapshot(GEN, 2, _failing(chunks, chunk_size))
    with pytest.raises(Boom):
        c.write_snapshot(GEN, 1, _failing(chunks, chunk_size))
    with pytest.raises(Boom):
        c.write_wal_segment(Pos(GEN, 0, 0), _failing(chunks, chunk_size))
    assert [s.index for s in c.snapshots(GEN)] == [1]
    assert read_all(c.snapshot_reader(GEN, 1)) == b"old"  # the old object survives whole
    assert c.wal_segments(GEN) == []
    assert backend.list_raw() == [f"generations/{GEN}/snapshots/00000001.snapshot.lz4"]
    assert backend.uploads() == []  # multipart uploads were aborted


def test_object_times(backend):
    c = backend.client
    before = datetime.now(timezone.utc)
    s = c.write_snapshot(GEN, 0, b"s")
    w = c.write_wal_segment(Pos(GEN, 0, 0), b"w")
    after = datetime.now(timezone.utc)
    slack = timedelta(seconds=2)  # S3 times have one-second resolution
    for info in (s, w, *c.snapshots(GEN), *c.wal_segments(GEN)):
        assert info.created_at.tzinfo is not None
        assert info.created_at.utcoffset() == timedelta(0)
        assert before - slack <= info.created_at <= after + slack
    assert abs(c.snapshots(GEN)[0].created_at - s.created_at) <= slack
    assert abs(c.wal_segments(GEN)[0].created_at - w.created_at) <= slack
    if c.type == "file":
        return
    # Later writes never list as older than earlier ones (PITR orders by these times).
    time.sleep(1.1)
    c.write_wal_segment(Pos(GEN, 0, 100), b"w2")
    segs = c.wal_segments(GEN)
    assert segs[1].created_at > segs[0].created_at


def test_large_streaming_snapshot(backend):
    """56 MiB of 1 MiB chunks: multipart on S3, bounded memory, exact round trip."""
    c = backend.client
    n = 56

    def chunks():
        for i in range(n):
            yield random.Random(i).randbytes(MiB)

    want = hashlib.sha256()
    for chunk in chunks():
        want.update(chunk)
    c.write_snapshot(GEN, 0, b"warm-up")  # creates the boto3 client (models: MiBs of objects)
    tracemalloc.start()
    try:
        info = c.write_snapshot(GEN, 3, chunks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.size == n * MiB
    assert c.snapshots(GEN)[-1].size == n * MiB
    got = hashlib.sha256()
    with c.snapshot_reader(GEN, 3) as f:
        while chunk := f.read(3 * MiB + 17):
            got.update(chunk)
    assert got.hexdigest() == want.hexdigest()
    if c.type == "s3":
        # ~4 parts of 8 MiB in memory at once (2 uploading, 1-2 being cut), not the payload.
        assert peak < 44 * MiB, f"peak {peak / MiB:.1f} MiB"
        head = backend_client_head(c, c.object_key(GEN, 3))
        assert head["ETag"].strip('"').endswith("-7")  # 7 parts of 8 MiB
        assert backend.uploads() == []


def backend_client_head(c, key: str) -> dict:
    return c._client().head_object(Bucket=c.bucket, Key=key)


def test_op_counters(backend):
    c = backend.client
    assert c.op_counts == {"GET": 0, "PUT": 0, "LIST": 0, "DELETE": 0}
    c.write_snapshot(GEN, 0, b"12345")
    c.write_wal_segment(Pos(GEN, 0, 0), b"123")
    assert c.op_counts["PUT"] == 2 and c.op_bytes["PUT"] == 8
    c.generations()
    c.snapshots(GEN)
    c.wal_segments(GEN)
    assert c.op_counts["LIST"] == 3
    assert read_all(c.snapshot_reader(GEN, 0)) == b"12345"
    assert c.op_counts["GET"] == 1
    c.delete_snapshot(GEN, 0)
    c.delete_wal_segments([Pos(GEN, 0, 0)])
    assert c.op_counts == {"GET": 1, "PUT": 2, "LIST": 3, "DELETE": 2}
    if c.type != "s3":
        return
    assert c.op_bytes["GET"] == 5  # bytes read over the network
    # A multipart object: create + 2 parts + complete.
    c.write_snapshot(GEN, 1, [b"x" * (9 * MiB)])
    assert c.op_counts["PUT"] == 2 + 4
    assert c.op_bytes["PUT"] == 8 + 9 * MiB


def test_naming_matches_litestream(backend):
    c = backend.client
    c.write_snapshot(GEN, 0, b"s")
    c.write_wal_segment(Pos(GEN, 0, 0x4080), b"w")
    assert backend.list_raw() == [
        naming.join("generations", GEN, "snapshots", "00000000.snapshot.lz4"),
        naming.join("generations", GEN, "wal", "00000000_00004080.wal.lz4"),
    ]


# ---------------------------------------------------------------- directory objects, O_DIRECT


@pytest.fixture
def write_log(monkeypatch):
    """Records (length, O_DIRECT set) of every os.write the directory client makes."""
    from litestream_fast.clients import file as file_mod

    calls: list[tuple[int, bool]] = []
    real = os.write

    def write(fd, data):
        calls.append((len(data), is_direct(fd)))
        return real(fd, data)

    monkeypatch.setattr(file_mod.os, "write", write)
    return calls


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, (1 << 20) - 1, 1 << 20, (1 << 20) + 1,
                                  3 * (1 << 20) + 5000])  # fmt: skip
def test_objects_are_exact_and_big_ones_bypass_the_page_cache(tmp_path, write_log, size):
    """Objects of DIRECT_STAGE bytes or more go out in aligned O_DIRECT writes (when the
    filesystem allows it) plus a buffered tail; smaller ones are one buffered write. The
    content is exact whatever the chunking of the payload."""
    from litestream_fast.clients.file import atomic_write
    from litestream_fast.directio import DIRECT_STAGE

    data = random.Random(size).randbytes(size)
    chunks, i, rng = [], 0, random.Random(1)
    while i < size:
        k = rng.choice([1, 7, 4096, 100_000, 700_000])
        chunks.append(memoryview(data)[i : i + k])
        i += k
    path = str(tmp_path / "obj")
    assert atomic_write(path, iter(chunks)).st_size == size
    with open(path, "rb") as f:
        assert f.read() == data
    assert not os.path.exists(path + ".tmp")
    direct = [n for n, d in write_log if d]
    assert sum(n for n, _ in write_log) == size
    if size < DIRECT_STAGE or not direct_io_ok(str(tmp_path)):
        assert direct == []
    else:
        assert sum(direct) == size - size % 4096
        assert all(n % 4096 == 0 for n in direct)
        assert [n for n, d in write_log if not d] == ([size % 4096] if size % 4096 else [])


@pytest.mark.parametrize("fault", ["einval", "short"])
def test_object_write_falls_back_when_o_direct_fails(tmp_path, monkeypatch, fault):
    """A filesystem that takes the O_DIRECT flag but refuses the write (EINVAL), or a short
    direct write, leaves the rest of the object to buffered writes, content intact."""
    import errno

    from litestream_fast.clients import file as file_mod

    real = os.write
    seen: list[bool] = []

    def write(fd, data):
        direct = is_direct(fd)
        seen.append(direct)
        if direct and fault == "einval":
            raise OSError(errno.EINVAL, "Invalid argument")
        if direct and fault == "short":
            return real(fd, memoryview(data)[: len(data) // 2 + 1])  # unaligned from here
        return real(fd, data)

    monkeypatch.setattr(file_mod.os, "write", write)
    data = random.Random(2).randbytes(5 * (1 << 20) + 123)
    path = str(tmp_path / "obj")
    assert file_mod.atomic_write(path, [data[: 1 << 19], data[1 << 19 :]]).st_size == len(data)
    with open(path, "rb") as f:
        assert f.read() == data
    if direct_io_ok(str(tmp_path)):
        assert seen.count(True) == 1  # tried once, then buffered to the end


def test_two_direct_writers_in_one_thread_do_not_share_a_stage(tmp_path):
    """Staging buffers are reused per thread, but only once their writer is closed."""
    from litestream_fast.directio import DirectWriter

    a, b = (random.Random(k).randbytes(3 * (1 << 20) + 77) for k in (1, 2))
    fds = [os.open(str(tmp_path / n), os.O_WRONLY | os.O_CREAT, 0o600) for n in ("a", "b")]
    wa, wb = DirectWriter(fds[0]), DirectWriter(fds[1])
    for i in range(0, len(a), 300_000):
        wa.write(a[i : i + 300_000])
        wb.write(b[i : i + 300_000])
    wa.close()
    wb.close()
    for fd in fds:
        os.close(fd)
    assert (tmp_path / "a").read_bytes() == a
    assert (tmp_path / "b").read_bytes() == b


@pytest.mark.parametrize("ns_per_byte", [0.2, 3.0])
def test_a_probing_writer_goes_direct_only_where_the_page_cache_is_slow(
    tmp_path, monkeypatch, ns_per_byte
):
    """A probing DirectWriter (a restored database) writes its first PROBE_BYTES buffered
    and times them with the thread's CPU clock: at 0.2 ns a byte (warm memory) the whole
    file stays buffered, at 3 ns (a VM's cold memory) the rest goes out with O_DIRECT where
    the filesystem allows it. The content is exact either way."""
    from litestream_fast import directio

    clock = [0]
    real = os.write
    log: list[tuple[int, bool]] = []

    def write(fd, data):
        n = real(fd, data)
        clock[0] += int(n * ns_per_byte)  # what the write cost, as the thread clock sees it
        log.append((n, is_direct(fd)))
        return n

    monkeypatch.setattr(directio.os, "write", write)
    monkeypatch.setattr(directio.time, "thread_time_ns", lambda: clock[0])
    probe = 2 * directio.DIRECT_STAGE
    data = random.Random(3).randbytes(5 * directio.DIRECT_STAGE + 999)
    fd = os.open(str(tmp_path / "db"), os.O_WRONLY | os.O_CREAT, 0o600)
    w = directio.DirectWriter(fd, probe=probe)
    for i in range(0, len(data), 250_000):
        w.write(data[i : i + 250_000])
    w.close()
    os.close(fd)
    monkeypatch.undo()
    assert (tmp_path / "db").read_bytes() == data
    assert w.probed_ns_per_byte == pytest.approx(ns_per_byte, rel=0.01)
    assert sum(n for n, _ in log[:2]) == probe and not any(d for _, d in log[:2])
    direct = sum(n for n, d in log if d)
    if ns_per_byte > directio.COLD_NS_PER_BYTE and direct_io_ok(str(tmp_path)):
        assert direct == 3 * directio.DIRECT_STAGE  # all whole stages after the probe
    else:
        assert direct == 0
