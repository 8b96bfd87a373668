"""LZ4 frames as Litestream v0.3 writes them, streamed with bounded memory.

pierrec/lz4's writer defaults: 4 MiB blocks, independent blocks, a content checksum, no
content size. python-lz4 writes the same standard frame format from any buffer without a
copy and releases the GIL while it compresses. Readers verify the content checksum and
that the frame is complete; a damaged object raises ``CorruptObject`` naming its key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import lz4.frame

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


def decompress_stream(src: BinaryIO, key: str, read_size: int = READ_SIZE) -> Iterator[bytes]:
    """decompress_stream yields the decompressed content of the LZ4 frame read from ``src``.

    Raises CorruptObject naming ``key`` when the frame is malformed, fails its content
    checksum, is truncated, or has trailing bytes.
    """
    d = lz4.frame.LZ4FrameDecompressor()
    any_input = False
    while True:
        buf = src.read(read_size)
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
