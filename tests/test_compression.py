"""LZ4 frame decoding for restores: our block decoder against python-lz4's frame decoder.

``compression.decompress_stream`` parses frames of independent blocks itself (so a
snapshot's blocks decompress in parallel, in bounded memory) and hands every other frame
to python-lz4's streaming decoder. Both must give the same bytes for any frame python-lz4
writes, and every damaged byte or cut must raise ``CorruptObject`` naming the object.
"""

from __future__ import annotations

import io
import os
import random
from concurrent.futures import ThreadPoolExecutor

import lz4.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litestream_fast import compression
from litestream_fast.errors import CorruptObject

BLOCK_SIZES = {
    64 << 10: lz4.frame.BLOCKSIZE_MAX64KB,
    256 << 10: lz4.frame.BLOCKSIZE_MAX256KB,
    1 << 20: lz4.frame.BLOCKSIZE_MAX1MB,
    4 << 20: lz4.frame.BLOCKSIZE_MAX4MB,
}


def sqlite_like(n: int, seed: int = 0) -> bytes:
    """Half compressible rows, half random bytes, in 4 KiB pages."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += (b"row %08d " % rng.randrange(10**8)) * 300
        else:
            out += rng.randbytes(4096)
    return bytes(out[:n])


def frame(data: bytes, block_size: int = 64 << 10, **kw) -> bytes:
    kw.setdefault("block_linked", False)
    kw.setdefault("content_checksum", True)
    kw.setdefault("store_size", False)
    return lz4.frame.compress(data, block_size=BLOCK_SIZES[block_size], **kw)


def decode(blob: bytes, pool=None, window: int = 2, src=None) -> bytes:
    src = src if src is not None else io.BytesIO(blob)
    return b"".join(compression.decompress_stream(src, "obj/key", pool=pool, window=window))


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=2) as p:
        yield p


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 600_000),
    block_size=st.sampled_from(sorted(BLOCK_SIZES)),
    linked=st.booleans(),
    content_checksum=st.booleans(),
    block_checksum=st.booleans(),
    store_size=st.booleans(),
    seed=st.integers(0, 1000),
    parallel=st.booleans(),
)
def test_same_bytes_as_python_lz4(
    pool, n, block_size, linked, content_checksum, block_checksum, store_size, seed, parallel
):
    data = sqlite_like(n, seed)
    blob = frame(data, block_size, block_linked=linked, content_checksum=content_checksum,
                 block_checksum=block_checksum, store_size=store_size)  # fmt: skip
    assert lz4.frame.decompress(blob) == data
    assert decode(blob, pool if parallel else None) == data


def test_incompressible_blocks_are_stored_raw_and_read_back(pool):
    data = os.urandom(300_000)  # LZ4 stores such blocks uncompressed (high bit of the size)
    blob = frame(data)
    sizes = []
    pos = 7
    while True:
        word = int.from_bytes(blob[pos : pos + 4], "little")
        if word == 0:
            break
        sizes.append(word)
        pos += 4 + (word & 0x7FFFFFFF)
    assert any(w & 0x80000000 for w in sizes), "expected at least one stored (raw) block"
    assert decode(blob, pool) == data


def test_output_slices_are_bounded(pool):
    data = sqlite_like(9 << 20, 3)
    blob = frame(data, 4 << 20)
    chunks = list(compression.decompress_stream(io.BytesIO(blob), "k", pool=pool, window=2))
    assert max(len(c) for c in chunks) <= compression.OUT_CHUNK
    assert b"".join(chunks) == data


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        b = super().read(n)
        self.consumed += len(b)
        return b


def test_reads_at_most_window_blocks_ahead(pool):
    """Bounded memory: with window W, no more than W + 1 blocks are read before the
    first output is taken, whatever the object's size."""
    data = os.urandom(64 << 20)  # raw blocks: stored size = block size
    blob = frame(data, 1 << 20)
    src = CountingReader(blob)
    it = compression.decompress_stream(src, "k", pool=pool, window=2)
    first = next(it)
    assert len(first) > 0
    assert src.consumed <= 4 * ((1 << 20) + 8), src.consumed
    rest = b"".join(it)
    assert bytes(first) + rest == data


def block_starts(blob: bytes) -> list[int]:
    """Offsets of each block's size word (and of the end mark) in a frame without a
    content size."""
    pos, out = 7, []
    while True:
        out.append(pos)
        word = int.from_bytes(blob[pos : pos + 4], "little")
        if word == 0:
            return out
        pos += 4 + (word & 0x7FFFFFFF)


def test_flipped_bytes_are_caught(pool):
    """Every byte of the header, of each block's size word and of the checksum, and a
    thousand bytes inside blocks: each flip raises CorruptObject naming the object."""
    data = sqlite_like(150_000, 5)
    blob = frame(data, 64 << 10, block_checksum=False)
    starts = block_starts(blob)
    assert len(starts) >= 3
    positions = set(range(7)) | set(range(len(blob) - 4, len(blob)))
    positions |= {p + i for p in starts for i in range(4)}
    positions |= set(random.Random(1).sample(range(len(blob)), 1000))
    for pos in sorted(positions):
        damaged = bytearray(blob)
        damaged[pos] ^= 0x10
        with pytest.raises(CorruptObject) as ei:
            decode(bytes(damaged), pool if pos % 2 else None)
        assert ei.value.key == "obj/key", pos


def test_every_cut_is_caught():
    data = sqlite_like(150_000, 6)
    blob = frame(data, 64 << 10)
    starts = block_starts(blob)
    cuts = set(range(12)) | {p + i for p in starts for i in range(-2, 6)}
    cuts |= set(random.Random(2).sample(range(len(blob)), 500))
    for n in sorted(c for c in cuts if 0 <= c < len(blob)):
        with pytest.raises(CorruptObject) as ei:
            decode(blob[:n])
        assert ei.value.key == "obj/key"
        if n == 0:
            assert "empty" in str(ei.value)


@pytest.mark.parametrize("tail", [b"\x00", b"junk", None])
def test_trailing_bytes_are_corruption(tail):
    blob = frame(sqlite_like(100_000, 7))
    extra = tail if tail is not None else frame(b"second frame")
    with pytest.raises(CorruptObject, match="trailing"):
        decode(blob + extra)


def test_block_checksum_mismatch_names_object():
    data = sqlite_like(200_000, 8)
    blob = bytearray(frame(data, 64 << 10, block_checksum=True, content_checksum=False))
    size = int.from_bytes(blob[7:11], "little") & 0x7FFFFFFF
    blob[11 + size] ^= 0xFF  # the first block's checksum
    with pytest.raises(CorruptObject, match="block checksum"):
        decode(bytes(blob))


def test_not_lz4_at_all():
    with pytest.raises(CorruptObject, match="lz4"):
        decode(b"SQLite format 3\x00" + bytes(200))
