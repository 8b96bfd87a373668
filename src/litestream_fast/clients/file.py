"""Directory replica: the v0.3 layout on a local (or mounted) filesystem.

Every object is written to ``<name>.tmp``, fsynced, renamed into place, and its directory
fsynced, so a crash leaves either the whole object or nothing (plus a stray ``.tmp`` that
listings ignore). An object's time is its file mtime, as in Litestream.

Objects of a megabyte or more are written with ``O_DIRECT`` where the filesystem allows
it (``directio.DirectWriter``): a replica object is written once and not read back soon.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import BinaryIO

from litestream_fast import naming
from litestream_fast.directio import DirectWriter
from litestream_fast.errors import ObjectNotFound, ReplicaError
from litestream_fast.pos import Pos, SnapshotInfo, WALSegmentInfo
from litestream_fast.replica_client import Payload, iter_payload


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=timezone.utc)


def fsync_dir(path: str) -> None:
    """fsync_dir makes a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: str) -> int:
    """Open ``path`` for a new object, creating its directories only when they are missing
    (the usual case, a segment in an existing directory, costs one open, not a makedirs)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o666)


def atomic_write(path: str, data: Payload) -> os.stat_result:
    """atomic_write writes ``data`` to ``path`` via temp + fsync + rename + dir fsync.

    Returns the written file's stat (size and mtime; a rename keeps both), taken before
    the rename so no second lookup of the path is needed.
    """
    tmp = path + ".tmp"
    try:
        fd = _create(tmp)
        try:
            w = DirectWriter(fd)
            for chunk in iter_payload(data):
                w.write(chunk)
            w.close()
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(os.path.dirname(path))
    return st


class FileReplicaClient:
    """FileReplicaClient stores a replica under a directory ``root``."""

    type = "file"

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        # Operations by type (GET/PUT/LIST/DELETE), as Litestream counts them for files too.
        self.op_counts: dict[str, int] = dict.fromkeys(("GET", "PUT", "LIST", "DELETE"), 0)
        self.op_bytes: dict[str, int] = dict.fromkeys(("GET", "PUT", "LIST", "DELETE"), 0)

    def _count(self, op: str, nbytes: int = 0) -> None:
        self.op_counts[op] = self.op_counts.get(op, 0) + 1
        if nbytes:
            self.op_bytes[op] = self.op_bytes.get(op, 0) + nbytes

    def describe(self) -> str:
        return self.root

    def object_key(self, generation: str, index: int, offset: int | None = None) -> str:
        if offset is None:
            return naming.snapshot_path(self.root, generation, index)
        return naming.wal_segment_path(self.root, generation, index, offset)

    def generations(self) -> list[str]:
        self._count("LIST")
        try:
            names = os.listdir(naming.generations_dir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ReplicaError(f"list generations in {self.root}: {exc}") from exc
        return sorted(n for n in names if naming.is_generation(n))

    def delete_generation(self, generation: str) -> None:
        self._count("DELETE")
        import shutil  # only for retention; its import costs every start-up 4 ms

        shutil.rmtree(naming.generation_dir(self.root, generation), ignore_errors=True)

    def _list(self, directory: str) -> list[tuple[str, os.stat_result]]:
        self._count("LIST")
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            try:
                out.append((e.name, e.stat()))
            except FileNotFoundError:  # deleted by retention between list and stat
                continue
        return out

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        out = []
        for name, st in self._list(naming.snapshots_dir(self.root, generation)):
            index = naming.parse_snapshot_name(name)
            if index is not None:
                out.append(SnapshotInfo(generation, index, st.st_size, _mtime(st)))
        out.sort(key=lambda s: s.index)
        return out

    def write_snapshot(self, generation: str, index: int, data: Payload) -> SnapshotInfo:
        path = naming.snapshot_path(self.root, generation, index)
        st = atomic_write(path, data)
        self._count("PUT", st.st_size)
        return SnapshotInfo(generation, index, st.st_size, _mtime(st))

    def delete_snapshot(self, generation: str, index: int) -> None:
        self._count("DELETE")
        try:
            os.unlink(naming.snapshot_path(self.root, generation, index))
        except FileNotFoundError:
            pass

    def snapshot_reader(self, generation: str, index: int) -> BinaryIO:
        path = naming.snapshot_path(self.root, generation, index)
        self._count("GET")
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(path) from None

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        out = []
        for name, st in self._list(naming.wal_dir(self.root, generation)):
            parsed = naming.parse_wal_segment_name(name)
            if parsed is not None:
                out.append(WALSegmentInfo(generation, parsed[0], parsed[1], st.st_size, _mtime(st)))
        out.sort(key=lambda s: (s.index, s.offset))
        return out

    def write_wal_segment(self, pos: Pos, data: Payload) -> WALSegmentInfo:
        path = naming.wal_segment_path(self.root, pos.generation, pos.index, pos.offset)
        st = atomic_write(path, data)
        self._count("PUT", st.st_size)
        return WALSegmentInfo(pos.generation, pos.index, pos.offset, st.st_size, _mtime(st))

    def delete_wal_segments(self, positions: list[Pos]) -> None:
        for p in positions:
            self._count("DELETE")
            try:
                os.unlink(naming.wal_segment_path(self.root, p.generation, p.index, p.offset))
            except FileNotFoundError:
                pass

    def wal_segment_reader(self, pos: Pos) -> BinaryIO:
        path = naming.wal_segment_path(self.root, pos.generation, pos.index, pos.offset)
        self._count("GET")
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(path) from None
