"""LZ4 frame decoding for restores: our block decoder against python-lz4's frame decoder.

``compression.decompress_stream`` and ``decompress_to`` parse frames of independent blocks
themselves (bounded memory) and hand every other frame
to python-lz4's streaming decoder. Both must give the same bytes for any frame python-lz4
writes, and every damaged byte or cut must raise ``CorruptObject`` naming the object.
"""

from __future__ import annotations

import io
import os
import random
import threading
import time

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


#: The decoders under test: decompress_stream (WAL segments), decompress_to (the
#: restore's snapshots: a decoding thread, reused buffers, the compiled block kernel) and
#: decompress_blocks (the restore's segments: reused buffers, the compiled block kernel).
VIA = ["stream", "to", "blocks"]


def decode(blob: bytes, src=None, via: str = "stream") -> bytes:
    src = src if src is not None else io.BytesIO(blob)
    if via == "to":
        parts: list[bytes] = []
        n = compression.decompress_to(src, "obj/key", lambda mv: parts.append(bytes(mv)))
        out = b"".join(parts)
        assert n == len(out)
        return out
    if via == "blocks":  # reused buffers, as a restore's segment workers decode
        bufs = (compression.ScratchBuffer(), compression.ScratchBuffer(keep=8 << 20))
        return b"".join(bytes(c) for c in compression.decompress_blocks(src, "obj/key", *bufs))
    return b"".join(compression.decompress_stream(src, "obj/key"))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 600_000),
    block_size=st.sampled_from(sorted(BLOCK_SIZES)),
    linked=st.booleans(),
    content_checksum=st.booleans(),
    block_checksum=st.booleans(),
    store_size=st.booleans(),
    seed=st.integers(0, 1000),
    via=st.sampled_from(VIA),
)
def test_same_bytes_as_python_lz4(
    n, block_size, linked, content_checksum, block_checksum, store_size, seed, via
):
    data = sqlite_like(n, seed)
    blob = frame(data, block_size, block_linked=linked, content_checksum=content_checksum,
                 block_checksum=block_checksum, store_size=store_size)  # fmt: skip
    assert lz4.frame.decompress(blob) == data
    assert decode(blob, via=via) == data


@pytest.mark.parametrize("via", VIA)
def test_incompressible_blocks_are_stored_raw_and_read_back(via):
    data = os.urandom(300_000)  # LZ4 stores such blocks uncompressed (high bit of the size)
    blob = frame(data)
    sizes = block_words(blob)
    assert any(w & 0x80000000 for w in sizes), "expected at least one stored (raw) block"
    assert decode(blob, via=via) == data


def test_output_slices_are_bounded():
    data = sqlite_like(9 << 20, 3)
    blob = frame(data, 4 << 20)
    chunks = list(compression.decompress_stream(io.BytesIO(blob), "k"))
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


def test_reads_one_block_ahead():
    """Bounded memory: no more than one block is read before the first output is taken,
    whatever the object's size."""
    data = os.urandom(64 << 20)  # raw blocks: stored size = block size
    blob = frame(data, 1 << 20)
    src = CountingReader(blob)
    it = compression.decompress_stream(src, "k")
    first = next(it)
    assert len(first) > 0
    assert src.consumed <= (1 << 20) + 16, src.consumed
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


def block_words(blob: bytes) -> list[int]:
    """Each block's size word (high bit: stored raw), end mark excluded."""
    return [int.from_bytes(blob[p : p + 4], "little") for p in block_starts(blob)[:-1]]


def test_flipped_bytes_are_caught():
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
            decode(bytes(damaged), via=VIA[pos % len(VIA)])
        assert ei.value.key == "obj/key", pos


def test_every_cut_is_caught():
    data = sqlite_like(150_000, 6)
    blob = frame(data, 64 << 10)
    starts = block_starts(blob)
    cuts = set(range(12)) | {p + i for p in starts for i in range(-2, 6)}
    cuts |= set(random.Random(2).sample(range(len(blob)), 500))
    for n in sorted(c for c in cuts if 0 <= c < len(blob)):
        with pytest.raises(CorruptObject) as ei:
            decode(blob[:n], via=VIA[n % len(VIA)])
        assert ei.value.key == "obj/key"
        if n == 0:
            assert "empty" in str(ei.value)


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("tail", [b"\x00", b"junk", None])
def test_trailing_bytes_are_corruption(tail, via):
    blob = frame(sqlite_like(100_000, 7))
    extra = tail if tail is not None else frame(b"second frame")
    with pytest.raises(CorruptObject, match="trailing"):
        decode(blob + extra, via=via)


@pytest.mark.parametrize("via", VIA)
def test_block_checksum_mismatch_names_object(via):
    data = sqlite_like(200_000, 8)
    blob = bytearray(frame(data, 64 << 10, block_checksum=True, content_checksum=False))
    size = int.from_bytes(blob[7:11], "little") & 0x7FFFFFFF
    blob[11 + size] ^= 0xFF  # the first block's checksum
    with pytest.raises(CorruptObject, match="block checksum"):
        decode(bytes(blob), via=via)


@pytest.mark.parametrize("via", VIA)
def test_not_lz4_at_all(via):
    with pytest.raises(CorruptObject, match="lz4"):
        decode(b"SQLite format 3\x00" + bytes(200), via=via)


# ------------------------------------------------ decompress_to (the restore's decoder)


class ReadOnly:
    """A stream with ``read`` only (as some HTTP bodies are): no ``readinto``."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._b.read(n)


def test_decompress_to_reads_streams_without_readinto():
    data = sqlite_like(3 << 20, 9)
    blob = frame(data, 1 << 20)
    assert decode(blob, src=ReadOnly(blob), via="to") == data


def test_decompress_to_decodes_at_most_ring_blocks_ahead():
    """Bounded memory: while the sink is busy with the first block, the decoder fills
    the other reused buffers and stops, whatever the object's size."""
    data = os.urandom(32 << 20)  # raw blocks: stored size = block size
    blob = frame(data, 1 << 20)
    src = CountingReader(blob)
    seen: list[int] = []
    parts: list[bytes] = []

    def sink(mv):
        if not seen:
            time.sleep(0.3)  # the decoder runs ahead meanwhile
            seen.append(src.consumed)
        parts.append(bytes(mv))

    compression.decompress_to(src, "k", sink, ring=3)
    assert seen[0] <= (3 + 1) * ((1 << 20) + 8), seen[0]
    assert b"".join(parts) == data


def test_decompress_to_sink_failure_stops_the_decoder():
    """An exception from the sink (a failing write) is raised and the decoding thread
    ends, even while it waits for a free buffer."""
    blob = frame(os.urandom(8 << 20), 1 << 20)
    done = threading.Event()
    result = {}

    def run():
        def sink(mv):
            time.sleep(0.1)  # the decoder fills every buffer
            raise OSError("disk full")

        try:
            compression.decompress_to(io.BytesIO(blob), "k", sink, ring=2)
        except OSError as exc:
            result["error"] = str(exc)
        done.set()

    before = threading.active_count()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert done.wait(5), "decoder clean-up hung"
    assert result["error"] == "disk full"
    t.join(5)
    assert threading.active_count() == before


def test_decompress_to_corruption_after_output_is_raised():
    """A content checksum that fails after every block went to the sink still raises."""
    data = sqlite_like(2 << 20, 10)
    blob = bytearray(frame(data, 1 << 20))
    blob[-1] ^= 0x01  # the content checksum
    got: list[int] = []
    with pytest.raises(CorruptObject, match="content checksum"):
        compression.decompress_to(io.BytesIO(bytes(blob)), "k", lambda mv: got.append(len(mv)))
    assert sum(got) == len(data)


@pytest.mark.parametrize("kind", ["sqlite", "random", "mixed", "empty"])
def test_our_frames_are_standard_lz4_and_read_back(kind):
    """compress_chunks (compiled block compressor) writes the frame pierrec/lz4 writes:
    FLG 0x64 / BD 0x70, 4 MiB independent blocks, raw blocks where data does not shrink,
    a content checksum; python-lz4 and both our decoders read it back."""
    rnd = os.urandom(5 << 20)
    data = {"sqlite": sqlite_like(9 << 20), "random": rnd, "empty": b"",
            "mixed": sqlite_like(3 << 20) + rnd[: 3 << 20]}[kind]  # fmt: skip
    chunks = [data[i : i + (3 << 20)] for i in range(0, len(data), 3 << 20)] or [b""]
    blob = b"".join(bytes(c) for c in compression.compress_chunks(chunks))  # views: copy
    assert blob[:7] == b"\x04\x22\x4d\x18\x64\x70" + blob[6:7]
    assert lz4.frame.decompress(blob) == data
    for via in VIA:
        assert decode(blob, via=via) == data
    raw = [w & 0x80000000 for w in block_words(blob)]
    if kind == "random":
        assert raw and all(raw)
    if kind == "sqlite":
        assert raw and not any(raw) and len(blob) < len(data) * 3 // 4  # half is random
    assert compression.compress(data) == b"".join(
        bytes(c) for c in compression.compress_chunks([data])
    )


def test_reused_scratch_gives_the_same_frames_and_keeps_only_small_buffers():
    """compress_chunks with a ScratchBuffer reused across frames (as a replica does for
    every segment) writes the frames a fresh buffer writes, when each chunk is consumed as
    it comes; a block over the keep limit gets a buffer of its own that is not kept."""
    scratch = compression.ScratchBuffer(keep=1 << 20)
    small = [sqlite_like(300 << 10), sqlite_like(200 << 10), os.urandom(100 << 10)]
    big = sqlite_like(3 << 20)
    for data in [*small, big, *small]:
        out = bytearray()
        for chunk in compression.compress_chunks([data], scratch):
            out += chunk  # consumed before the next is produced, as clients do
        assert bytes(out) == compression.compress(data)
        assert lz4.frame.decompress(bytes(out)) == data
        assert len(scratch.get(0)) <= 1 << 20  # the 3 MiB block's buffer was not kept
    held = scratch.get(0)
    assert len(held) >= 300 << 10  # the largest small frame's buffer is reused


def test_blocks_compressed_in_many_threads_at_once_are_each_correct():
    """Each thread has its own compression state (compiled core): frames compressed at
    the same time in several threads all decode to their own input."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = [sqlite_like((1 << 20) + k * 4096) + os.urandom(k * 1000) for k in range(16)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        frames = list(pool.map(compression.compress, inputs))
    for data, frame in zip(inputs, frames, strict=True):
        assert lz4.frame.decompress(frame) == data
