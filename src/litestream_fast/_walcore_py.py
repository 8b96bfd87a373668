"""Pure-Python twin of the compiled ``_walcore`` module: same functions, same results.

It is the test oracle for the Cython kernels (the differential tests compare both on valid
and mutated WALs) and the fallback selected by ``LITESTREAM_FAST_NO_EXTENSIONS=1``. It is
written for clarity, not speed: ``struct`` unpacks whole runs of words at once, and the
checksum loop is the one in SQLite's ``walChecksumBytes``.
"""

from __future__ import annotations

import struct

from litestream_fast.errors import InvalidWALHeader, MisalignedOffset

STOP_EOF = 0
STOP_SHORT_FRAME = 1
STOP_SALT_MISMATCH = 2
STOP_CHECKSUM_MISMATCH = 3

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
WAL_MAGIC_LE = 0x377F0682
WAL_MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000
_MASK = 0xFFFFFFFF


def _valid_page_size(page_size: int) -> bool:
    return 512 <= page_size <= 65536 and page_size & (page_size - 1) == 0


def _cksum(mv: memoryview, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    n = len(mv) // 4
    words = struct.unpack((">" if big_endian else "<") + "%dI" % n, mv)
    for i in range(0, n, 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def wal_checksum(buf, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """wal_checksum returns SQLite's running WAL checksum (s0, s1) extended over ``buf``."""
    mv = memoryview(buf).cast("B")
    if len(mv) % 8:
        raise ValueError(f"checksum input length {len(mv)} is not a multiple of 8")
    return _cksum(mv, s0 & _MASK, s1 & _MASK, bool(big_endian))


def parse_wal_header(buf) -> tuple[int, int, int, int, int, int, int, int]:
    """parse_wal_header validates a 32-byte WAL header at the start of ``buf``."""
    mv = memoryview(buf).cast("B")
    if len(mv) < WAL_HEADER_SIZE:
        raise InvalidWALHeader(f"wal header too short: {len(mv)} bytes")
    magic, version, page_size, seq, salt1, salt2, c1, c2 = struct.unpack_from(">8I", mv, 0)
    if magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
        raise InvalidWALHeader(f"invalid wal magic: 0x{magic:08x}")
    if version != WAL_VERSION:
        raise InvalidWALHeader(f"unsupported wal version: {version}")
    if not _valid_page_size(page_size):
        raise InvalidWALHeader(f"invalid wal page size: {page_size}")
    a, b = _cksum(mv[:24], 0, 0, magic == WAL_MAGIC_BE)
    if (a, b) != (c1, c2):
        raise InvalidWALHeader(
            f"wal header checksum mismatch: stored {c1:08x}{c2:08x}, computed {a:08x}{b:08x}"
        )
    return magic, version, page_size, seq, salt1, salt2, c1, c2


def scan_frames(
    buf, offset: int, page_size: int, salt1: int, salt2: int, s0: int, s1: int, big_endian: bool
) -> tuple[int, int, int, int, int, int, int]:
    """scan_frames walks WAL frames from ``offset`` and finds the last valid commit.

    Returns (commit_end, commit_frames, db_size, c0, c1, stop, valid_end); see the compiled
    module's docstring for the meaning of each field.
    """
    mv = memoryview(buf).cast("B")
    n = len(mv)
    if not _valid_page_size(page_size):
        raise InvalidWALHeader(f"invalid wal page size: {page_size}")
    fsize = FRAME_HEADER_SIZE + page_size
    if offset < WAL_HEADER_SIZE or (offset - WAL_HEADER_SIZE) % fsize:
        raise MisalignedOffset(f"offset {offset} is not a frame boundary for page size {page_size}")
    a, b = s0 & _MASK, s1 & _MASK
    pos = commit_end = valid_end = offset
    frames = commit_frames = db_size = 0
    ca, cb = a, b
    stop = STOP_EOF
    while True:
        if pos >= n:
            stop = STOP_EOF
            break
        if n - pos < fsize:
            stop = STOP_SHORT_FRAME
            break
        pgno, commit, fs1, fs2, fc1, fc2 = struct.unpack_from(">6I", mv, pos)
        if fs1 != salt1 or fs2 != salt2:
            stop = STOP_SALT_MISMATCH
            break
        a, b = _cksum(mv[pos : pos + 8], a, b, big_endian)
        a, b = _cksum(mv[pos + FRAME_HEADER_SIZE : pos + fsize], a, b, big_endian)
        if (a, b) != (fc1, fc2):
            stop = STOP_CHECKSUM_MISMATCH
            break
        pos += fsize
        frames += 1
        valid_end = pos
        if commit:
            commit_end, commit_frames, db_size, ca, cb = pos, frames, commit, a, b
    return commit_end, commit_frames, db_size, ca, cb, stop, valid_end


def find_page_frame(buf, start: int, end: int, page_size: int, pgno: int) -> int:
    """find_page_frame returns the offset of the last frame for ``pgno`` in [start, end), or -1."""
    mv = memoryview(buf).cast("B")
    if not _valid_page_size(page_size):
        raise InvalidWALHeader(f"invalid wal page size: {page_size}")
    fsize = FRAME_HEADER_SIZE + page_size
    if start < WAL_HEADER_SIZE or (start - WAL_HEADER_SIZE) % fsize:
        raise MisalignedOffset(f"offset {start} is not a frame boundary for page size {page_size}")
    end = min(end, len(mv))
    pos = start + ((end - start) // fsize - 1) * fsize if end > start else start - fsize
    while pos >= start:
        if struct.unpack_from(">I", mv, pos)[0] == pgno:
            return pos
        pos -= fsize
    return -1


def _make_crc_table() -> list[int]:
    poly = 0xD800000000000000
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_crc_table()
_MASK64 = 0xFFFFFFFFFFFFFFFF


def crc64(buf, crc: int = 0) -> int:
    """crc64 returns CRC-64/ISO of ``buf`` continued from ``crc`` (Go's crc64.Update)."""
    table = _CRC_TABLE
    c = ~crc & _MASK64
    for byte in memoryview(buf).cast("B"):
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return ~c & _MASK64


# ------------------------------------------------------------ LZ4 blocks, XXH32


class XXH32:
    """XXH32 with seed 0, fed incrementally (the ``xxhash`` package)."""

    def __init__(self) -> None:
        import xxhash

        self._h = xxhash.xxh32()

    def update(self, buf) -> None:
        self._h.update(buf)

    def intdigest(self) -> int:
        return self._h.intdigest()


def xxh32(buf) -> int:
    """xxh32 returns the XXH32 (seed 0) of ``buf``."""
    import xxhash

    return xxhash.xxh32_intdigest(buf)


def lz4_decompress_into(src, dst, content: XXH32 | None = None) -> int:
    """lz4_decompress_into decodes one LZ4 block ``src`` into ``dst`` (python-lz4) and adds
    the decoded bytes to ``content``; -1 when malformed or too big for ``dst``."""
    import lz4.block

    if not len(src):
        return -1  # an empty block is the frame's end mark, never a block to decode
    if not len(dst):
        return 0 if bytes(src) == b"\x00" else -1
    try:
        out = lz4.block.decompress(src, uncompressed_size=len(dst))
    except lz4.block.LZ4BlockError:
        return -1
    n = len(out)
    memoryview(dst)[:n] = out
    if content is not None:
        content.update(out)
    return n


def lz4_compress_bound(n: int) -> int:
    """lz4_compress_bound is the largest compressed size of ``n`` input bytes (LZ4's)."""
    return n + n // 255 + 16


def lz4_compress_block(src, dst, content: XXH32 | None = None) -> int:
    """lz4_compress_block compresses ``src`` into ``dst`` as one LZ4 block (python-lz4) and
    adds ``src`` to ``content``; 0 when the block would not shrink (stored raw)."""
    import lz4.block

    n = len(src)
    if content is not None:
        content.update(src)
    if n == 0:
        return 0
    out = lz4.block.compress(src, store_size=False)
    m = len(out)
    if m >= n or m > len(dst):
        return 0
    memoryview(dst)[:m] = out
    return m
