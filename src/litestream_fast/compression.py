"""LZ4 frames as Litestream v0.3 writes them, streamed with bounded memory.

pierrec/lz4's writer defaults: 4 MiB blocks, independent blocks, a content checksum, no
content size. ``compress_chunks`` writes that frame itself: each block is compressed by
the compiled core (vendored LZ4 with a larger match table than liblz4's default, so
snapshots come out ~7% smaller) into one reused buffer, hashing the content in the same
GIL-free call. Readers verify the content checksum and that the frame is complete; a
damaged object raises ``CorruptObject`` naming its key.

Readers parse frames of independent blocks themselves, so memory is a few blocks whatever
the object size: ``decompress_stream`` yields the content (WAL segments), and
``decompress_to`` (snapshots) decodes in a thread of its own into reused buffers with the
compiled core's LZ4 block decoder and XXH32. Any other frame goes to python-lz4.
"""

from __future__ import annotations

import mmap
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import lz4.block
import lz4.frame

from litestream_fast._backend import core
from litestream_fast.errors import CorruptObject

BLOCK_SIZE = 4 << 20
READ_SIZE = 1 << 20


def _frame_header() -> bytes:
    """The header of every frame we write: magic; FLG 0x64 (version 1, independent blocks,
    content checksum, no content size, no block checksums); BD 0x70 (4 MiB blocks); the
    header checksum (second byte of XXH32 of FLG and BD). pierrec/lz4 writes the same."""
    desc = bytes([0x64, 0x70])
    return struct.pack("<I", _MAGIC) + desc + bytes([(core.xxh32(desc) >> 8) & 0xFF])


def compress(data) -> bytes:
    """compress returns ``data`` as one LZ4 frame (small inputs: WAL segments, tests)."""
    return b"".join(bytes(c) for c in compress_chunks([data]))


#: What a ``ScratchBuffer`` keeps between uses unless told otherwise; a bigger request
#: gets a buffer of its own, freed after use, so a long-lived owner does not hold the
#: largest request it ever saw (callers size ``keep`` to their usual request).
SCRATCH_KEEP = (1 << 20) + (64 << 10)
#: ScratchBuffers of this size or more are anonymous mappings rather than bytearrays.
MMAP_BYTES = 256 << 10


class ScratchBuffer:
    """ScratchBuffer is one reusable buffer for a caller that fills it again and again
    (one replica's segment reads or compressed blocks).

    A fresh buffer per WAL segment cost a zero-fill and, once glibc had returned the
    freed memory to the kernel, a page fault per 4 KiB: at a 100 ms sync interval that was
    about a tenth of the replicator's CPU. Not for use by two threads, or by two frames
    being produced at once.
    """

    def __init__(self, keep: int = SCRATCH_KEEP) -> None:
        self._buf: bytearray | mmap.mmap = bytearray()
        self._keep = keep

    def get(self, n: int) -> memoryview:
        """A writable view of at least ``n`` bytes (contents undefined)."""
        if len(self._buf) >= n:
            return memoryview(self._buf)
        # Big buffers are anonymous mappings: a bytearray is zero-filled, so all of it is
        # resident at once; mapped pages cost memory only once written (a 4 MiB block
        # buffer that decodes 100 KB segments holds 100 KB), and go back to the kernel
        # when the buffer is dropped.
        if n < MMAP_BYTES:
            buf: bytearray | mmap.mmap = bytearray(n)
        else:
            # A kept mapping is made as big as it may be kept: untouched pages cost
            # nothing, and one sized to each new largest segment was remapped (and every
            # page faulted in again) whenever a segment outgrew the last.
            buf = mmap.mmap(-1, self._keep if n <= self._keep else n)
        if n <= self._keep:
            self._buf = buf
        return memoryview(buf)


def compress_chunks(chunks: Iterable, scratch: ScratchBuffer | None = None) -> Iterator:
    """compress_chunks yields one LZ4 frame for a stream of buffers, a block at a time.

    Each block goes through the compiled core's ``lz4_compress_block`` into a reused
    buffer (``scratch``, or one of this frame's own), hashing the content in the same
    GIL-free call; a block that does not shrink (random data) is stored raw, as LZ4
    frames allow. Memory is about two blocks.

    The chunks yielded are views into that buffer or into the input: each is valid only
    until the next is asked for, so a consumer writes (or copies) it first.
    """
    content = core.XXH32()
    own = scratch or ScratchBuffer(keep=2 * BLOCK_SIZE)
    yield _frame_header()
    for chunk in chunks:
        mv = memoryview(chunk).cast("B")
        for i in range(0, len(mv), BLOCK_SIZE):
            block = mv[i : i + BLOCK_SIZE]
            out = own.get(4 + core.lz4_compress_bound(len(block)))
            m = core.lz4_compress_block(block, out[4:], content)
            if m:
                struct.pack_into("<I", out, 0, m)
                yield out[: 4 + m]
            else:
                yield struct.pack("<I", len(block) | _UNCOMPRESSED_BIT)
                yield block
    yield struct.pack("<II", 0, content.intdigest())


#: Decompressed output is handed out in slices of at most this size (zero-copy views).
OUT_CHUNK = 1 << 20

_MAGIC = 0x184D2204
_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_UNCOMPRESSED_BIT = 0x80000000


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes (fewer only at the end of the stream)."""
    buf = src.read(n)
    if len(buf) == n or not buf:
        return buf
    parts = [buf]
    got = len(buf)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _Prefixed:
    """A reader that returns ``prefix`` before the rest of ``src`` (to hand bytes already
    read to the streaming decompressor)."""

    def __init__(self, prefix: bytes, src: BinaryIO) -> None:
        self._prefix = prefix
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix, b""
            return out
        return self._src.read(n)


@dataclass(frozen=True)
class _Frame:
    """What a parsed LZ4 frame header of independent blocks says about its blocks."""

    block_max: int
    block_checksums: bool
    content_checksum: bool


def _read_frame_header(src: BinaryIO, key: str) -> _Frame | bytes:
    """Read an LZ4 frame header. A frame of independent blocks with no dictionary (what
    Litestream and this project write) gives a ``_Frame``; anything else gives the bytes
    read so far, for python-lz4's streaming decoder. A damaged header raises."""
    head = _read_exact(src, 6)
    if len(head) < 6 or int.from_bytes(head[:4], "little") != _MAGIC:
        return head
    flg, bd = head[4], head[5]
    independent, block_ck = flg & 0x20, flg & 0x10
    has_size, content_ck, has_dict = flg & 0x08, flg & 0x04, flg & 0x01
    block_max = _BLOCK_MAX.get((bd >> 4) & 7)
    if flg >> 6 != 1 or not independent or has_dict or flg & 0x02 or bd & 0x8F or not block_max:
        return head
    rest = _read_exact(src, (8 if has_size else 0) + 1)
    if len(rest) < (8 if has_size else 0) + 1:
        raise CorruptObject(key, "truncated lz4 frame")
    descriptor = head[4:] + rest[:-1]
    if (core.xxh32(descriptor) >> 8) & 0xFF != rest[-1]:
        raise CorruptObject(key, "lz4: frame header checksum mismatch")
    return _Frame(block_max, bool(block_ck), bool(content_ck))


def _read_block_size(src: BinaryIO, key: str, frame: _Frame) -> tuple[int, bool] | None:
    """Read a block's size word: (length, compressed), or None at the end mark."""
    word = _read_exact(src, 4)
    if len(word) < 4:
        raise CorruptObject(key, "truncated lz4 frame")
    size = int.from_bytes(word, "little")
    if size == 0:
        return None
    n = size & ~_UNCOMPRESSED_BIT
    if n > frame.block_max:
        raise CorruptObject(key, f"lz4: block of {n} bytes exceeds the frame's {frame.block_max}")
    return n, not size & _UNCOMPRESSED_BIT


def _check_block(src: BinaryIO, key: str, frame: _Frame, block) -> None:
    """Verify the block checksum that follows ``block``, if the frame has them."""
    if frame.block_checksums:
        ck = _read_exact(src, 4)
        if len(ck) < 4:
            raise CorruptObject(key, "truncated lz4 frame")
        if core.xxh32(block) != int.from_bytes(ck, "little"):
            raise CorruptObject(key, "lz4: block checksum mismatch")


def _finish_frame(src: BinaryIO, key: str, frame: _Frame, digest: int) -> None:
    """Verify the content checksum after the end mark, and that nothing follows."""
    if frame.content_checksum:
        ck = _read_exact(src, 4)
        if len(ck) < 4:
            raise CorruptObject(key, "truncated lz4 frame")
        if digest != int.from_bytes(ck, "little"):
            raise CorruptObject(key, "lz4: content checksum mismatch")
    if src.read(1):
        raise CorruptObject(key, "trailing bytes after lz4 frame")


def decompress_stream(src: BinaryIO, key: str) -> Iterator[bytes | memoryview]:
    """decompress_stream yields the decompressed content of the LZ4 frame read from ``src``.

    Frames of independent blocks (what Litestream and this project write) are parsed
    here: each block is read whole, decompressed by ``lz4.block`` and its output yielded
    before the next block is read, and the XXH32 header, block and content checksums are
    verified. Memory stays at about two blocks (4 MiB each). Any other frame (linked
    blocks, a dictionary) goes through python-lz4's streaming decompressor. Output comes
    in slices of at most ``OUT_CHUNK``.

    Raises CorruptObject naming ``key`` when the frame is malformed, fails a checksum, is
    truncated, or has trailing bytes.
    """
    frame = _read_frame_header(src, key)
    if isinstance(frame, bytes):
        yield from _decompress_streaming(_Prefixed(frame, src), key)
        return
    content = core.XXH32()
    while (blk := _read_block_size(src, key, frame)) is not None:
        n, compressed = blk
        block = _read_exact(src, n)
        if len(block) < n:
            raise CorruptObject(key, "truncated lz4 frame")
        _check_block(src, key, frame, block)
        out = block
        if compressed:
            try:
                out = lz4.block.decompress(block, uncompressed_size=frame.block_max)
            except lz4.block.LZ4BlockError as exc:
                raise CorruptObject(key, f"lz4: {exc}") from None
        if frame.content_checksum:
            content.update(out)
        mv = memoryview(out)
        for i in range(0, len(mv), OUT_CHUNK):
            yield mv[i : i + OUT_CHUNK]
    _finish_frame(src, key, frame, content.intdigest())


def decompress_blocks(
    src: BinaryIO, key: str, inbuf: ScratchBuffer, outbuf: ScratchBuffer
) -> Iterator[memoryview]:
    """decompress_blocks is ``decompress_stream`` into reused buffers: each block is read
    into ``inbuf`` and decoded into ``outbuf`` by the compiled core (content checksum in
    the same GIL-free call), so nothing is allocated per block. A restore's segment
    workers decode this way: with a fresh 4 MiB output per segment, every worker thread's
    malloc arena kept a few such blocks and memory grew with the parallelism.

    The views yielded are valid only until the next is asked for. Checks and errors are
    those of ``decompress_stream``.
    """
    frame = _read_frame_header(src, key)
    if isinstance(frame, bytes):
        yield from (memoryview(c) for c in _decompress_streaming(_Prefixed(frame, src), key))
        return
    content = core.XXH32() if frame.content_checksum else None
    while (blk := _read_block_size(src, key, frame)) is not None:
        n, compressed = blk
        view = inbuf.get(n)[:n]
        if read_into(src, view) < n:
            raise CorruptObject(key, "truncated lz4 frame")
        _check_block(src, key, frame, view)
        if compressed:
            out = outbuf.get(frame.block_max)[: frame.block_max]
            m = core.lz4_decompress_into(view, out, content)
            if m < 0:
                raise CorruptObject(key, "lz4: malformed compressed block")
            if m:
                yield out[:m]
        else:
            if content is not None:
                content.update(view)
            yield view
    _finish_frame(src, key, frame, content.intdigest() if content is not None else 0)


#: Reused output buffers of ``decompress_to``: blocks decoded ahead of the sink.
RING = 3
_END = object()


def decompress_to(
    src: BinaryIO, key: str, sink: Callable[[memoryview], None], ring: int = RING
) -> int:
    """decompress_to decodes the LZ4 frame read from ``src`` and hands its content, in
    order, to ``sink``, called in the calling thread; returns the content's length.

    Built for restoring snapshots: for frames of independent blocks a thread of its own
    reads each block and decodes it straight into one of ``ring`` reused buffers, updating
    the content checksum in the same GIL-free call (``lz4_decompress_into`` in the
    compiled core), while ``sink`` writes the previous block. Nothing is allocated per
    block, and memory is ``ring`` + 1 blocks. A view passed to ``sink`` is valid only
    during the call. Other frames go through python-lz4's streaming decoder.

    Raises CorruptObject naming ``key``, exactly as ``decompress_stream`` does; what an
    exception from ``sink`` interrupts stops the decoder.
    """
    frame = _read_frame_header(src, key)
    if isinstance(frame, bytes):
        total = 0
        for chunk in _decompress_streaming(_Prefixed(frame, src), key):
            sink(memoryview(chunk))
            total += len(chunk)
        return total
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(max(1, ring)):
        free.put(bytearray(frame.block_max))
    ready: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def take() -> bytearray | None:
        while not stop.is_set():
            try:
                return free.get(timeout=0.05)
            except queue.Empty:
                continue
        return None

    def decode() -> None:
        try:
            inbuf = memoryview(bytearray(frame.block_max))
            content = core.XXH32() if frame.content_checksum else None
            while (blk := _read_block_size(src, key, frame)) is not None:
                n, compressed = blk
                out = take()
                if out is None:
                    return  # the consumer has gone
                view = inbuf[:n] if compressed else memoryview(out)[:n]
                if read_into(src, view) < n:
                    raise CorruptObject(key, "truncated lz4 frame")
                _check_block(src, key, frame, view)
                if compressed:
                    m = core.lz4_decompress_into(view, out, content)
                    if m < 0:
                        raise CorruptObject(key, "lz4: malformed compressed block")
                else:
                    m = n
                    if content is not None:
                        content.update(view)
                ready.put((out, m))
            _finish_frame(src, key, frame, content.intdigest() if content else 0)
            ready.put(_END)
        except BaseException as exc:  # handed to the consumer
            ready.put(exc)

    t = threading.Thread(target=decode, name="lz4-decode", daemon=True)
    t.start()
    total = 0
    try:
        while True:
            item = ready.get()
            if item is _END:
                return total
            if isinstance(item, BaseException):
                raise item
            out, m = item
            if m:
                sink(memoryview(out)[:m])
            total += m
            free.put(out)
    finally:
        stop.set()
        t.join()


def read_into(src: BinaryIO, view: memoryview) -> int:
    """read_into fills ``view`` from ``src`` (fewer bytes only at the end of the stream),
    with ``readinto`` when the stream has it (no intermediate bytes object)."""
    readinto = getattr(src, "readinto", None)
    got, n = 0, len(view)
    while got < n:
        if readinto is not None:
            k = readinto(view[got:])
        else:
            more = src.read(n - got)
            k = len(more)
            view[got : got + k] = more
        if not k:
            break
        got += k
    return got


def _decompress_streaming(src: BinaryIO | _Prefixed, key: str) -> Iterator[bytes]:
    """The general path: python-lz4's streaming decompressor, any LZ4 frame."""
    d = lz4.frame.LZ4FrameDecompressor()
    any_input = False
    while True:
        buf = src.read(READ_SIZE)
        if not buf:
            break
        any_input = True
        if d.eof:
            raise CorruptObject(key, "trailing bytes after lz4 frame")
        try:
            out = d.decompress(buf)
        except RuntimeError as exc:
            raise CorruptObject(key, f"lz4: {exc}") from None
        if d.eof and d.unused_data:
            raise CorruptObject(key, "trailing bytes after lz4 frame")
        if out:
            yield out
    if not any_input:
        raise CorruptObject(key, "empty object")
    if not d.eof:
        raise CorruptObject(key, "truncated lz4 frame")


def decompress(data, key: str) -> bytes:
    """decompress returns the content of one whole LZ4 frame held in memory."""
    import io

    return b"".join(decompress_stream(io.BytesIO(data), key))
