"""The WAL kernels, compiled and pure-Python, on golden WALs made by real SQLite and on
synthetic and mutated ones: exact offsets, stop reasons, header errors, and agreement
between the two backends (hypothesis) and with what a fresh SQLite connection sees."""

from __future__ import annotations

import mmap
import os
import shutil
import struct

import apsw
import pytest
from hypothesis import given
from hypothesis import strategies as st

from litestream_fast import _walcore_py, wal
from litestream_fast._backend import BACKEND, core
from litestream_fast.errors import InvalidWALHeader, MisalignedOffset

if BACKEND == "cython" or os.environ.get("LITESTREAM_FAST_NO_EXTENSIONS", "") in ("", "0"):
    from litestream_fast import _walcore as _compiled  # must import: a missing build fails
else:  # the Python-only run still compares against the compiled module when it exists
    try:
        from litestream_fast import _walcore as _compiled
    except ImportError:  # pragma: no cover
        _compiled = None

BACKENDS = {"python": _walcore_py, **({"cython": _compiled} if _compiled else {})}
PAGE_SIZES = [512, 1024, 4096, 8192, 16384, 32768, 65536]


# ------------------------------------------------------------------ builders


def header(page_size: int, salt1: int, salt2: int, big_endian: bool = False, seq: int = 0) -> bytes:
    magic = wal.WAL_MAGIC_BE if big_endian else wal.WAL_MAGIC_LE
    h = struct.pack(">6I", magic, wal.WAL_VERSION, page_size, seq, salt1, salt2)
    c0, c1 = _walcore_py.wal_checksum(h, 0, 0, big_endian)
    return h + struct.pack(">2I", c0, c1)


def build(
    page_size: int, txns: list[int], *, big_endian=False, salt=(7, 9), tail: int = 0, seed=1
) -> bytes:
    """A valid WAL: ``txns`` lists frames per transaction; ``tail`` uncommitted frames."""
    hdr = header(page_size, *salt, big_endian)
    c0, c1 = struct.unpack(">2I", hdr[24:])
    out = [hdr]
    pgno = 0
    sizes = [(n, True) for n in txns] + ([(tail, False)] if tail else [])
    for n, commit in sizes:
        for i in range(n):
            pgno += 1
            page = (struct.pack(">I", seed * 1000003 + pgno) * (page_size // 4))[:page_size]
            fh = struct.pack(">4I", pgno, pgno if commit and i == n - 1 else 0, *salt)
            c0, c1 = _walcore_py.wal_checksum(fh[:8], c0, c1, big_endian)
            c0, c1 = _walcore_py.wal_checksum(page, c0, c1, big_endian)
            out += [fh, struct.pack(">2I", c0, c1), page]
    return b"".join(out)


def rechecksum(buf: bytes, big_endian: bool) -> bytes:
    """Rewrite a WAL with the other magic and all checksums recomputed (byte-order swap)."""
    page_size = struct.unpack(">I", buf[8:12])[0]
    b = bytearray(buf)
    struct.pack_into(">I", b, 0, wal.WAL_MAGIC_BE if big_endian else wal.WAL_MAGIC_LE)
    c0, c1 = _walcore_py.wal_checksum(bytes(b[:24]), 0, 0, big_endian)
    struct.pack_into(">2I", b, 24, c0, c1)
    fs = 24 + page_size
    for off in range(32, len(b) - fs + 1, fs):
        c0, c1 = _walcore_py.wal_checksum(bytes(b[off : off + 8]), c0, c1, big_endian)
        c0, c1 = _walcore_py.wal_checksum(bytes(b[off + 24 : off + fs]), c0, c1, big_endian)
        struct.pack_into(">2I", b, off + 16, c0, c1)
    return bytes(b)


def scan_with(mod, buf: bytes, offset: int = 32):
    h = mod.parse_wal_header(buf)
    magic, _v, ps, _seq, s1, s2, c1, c2 = h
    return mod.scan_frames(buf, offset, ps, s1, s2, c1, c2, magic == wal.WAL_MAGIC_BE)


def sqlite_wal(tmp_path, page_size: int, commits: int = 5) -> tuple[bytes, bytes, str]:
    path = str(tmp_path / f"g{page_size}.db")
    c = apsw.Connection(path)
    c.execute(f"PRAGMA page_size={page_size}")
    c.execute("PRAGMA journal_mode=wal").fetchall()
    c.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    c.execute("CREATE TABLE t (x)")
    for i in range(commits):
        c.execute("INSERT INTO t VALUES (randomblob(?))", (100 + i * 300,))
    db = open(path, "rb").read()
    w = open(path + "-wal", "rb").read()
    c.close()
    return db, w, path


# -------------------------------------------------------------------- golden


def test_crc64_known_vector_and_incremental():
    for mod in BACKENDS.values():
        assert mod.crc64(b"123456789") == 0xB90956C775A41001
        data = os.urandom(1000)
        assert mod.crc64(data[300:], mod.crc64(data[:300])) == mod.crc64(data)
        assert mod.crc64(b"") == 0


@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("big_endian", [False, True])
def test_real_sqlite_wal_all_page_sizes_both_orders(tmp_path, page_size, big_endian):
    _db, w, _ = sqlite_wal(tmp_path, page_size)
    if big_endian:
        w = rechecksum(w, True)
    fs = 24 + page_size
    for mod in BACKENDS.values():
        r = scan_with(mod, w)
        assert r[0] == len(w) and r[5] == wal.STOP_EOF and r[6] == len(w)
        assert r[1] == (len(w) - 32) // fs
        assert mod.parse_wal_header(w)[2] == page_size


def test_restarted_wal_with_stale_frames(tmp_path):
    """After a checkpoint and restart, frame 1 has new salts and the old frames stay."""
    path = str(tmp_path / "r.db")
    c = apsw.Connection(path)
    c.execute("PRAGMA journal_mode=wal").fetchall()
    c.execute("PRAGMA wal_autocheckpoint=0").fetchall()
    c.execute("CREATE TABLE t (x)")
    for i in range(10):
        c.execute("INSERT INTO t VALUES (?)", (i,))
    old = open(path + "-wal", "rb").read()
    c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    c.execute("INSERT INTO t VALUES (99)")
    w = open(path + "-wal", "rb").read()
    c.close()
    assert len(w) == len(old)
    h = wal.WalHeader.parse(w)
    assert h.salt1 == (wal.WalHeader.parse(old).salt1 + 1) & 0xFFFFFFFF
    for mod in BACKENDS.values():
        r = scan_with(mod, w)
        assert r[0] == 32 + (24 + h.page_size)  # only the new transaction's single frame
        assert r[5] == wal.STOP_SALT_MISMATCH


def test_torn_frame_uncommitted_tail_and_mutations():
    ps = 1024
    fs = 24 + ps
    good = build(ps, [2, 3], tail=2)
    commit_end = 32 + 5 * fs
    for mod in BACKENDS.values():
        r = scan_with(mod, good)
        assert (r[0], r[1], r[2], r[5], r[6]) == (commit_end, 5, 5, wal.STOP_EOF, 32 + 7 * fs)
        torn = good[: commit_end + fs + 100]
        r = scan_with(mod, torn)
        assert (r[0], r[5], r[6]) == (commit_end, wal.STOP_SHORT_FRAME, commit_end + fs)
        flipped = bytearray(good)
        flipped[32 + 3 * fs + 50] ^= 1  # inside frame 4's page: breaks the chain there
        r = scan_with(mod, bytes(flipped))
        assert (r[0], r[5]) == (32 + 2 * fs, wal.STOP_CHECKSUM_MISMATCH)
        swapped = bytearray(good)
        struct.pack_into(">2I", swapped, 32 + 2 * fs + 8, 9, 7)
        r = scan_with(mod, bytes(swapped))
        assert (r[0], r[5]) == (32 + 2 * fs, wal.STOP_SALT_MISMATCH)
        zeroed = bytearray(good)
        struct.pack_into(">I", zeroed, 32 + 4 * fs + 4, 0)  # commit field of txn 2's last frame
        r = scan_with(mod, bytes(zeroed))
        assert r[0] == 32 + 2 * fs and r[5] == wal.STOP_CHECKSUM_MISMATCH


def test_header_errors_and_misaligned_offsets():
    good = build(4096, [1])
    cases = {
        "too short": good[:20],
        "invalid wal magic": b"\x00\x00\x00\x00" + good[4:],
        "unsupported wal version": good[:4] + struct.pack(">I", 3007001) + good[8:],
        "invalid wal page size": good[:8] + struct.pack(">I", 3000) + good[12:],
        "checksum mismatch": good[:24] + bytes(8) + good[32:],
    }
    for mod in BACKENDS.values():
        for msg, buf in cases.items():
            with pytest.raises(InvalidWALHeader, match=msg):
                mod.parse_wal_header(buf)
        for off in (0, 31, 33, 32 + 4096):
            with pytest.raises(MisalignedOffset):
                mod.scan_frames(good, off, 4096, 7, 9, 0, 0, False)
        with pytest.raises(ValueError):
            mod.wal_checksum(b"1234567", 0, 0, False)


def test_buffers_mmap_and_memoryview(tmp_path):
    w = build(4096, [2, 2, 1])
    p = tmp_path / "w"
    p.write_bytes(w)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for mod in BACKENDS.values():
            assert scan_with(mod, m) == scan_with(mod, w)
            with memoryview(m) as mv:
                assert (
                    mod.scan_frames(
                        mv[: 32 + 2 * 4120], 32, 4096, 7, 9, *struct.unpack(">2I", w[24:32]), False
                    )[0]
                    == 32 + 2 * 4120
                )
    for mod in BACKENDS.values():
        fs = 4120
        assert mod.find_page_frame(w, 32, len(w), 4096, 3) == 32 + 2 * fs
        assert mod.find_page_frame(w, 32, len(w), 4096, 99) == -1
        assert mod.find_page_frame(w, 32 + 3 * fs, len(w), 4096, 3) == -1


def test_commit_boundaries_agree_with_sqlite(tmp_path):
    """Cut a real WAL at every frame: the rows a fresh SQLite connection sees equal the
    commits before our commit_end."""
    db, w, _ = sqlite_wal(tmp_path, 1024, commits=6)
    h = wal.WalHeader.parse(w)
    fs = 24 + 1024
    commits_at = {}
    pos = 32
    while pos < len(w):
        if struct.unpack(">I", w[pos + 4 : pos + 8])[0]:
            commits_at[pos + fs] = len(commits_at)
        pos += fs
    for cut in range(32, len(w) + 1, fs):
        r = wal.scan(w[:cut], h, 32)
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "x.db").write_bytes(db)
        (d / "x.db-wal").write_bytes(w[:cut])
        c = apsw.Connection(str(d / "x.db"))
        try:
            tables = c.execute("SELECT count(*) FROM sqlite_master WHERE name='t'").fetchall()[0][0]
            rows = c.execute("SELECT count(*) FROM t").fetchall()[0][0] if tables else -1
        finally:
            c.close()
        shutil.rmtree(d)
        committed = [n for end, n in commits_at.items() if end <= r.commit_end]
        # commit 0 created the table; commit k>0 inserted row k.
        expect = -1 if not committed else max(committed)
        assert rows == expect, (cut, r)


# ----------------------------------------------------------------- hypothesis


@pytest.mark.hypothesis
@given(
    page_size=st.sampled_from([512, 1024, 4096]),
    txns=st.lists(st.integers(1, 4), min_size=0, max_size=6),
    tail=st.integers(0, 3),
    big_endian=st.booleans(),
    mutation=st.sampled_from(["none", "flip", "truncate", "swap_salts", "zero_commit"]),
    where=st.floats(0, 1),
)
def test_backends_agree_on_valid_and_mutated_wals(
    page_size, txns, tail, big_endian, mutation, where
):
    w = bytearray(build(page_size, txns, big_endian=big_endian, tail=tail))
    fs = 24 + page_size
    nframes = (len(w) - 32) // fs
    if mutation != "none" and nframes:
        k = min(int(where * nframes), nframes - 1)
        off = 32 + k * fs
        if mutation == "flip":
            w[off + int(where * (fs - 1))] ^= 0x40
        elif mutation == "truncate":
            del w[off + int(where * fs) :]
        elif mutation == "swap_salts":
            w[off + 8 : off + 16] = w[off + 12 : off + 16] + w[off + 8 : off + 12]
        elif mutation == "zero_commit":
            w[off + 4 : off + 8] = bytes(4)
    buf = bytes(w)
    results = {}
    for name, mod in BACKENDS.items():
        try:
            h = mod.parse_wal_header(buf)
        except InvalidWALHeader as exc:
            results[name] = ("bad header", str(exc))
            continue
        results[name] = (
            scan_with(mod, buf),
            mod.crc64(buf),
            mod.find_page_frame(buf, 32, len(buf), page_size, 2),
            h,
        )
    assert len(set(map(repr, results.values()))) == 1, results
    if mutation == "none":
        r = results["python"][0]
        assert r[0] == 32 + sum(txns) * fs  # the end of the last commit written
        assert r[2] == sum(txns) if txns else r[2] == 0


def test_loaded_backend_is_used():
    assert core is (_walcore_py if BACKEND == "python" else _compiled)


# ------------------------------------------------------------ LZ4 blocks, XXH32


@given(
    data=st.binary(max_size=20_000) | st.integers(0, 300).map(lambda n: b"page%05d" % n * 500),
    cut=st.integers(0, 40),
    flip=st.none() | st.integers(0, 10**6),
    room=st.integers(-5, 5),
)
def test_lz4_block_kernel_backends_agree_with_python_lz4(data, cut, flip, room):
    """lz4_decompress_into on valid, cut, flipped and too-small inputs: both backends give
    the same length and bytes, and valid blocks give python-lz4's content and XXH32."""
    import lz4.block
    import xxhash

    block = bytearray(lz4.block.compress(data, store_size=False))
    if cut:
        del block[len(block) - min(cut, len(block) - 1) :]
    if flip is not None:
        block[flip % len(block)] ^= 0x5A
    results = {}
    for name, m in BACKENDS.items():
        dst = bytearray(max(0, len(data) + room))
        h = m.XXH32()
        n = m.lz4_decompress_into(bytes(block), dst, h)
        results[name] = (n, bytes(dst[: max(n, 0)]), h.intdigest() if n >= 0 else None)
        if not cut and flip is None and room >= 0:
            assert n == len(data) and dst[:n] == data
            assert h.intdigest() == xxhash.xxh32_intdigest(data) == m.xxh32(data)
    assert len(set(results.values())) == 1, results


@given(
    data=st.binary(max_size=20_000) | st.integers(0, 300).map(lambda n: b"page%05d" % n * 500),
    room=st.integers(-2000, 64),
)
def test_lz4_compress_kernel_backends_round_trip_through_python_lz4(data, room):
    """lz4_compress_block in both backends: a non-zero result is a valid LZ4 block that
    python-lz4 decodes back to the input and is smaller than it; 0 means "store raw"
    (incompressible, or no room in ``dst``); the content hash always covers the input."""
    import lz4.block
    import xxhash

    for name, m in BACKENDS.items():
        dst = bytearray(max(0, m.lz4_compress_bound(len(data)) + room))
        h = m.XXH32()
        n = m.lz4_compress_block(data, dst, h)
        assert h.intdigest() == xxhash.xxh32_intdigest(data), name
        assert 0 <= n < max(len(data), 1), name
        if n:
            assert lz4.block.decompress(bytes(dst[:n]), uncompressed_size=len(data)) == data
        if len(data) > 1000 and len(set(data)) < 40 and room >= 0:
            assert n, f"{name}: repetitive data did not compress"
