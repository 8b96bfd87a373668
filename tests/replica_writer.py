"""Test-only v0.3 replica writer: real SQLite WAL bytes, exact control over every object.

``ReplicaWriter`` keeps one application connection (WAL mode, autocheckpoint off) on a
real database and ships byte ranges of its ``-wal`` file as LZ4-compressed WAL segments,
exactly as Litestream v0.3 lays them out (``generations/<gen>/wal/<index>_<offset>``). A
new WAL index starts after a ``TRUNCATE`` checkpoint, so the next WAL begins with a fresh
header at offset 0. Snapshots are the database file. Object mtimes can be set, so
point-in-time tests are deterministic, and objects can be deleted or damaged afterwards
to create exact gaps and corruptions.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from support import connect, content_hash

from litestream_fast import compression, naming
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.pos import Pos, SnapshotInfo, WALSegmentInfo

BASE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    """at returns BASE_TIME plus ``seconds`` (object times in tests)."""
    return BASE_TIME + timedelta(seconds=seconds)


def set_mtime(path: str, t: datetime) -> None:
    ns = int(round(t.timestamp() * 1e6)) * 1000
    os.utime(path, ns=(ns, ns))


class ReplicaWriter:
    """ReplicaWriter replicates one real SQLite database into a file replica by hand."""

    def __init__(
        self,
        db_path: str,
        replica_root: str,
        *,
        generation: str | None = None,
        page_size: int | None = None,
    ) -> None:
        self.db_path = db_path
        self.conn = connect(db_path, page_size=page_size)
        self.client = FileReplicaClient(replica_root)
        self.generation = generation or naming.new_generation()
        self.index = 0
        self.offset = 0
        self.segments: list[WALSegmentInfo] = []

    # -- application side

    def execute(self, sql: str, bindings=()) -> None:
        self.conn.execute(sql, bindings).fetchall()

    def insert_rows(self, n: int, size: int = 100, table: str = "t") -> None:
        """insert_rows commits one transaction inserting ``n`` random rows."""
        with self.conn:
            for _ in range(n):
                self.conn.execute(f"INSERT INTO {table}(v) VALUES (randomblob(?))", (size,))

    def hash(self) -> str:
        return content_hash(self.db_path)

    def close(self) -> None:
        self.conn.close()

    # -- replication side

    def _checkpoint(self) -> None:
        busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
        assert busy == 0

    def snapshot(self, mtime: datetime | None = None) -> SnapshotInfo:
        """snapshot stores the database file as the snapshot of the current index.

        At offset 0 (nothing of this index shipped yet) the WAL is checkpointed first so the
        file holds everything; later in an index the file still holds the index's start state.
        """
        if self.offset == 0:
            self._checkpoint()
        with open(self.db_path, "rb") as f:
            data = f.read()
        info = self.client.write_snapshot(self.generation, self.index, compression.compress(data))
        if mtime is not None:
            set_mtime(self.client.object_key(self.generation, self.index), mtime)
            info = replace(info, created_at=mtime)
        return info

    def pending(self) -> bytes:
        """The WAL bytes written since the last sync."""
        try:
            with open(self.db_path + "-wal", "rb") as f:
                f.seek(self.offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def sync(self, mtime: datetime | None = None, *, split: int = 1) -> list[WALSegmentInfo]:
        """sync ships the new WAL bytes as one segment (or ``split`` frame-aligned ones)."""
        data = self.pending()
        if not data:
            return []
        frame = 24 + self.page_size
        pieces = [data]
        if split > 1:
            head = 32 if self.offset == 0 else 0
            frames = (len(data) - head) // frame
            cuts = sorted({head + frame * (frames * i // split) for i in range(1, split)})
            bounds = [0, *[c for c in cuts if 0 < c < len(data)], len(data)]
            pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        out = []
        for piece in pieces:
            pos = Pos(self.generation, self.index, self.offset)
            info = self.client.write_wal_segment(pos, compression.compress(piece))
            if mtime is not None:
                set_mtime(self.segment_path(self.index, self.offset), mtime)
                info = replace(info, created_at=mtime)
            self.offset += len(piece)
            out.append(info)
        self.segments.extend(out)
        return out

    def next_index(self) -> None:
        """next_index ships what is pending, checkpoints (TRUNCATE) and starts a new index."""
        self.sync()
        self._checkpoint()
        self.index += 1
        self.offset = 0

    @property
    def page_size(self) -> int:
        return self.conn.execute("PRAGMA page_size").fetchall()[0][0]

    # -- object paths, for tests that damage the replica

    def segment_path(self, index: int, offset: int) -> str:
        return self.client.object_key(self.generation, index, offset)

    def snapshot_path(self, index: int) -> str:
        return self.client.object_key(self.generation, index)
