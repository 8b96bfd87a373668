"""Names of replica objects, exactly as Litestream v0.3.13 writes them.

``generations/<gen>/snapshots/<index:08x>.snapshot.lz4`` and
``generations/<gen>/wal/<index:08x>_<offset:08x>.wal.lz4``. ``%08x`` is a minimum width;
parsers accept up to 16 hex digits so offsets past 4 GiB still list (v0.5's reader does
the same).
"""

from __future__ import annotations

import os
import re

GENERATION_RE = re.compile(r"^[0-9a-f]{16}$")
SNAPSHOT_RE = re.compile(r"^([0-9a-f]{8,16})\.snapshot\.lz4$")
WAL_SEGMENT_RE = re.compile(r"^([0-9a-f]{8,16})_([0-9a-f]{8,16})\.wal\.lz4$")
SHADOW_WAL_RE = re.compile(r"^([0-9a-f]{8})\.wal$")

MAX_INDEX = 0x7FFFFFFF


def new_generation() -> str:
    """new_generation returns a random 16-hex-digit generation name (``os.urandom``, which
    is what ``secrets.token_hex`` uses; importing ``secrets`` costs ~9 ms at start-up)."""
    return os.urandom(8).hex()


def is_generation(name: str) -> bool:
    return GENERATION_RE.match(name) is not None


def generations_dir(root: str = "") -> str:
    return join(root, "generations")


def generation_dir(root: str, generation: str) -> str:
    return join(root, "generations", generation)


def snapshots_dir(root: str, generation: str) -> str:
    return join(root, "generations", generation, "snapshots")


def wal_dir(root: str, generation: str) -> str:
    return join(root, "generations", generation, "wal")


def snapshot_name(index: int) -> str:
    return f"{index:08x}.snapshot.lz4"


def wal_segment_name(index: int, offset: int) -> str:
    return f"{index:08x}_{offset:08x}.wal.lz4"


def snapshot_path(root: str, generation: str, index: int) -> str:
    return join(snapshots_dir(root, generation), snapshot_name(index))


def wal_segment_path(root: str, generation: str, index: int, offset: int) -> str:
    return join(wal_dir(root, generation), wal_segment_name(index, offset))


def shadow_wal_name(index: int) -> str:
    return f"{index:08x}.wal"


def parse_snapshot_name(name: str) -> int | None:
    """parse_snapshot_name returns the index in a snapshot file name, or None."""
    m = SNAPSHOT_RE.match(name)
    return int(m.group(1), 16) if m else None


def parse_wal_segment_name(name: str) -> tuple[int, int] | None:
    """parse_wal_segment_name returns (index, offset) from a segment file name, or None."""
    m = WAL_SEGMENT_RE.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def parse_shadow_wal_name(name: str) -> int | None:
    m = SHADOW_WAL_RE.match(name)
    return int(m.group(1), 16) if m else None


def join(*parts: str) -> str:
    """join glues key parts with '/', dropping empty ones (object-store keys, no leading '/')."""
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p)
