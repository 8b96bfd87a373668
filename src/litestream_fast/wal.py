"""SQLite WAL format: constants, header and scan results, dispatched to the loaded backend.

The byte work happens in ``_walcore`` (or its Python twin); this module gives it names and
types. Layout reminders (see ../shared/reference/litestream-spec.md §5): a 32-byte header of
eight big-endian u32 (magic, version, page size, checkpoint seq, salt-1, salt-2, checksum),
then frames of a 24-byte header (pgno, commit size, salts, cumulative checksum) plus a page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from litestream_fast._backend import BACKEND, core
from litestream_fast.errors import InvalidWALHeader

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
WAL_MAGIC_LE = 0x377F0682
WAL_MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000

STOP_EOF = core.STOP_EOF
STOP_SHORT_FRAME = core.STOP_SHORT_FRAME
STOP_SALT_MISMATCH = core.STOP_SALT_MISMATCH
STOP_CHECKSUM_MISMATCH = core.STOP_CHECKSUM_MISMATCH
STOP_NAMES = {
    STOP_EOF: "eof",
    STOP_SHORT_FRAME: "short frame",
    STOP_SALT_MISMATCH: "salt mismatch",
    STOP_CHECKSUM_MISMATCH: "checksum mismatch",
}

wal_checksum = core.wal_checksum
crc64 = core.crc64
find_page_frame = core.find_page_frame

__all__ = [
    "BACKEND",
    "WalHeader",
    "ScanResult",
    "wal_checksum",
    "crc64",
    "find_page_frame",
    "frame_size",
    "frame_align",
    "calc_wal_size",
    "scan",
]


@dataclass(frozen=True, slots=True)
class WalHeader:
    """A validated WAL header; ``raw`` keeps its 32 bytes for byte-exact comparisons."""

    magic: int
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum1: int
    checksum2: int
    raw: bytes

    @property
    def big_endian(self) -> bool:
        """True when the checksum words are read big-endian (magic 0x377f0683)."""
        return self.magic == WAL_MAGIC_BE

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    @classmethod
    def parse(cls, buf) -> WalHeader:
        """Validate and parse the header at the start of ``buf`` (raises InvalidWALHeader)."""
        magic, _v, page_size, seq, s1, s2, c1, c2 = core.parse_wal_header(buf)
        return cls(magic, page_size, seq, s1, s2, c1, c2, bytes(memoryview(buf)[:WAL_HEADER_SIZE]))

    @classmethod
    def try_parse(cls, buf) -> WalHeader | None:
        """Parse a header, or None when it is missing or invalid (a WAL being (re)started)."""
        try:
            return cls.parse(buf)
        except InvalidWALHeader:
            return None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What ``scan`` found: the last commit boundary and why it stopped there."""

    commit_end: int
    commit_frames: int
    db_size: int
    checksum: tuple[int, int]
    stop: int
    valid_end: int

    @property
    def stop_name(self) -> str:
        return STOP_NAMES[self.stop]


def frame_size(page_size: int) -> int:
    return FRAME_HEADER_SIZE + page_size


def frame_align(size: int, page_size: int) -> int:
    """frame_align rounds a WAL size down to the end of its last whole frame (0 below 32)."""
    if size < WAL_HEADER_SIZE:
        return 0
    fs = FRAME_HEADER_SIZE + page_size
    return WAL_HEADER_SIZE + (size - WAL_HEADER_SIZE) // fs * fs


def calc_wal_size(page_size: int, pages: int) -> int:
    """calc_wal_size is the size of a WAL holding ``pages`` frames."""
    return WAL_HEADER_SIZE + (FRAME_HEADER_SIZE + page_size) * pages


def checksum_at(buf, hdr: WalHeader, offset: int) -> tuple[int, int]:
    """checksum_at returns the running checksum stored just before frame boundary ``offset``.

    At offset 32 it is the header checksum; further on it is the checksum stored in the
    previous frame's header (bytes 16..24), which SQLite made cumulative.
    """
    if offset <= WAL_HEADER_SIZE:
        return hdr.checksum1, hdr.checksum2
    return struct.unpack_from(">2I", buf, offset - hdr.frame_size + 16)


def scan(buf, hdr: WalHeader, offset: int, checksum: tuple[int, int] | None = None) -> ScanResult:
    """scan finds the last valid commit frame in ``buf`` at or after frame boundary ``offset``.

    ``checksum`` is the running checksum at ``offset``; by default it is taken from the
    bytes just before ``offset`` in ``buf`` (which the caller has verified earlier).
    """
    if checksum is None:
        checksum = checksum_at(buf, hdr, offset)
    r = core.scan_frames(
        buf, offset, hdr.page_size, hdr.salt1, hdr.salt2, checksum[0], checksum[1], hdr.big_endian
    )
    return ScanResult(r[0], r[1], r[2], (r[3], r[4]), r[5], r[6])
