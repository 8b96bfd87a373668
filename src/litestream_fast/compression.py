"""LZ4 frames as Litestream v0.3 writes them, streamed with bounded memory.

pierrec/lz4's writer defaults: 4 MiB blocks, independent blocks, a content checksum, no
content size. python-lz4 writes the same standard frame format from any buffer without a
copy and releases the GIL while it compresses. Readers verify the content checksum and
that the frame is complete; a damaged object raises ``CorruptObject`` naming its key.

Restores decompress the blocks themselves (``decompress_stream``): independent blocks can
be decompressed in parallel, and memory is then a few blocks whatever the object size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import BinaryIO

import lz4.block
import lz4.frame
import xxhash

from litestream_fast.errors import CorruptObject

BLOCK_SIZE = 4 << 20
READ_SIZE = 1 << 20


def _compressor() -> lz4.frame.LZ4FrameCompressor:
    return lz4.frame.LZ4FrameCompressor(
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        content_checksum=True,
        auto_flush=True,
    )


def compress(data) -> bytes:
    """compress returns ``data`` as one LZ4 frame (small inputs: WAL segments, tests)."""
    return lz4.frame.compress(
        data,
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        content_checksum=True,
        store_size=False,
    )


def compress_chunks(chunks: Iterable) -> Iterator[bytes]:
    """compress_chunks yields one LZ4 frame for a stream of buffers, a block at a time.

    Each input chunk should be at most ``BLOCK_SIZE``; memory use is about one block.
    """
    c = _compressor()
    yield c.begin()
    for chunk in chunks:
        if len(chunk):
            out = c.compress(chunk)
            if out:
                yield out
    yield c.flush()


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


def decompress_stream(
    src: BinaryIO, key: str, pool: Executor | None = None, window: int = 3
) -> Iterator[bytes | memoryview]:
    """decompress_stream yields the decompressed content of the LZ4 frame read from ``src``.

    Frames of independent blocks (what Litestream and this project write) are parsed
    here: each block is read whole and decompressed by ``lz4.block`` (in ``pool``, at most
    ``window`` blocks ahead, when one is given: the blocks of a snapshot decompress on all
    cores), and the XXH32 header, block and content checksums are verified with
    ``xxhash`` (python-lz4 does not expose XXH32). Memory stays at about ``window`` + 1
    blocks (4 MiB each). Any other frame (linked blocks, a dictionary) goes through
    python-lz4's streaming decompressor. Output comes in slices of at most ``OUT_CHUNK``.

    Raises CorruptObject naming ``key`` when the frame is malformed, fails a checksum, is
    truncated, or has trailing bytes.
    """
    head = _read_exact(src, 6)
    if len(head) < 6 or int.from_bytes(head[:4], "little") != _MAGIC:
        yield from _decompress_streaming(_Prefixed(head, src), key)
        return
    flg, bd = head[4], head[5]
    independent, block_ck = flg & 0x20, flg & 0x10
    has_size, content_ck, has_dict = flg & 0x08, flg & 0x04, flg & 0x01
    block_max = _BLOCK_MAX.get((bd >> 4) & 7)
    if flg >> 6 != 1 or not independent or has_dict or flg & 0x02 or bd & 0x8F or not block_max:
        yield from _decompress_streaming(_Prefixed(head, src), key)
        return
    rest = _read_exact(src, (8 if has_size else 0) + 1)
    if len(rest) < (8 if has_size else 0) + 1:
        raise CorruptObject(key, "truncated lz4 frame")
    descriptor = head[4:] + rest[:-1]
    if (xxhash.xxh32_intdigest(descriptor) >> 8) & 0xFF != rest[-1]:
        raise CorruptObject(key, "lz4: frame header checksum mismatch")

    def unpack(block: bytes, compressed: bool) -> bytes:
        if not compressed:
            return block
        try:
            return lz4.block.decompress(block, uncompressed_size=block_max)
        except lz4.block.LZ4BlockError as exc:
            raise CorruptObject(key, f"lz4: {exc}") from None

    content = xxhash.xxh32()
    pending: deque[Future[bytes] | bytes] = deque()

    def emit(item: Future[bytes] | bytes) -> Iterator[memoryview]:
        out = item.result() if isinstance(item, Future) else item
        if content_ck:
            content.update(out)
        mv = memoryview(out)
        for i in range(0, len(mv), OUT_CHUNK):
            yield mv[i : i + OUT_CHUNK]

    try:
        while True:
            word = _read_exact(src, 4)
            if len(word) < 4:
                raise CorruptObject(key, "truncated lz4 frame")
            size = int.from_bytes(word, "little")
            if size == 0:
                break
            n = size & ~_UNCOMPRESSED_BIT
            if n > block_max:
                raise CorruptObject(key, f"lz4: block of {n} bytes exceeds the frame's {block_max}")
            block = _read_exact(src, n)
            if len(block) < n:
                raise CorruptObject(key, "truncated lz4 frame")
            if block_ck:
                ck = _read_exact(src, 4)
                if len(ck) < 4:
                    raise CorruptObject(key, "truncated lz4 frame")
                if xxhash.xxh32_intdigest(block) != int.from_bytes(ck, "little"):
                    raise CorruptObject(key, "lz4: block checksum mismatch")
            compressed = not size & _UNCOMPRESSED_BIT
            if pool is None:
                yield from emit(unpack(block, compressed))
                continue
            pending.append(pool.submit(unpack, block, compressed))
            del block
            while len(pending) > window:
                yield from emit(pending.popleft())
        while pending:
            yield from emit(pending.popleft())
    finally:
        for f in pending:
            if isinstance(f, Future):
                f.cancel()
    if content_ck:
        ck = _read_exact(src, 4)
        if len(ck) < 4:
            raise CorruptObject(key, "truncated lz4 frame")
        if content.intdigest() != int.from_bytes(ck, "little"):
            raise CorruptObject(key, "lz4: content checksum mismatch")
    if src.read(1):
        raise CorruptObject(key, "trailing bytes after lz4 frame")


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
