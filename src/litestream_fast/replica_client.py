"""The storage interface every replica backend implements (Litestream's ReplicaClient).

A client is stateless storage: it lists, writes, reads and deletes v0.3 objects under its
root and knows nothing of databases, positions or schedules. Writes are atomic — a reader
either sees a whole object or none (temp + fsync + rename for files, one PUT or a completed
multipart upload for object stores). Object times (``created_at``) come from storage
(file mtime, S3 LastModified) because point-in-time restore selects by them.

Payloads are already LZ4-compressed; they arrive as bytes or as an iterable of chunks so a
large snapshot or segment streams through with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO, Protocol, runtime_checkable

from litestream_fast.pos import Pos, SnapshotInfo, WALSegmentInfo

Payload = bytes | bytearray | memoryview | Iterable[bytes]


@runtime_checkable
class ReplicaClient(Protocol):
    """ReplicaClient stores generations, snapshots and WAL segments for one replica."""

    #: Backend name as Litestream prints it ("file", "s3", …).
    type: str

    def describe(self) -> str:
        """A human-readable location (path or URL) for messages."""
        ...

    def generations(self) -> list[str]:
        """Generation names present, sorted; non-matching names are ignored."""
        ...

    def delete_generation(self, generation: str) -> None:
        """Delete every object of a generation. Missing is not an error."""
        ...

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        """Snapshots of a generation, sorted by index."""
        ...

    def write_snapshot(self, generation: str, index: int, data: Payload) -> SnapshotInfo:
        """Store a (compressed) snapshot atomically and return what was stored."""
        ...

    def delete_snapshot(self, generation: str, index: int) -> None: ...

    def snapshot_reader(self, generation: str, index: int) -> BinaryIO:
        """Open a stored snapshot's compressed bytes. Raises ObjectNotFound."""
        ...

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        """WAL segments of a generation, sorted by (index, offset)."""
        ...

    def write_wal_segment(self, pos: Pos, data: Payload) -> WALSegmentInfo:
        """Store a (compressed) WAL segment atomically at ``pos``."""
        ...

    def delete_wal_segments(self, positions: list[Pos]) -> None: ...

    def wal_segment_reader(self, pos: Pos) -> BinaryIO:
        """Open a stored WAL segment's compressed bytes. Raises ObjectNotFound."""
        ...

    def object_key(self, generation: str, index: int, offset: int | None = None) -> str:
        """The full key or path of a snapshot (offset None) or segment, for messages."""
        ...


def iter_payload(data: Payload) -> Iterable[bytes]:
    """iter_payload yields a payload's chunks whether it is one buffer or an iterable."""
    if isinstance(data, bytes | bytearray | memoryview):
        return (data,)
    return data
