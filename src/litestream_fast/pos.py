"""Positions and replica object descriptions shared by the engine, replicas and restore.

A position is Litestream v0.3's ``Pos``: a generation, a shadow-WAL index and a byte
offset inside that shadow WAL (0 is its start, the 32-byte header included). It prints
as ``<gen>/<index:08x>:<offset>``, exactly as Litestream logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True, order=True)
class Pos:
    """Pos is a place in a generation's stream of shadow-WAL bytes."""

    generation: str
    index: int
    offset: int

    def __str__(self) -> str:
        return f"{self.generation}/{self.index:08x}:{self.offset}"

    @property
    def is_zero(self) -> bool:
        return not self.generation


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """SnapshotInfo describes one stored snapshot; ``size`` is the stored (compressed) size."""

    generation: str
    index: int
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WALSegmentInfo:
    """WALSegmentInfo describes one stored WAL segment (a compressed shadow-WAL byte range)."""

    generation: str
    index: int
    offset: int
    size: int
    created_at: datetime

    @property
    def pos(self) -> Pos:
        return Pos(self.generation, self.index, self.offset)
