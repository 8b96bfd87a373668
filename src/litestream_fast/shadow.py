"""The shadow WAL: our local, append-only copy of every committed WAL frame.

Layout as Litestream v0.3 keeps it beside the database::

    .<db>-litestream/generation                          "<gen>\\n", written atomically
    .<db>-litestream/generations/<gen>/wal/<index:08x>.wal

Each shadow file starts with the 32-byte header of the live WAL it copies and then holds
only whole committed transactions with their original salts and checksums, so it is a
valid WAL by itself. Index N+1 starts when the live WAL restarts. At rest a shadow file
ends exactly at a commit; while a sync copies a large transaction it may briefly hold a
verified but uncommitted tail, which the sync (or ``recover`` after a crash) truncates
away. Uploads read only up to the committed size the DB reports.

Appends are not fsynced (the tick's replica upload is what is made durable), so after a
machine crash a shadow file may end earlier than it did: ``recover`` re-verifies it, the
live WAL fills it again where it still can, and a replica left ahead of it starts a new
generation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from litestream_fast import naming, wal
from litestream_fast.clients.file import fsync_dir
from litestream_fast.errors import InvalidWALHeader

SCAN_CHUNK = 8 << 20


def meta_dir_for(db_path: str) -> str:
    """meta_dir_for is Litestream's default meta directory: ``<dir>/.<basename>-litestream``."""
    d, base = os.path.split(os.path.abspath(db_path))
    return os.path.join(d, f".{base}-litestream")


def shadow_path(meta: str, generation: str, index: int) -> str:
    return os.path.join(meta, "generations", generation, "wal", naming.shadow_wal_name(index))


def read_generation(meta: str) -> str | None:
    """read_generation returns the current generation named in ``<meta>/generation``."""
    try:
        with open(os.path.join(meta, "generation")) as f:
            gen = f.read().strip()
    except FileNotFoundError:
        return None
    return gen if naming.is_generation(gen) else None


def write_generation(meta: str, generation: str) -> None:
    """write_generation records the current generation atomically (temp + fsync + rename)."""
    os.makedirs(meta, exist_ok=True)
    path = os.path.join(meta, "generation")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(generation + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(meta)


def remove_generation_file(meta: str) -> None:
    try:
        os.unlink(os.path.join(meta, "generation"))
    except FileNotFoundError:
        pass


def shadow_indexes(meta: str, generation: str) -> list[int]:
    """shadow_indexes lists the shadow WAL indexes present for a generation, sorted."""
    try:
        names = os.listdir(os.path.join(meta, "generations", generation, "wal"))
    except FileNotFoundError:
        return []
    out = [i for i in (naming.parse_shadow_wal_name(n) for n in names) if i is not None]
    return sorted(out)


def remove_stale_tmp(meta: str) -> None:
    """remove_stale_tmp deletes ``*.tmp`` files a crash left in the meta directory."""
    for root, _dirs, files in os.walk(meta):
        for name in files:
            if name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(root, name))
                except FileNotFoundError:
                    pass


@dataclass
class ShadowState:
    """ShadowState is where the current shadow WAL ends: the next frame's place and checksum."""

    header: wal.WalHeader
    size: int
    checksum: tuple[int, int]
    #: The last frame (the one ending at ``size``) when the copy that wrote it kept it:
    #: each sync compares it with the live WAL, and reading it back cost an open per tick.
    tail: bytes | None = None


def create(path: str, header: wal.WalHeader) -> ShadowState:
    """create starts a shadow WAL file holding only ``header`` (atomically)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))
    return ShadowState(header, wal.WAL_HEADER_SIZE, (header.checksum1, header.checksum2))


def recover(path: str) -> ShadowState | None:
    """recover re-validates a shadow WAL after a restart: it scans every frame, truncates an
    uncommitted or damaged tail, and returns where the file ends. None if the file is
    missing or its header is invalid (the caller then starts a new generation)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, wal.WAL_HEADER_SIZE, 0)
        try:
            header = wal.WalHeader.parse(raw)
        except InvalidWALHeader:
            return None
        end, checksum = scan_file(
            fd, header, wal.WAL_HEADER_SIZE, size, (header.checksum1, header.checksum2)
        )
        if end != size:
            os.ftruncate(fd, end)
            os.fsync(fd)
        return ShadowState(header, end, checksum)
    finally:
        os.close(fd)


def scan_file(
    fd: int, header: wal.WalHeader, start: int, end: int, checksum: tuple[int, int]
) -> tuple[int, tuple[int, int]]:
    """scan_file validates frames of file ``fd`` in [start, end) chunk by chunk and returns
    the end of the last commit and the checksum there (bounded memory)."""
    fs = header.frame_size
    chunk = max(1, SCAN_CHUNK // fs) * fs
    buf = bytearray(wal.WAL_HEADER_SIZE + chunk)
    mv = memoryview(buf)
    pos, commit_end, commit_ck, ck = start, start, checksum, checksum
    end = wal.frame_align(end, header.page_size)
    while pos < end:
        n = os.preadv(
            fd, [mv[wal.WAL_HEADER_SIZE : wal.WAL_HEADER_SIZE + min(chunk, end - pos)]], pos
        )
        if n <= 0:
            break
        n -= n % fs
        r = wal.scan(mv[: wal.WAL_HEADER_SIZE + n], header, wal.WAL_HEADER_SIZE, ck)
        if r.commit_end > wal.WAL_HEADER_SIZE:
            commit_end, commit_ck = pos + r.commit_end - wal.WAL_HEADER_SIZE, r.checksum
        if r.valid_end < wal.WAL_HEADER_SIZE + n or n == 0:
            break
        ck = wal.checksum_at(mv, header, r.valid_end)
        pos += n
    return commit_end, commit_ck
