"""Type stub for the compiled WAL kernels (see src/_walcore.pyx and _walcore_py.py)."""

from typing import Final

from typing_extensions import Buffer

STOP_EOF: Final[int]
STOP_SHORT_FRAME: Final[int]
STOP_SALT_MISMATCH: Final[int]
STOP_CHECKSUM_MISMATCH: Final[int]

def wal_checksum(buf: Buffer, s0: int, s1: int, big_endian: bool) -> tuple[int, int]: ...
def parse_wal_header(buf: Buffer) -> tuple[int, int, int, int, int, int, int, int]: ...
def scan_frames(
    buf: Buffer,
    offset: int,
    page_size: int,
    salt1: int,
    salt2: int,
    s0: int,
    s1: int,
    big_endian: bool,
) -> tuple[int, int, int, int, int, int, int]: ...
def find_page_frame(buf: Buffer, start: int, end: int, page_size: int, pgno: int) -> int: ...
def crc64(buf: Buffer, crc: int = 0) -> int: ...

class XXH32:
    def update(self, buf: Buffer) -> None: ...
    def intdigest(self) -> int: ...

def xxh32(buf: Buffer) -> int: ...
def lz4_decompress_into(src: Buffer, dst: Buffer, content: XXH32 | None = None) -> int: ...
