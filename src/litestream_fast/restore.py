"""Restore a database from a v0.3 replica: latest state, up to a WAL index, or a point in time.

``plan_restore`` chooses what to download (Litestream v0.3.13's ``CalcRestoreTarget`` and
friends, without their bugs — spec §2.5/§2.7); ``restore`` downloads and applies it. The
library never reads argv or config files: callers pass replica clients by name.

Choosing the target
-------------------
* Candidates are every (replica, generation) pair, filtered by ``replica`` / ``generation``.
  A generation's time bounds are the min/max object time (``created_at``) over its
  snapshots and WAL segments. A generation without a usable snapshot cannot be restored
  and is skipped (an explicitly requested one fails with ``NoBackupFound``).
* Latest (no ``index``, no ``timestamp``): the pair with the latest ``updated_at``; its
  newest snapshot by index; then every segment from that snapshot's index on.
* ``index`` (requires ``generation``): the newest snapshot with index <= ``index``; then
  the segments of indexes snapshot..``index`` inclusive. An index that the generation
  does not hold fails (v0.3.13 meant to check this but compares a value with itself).
* ``timestamp``: a pair qualifies when it has a snapshot created at or before the
  timestamp. Pairs whose [created_at, updated_at] contains the timestamp win over pairs
  that ended before it; among equals the latest ``updated_at`` wins (ties: first replica,
  then first generation, as Litestream). The snapshot is the newest one created at or
  before the timestamp; segments follow in (index, offset) order and stop at the first
  one created after the timestamp. The restored state is therefore the state as of the
  last segment uploaded at or before the timestamp (granularity = sync interval).

  - A timestamp **before the first snapshot** (of every candidate) raises
    ``NoBackupFound`` ("no matching backups found: no snapshot at or before …"), as
    Litestream does; nothing older than the first snapshot exists.
  - A timestamp **after the last segment** restores the latest state of the newest
    generation that started at or before it: the best state known at that time.
    (Litestream v0.3.13 instead skips every generation that ended before the timestamp
    and fails with "no matching backups found".)

Checks
------
At plan time: every WAL index from the snapshot's index to the last one must have
segments ("missing WAL index", naming the object expected), each index must start at
offset 0 ("missing initial WAL segment"), and offsets must strictly increase. While
applying: each segment's decompressed length must reach exactly the next segment's offset
(a shortfall is a gap and names the missing object; an overrun is a corrupt object), the
LZ4 content checksum must hold, the concatenated WAL of each index must be one valid
salt/checksum chain ending on a commit (a break raises ``CorruptObject`` naming the segment
holding the bad frame), and SQLite's checkpoint must take exactly those frames.

Applying
--------
The snapshot streams into a unique temp file beside the output while the WAL segments
download in parallel (``parallelism`` worker threads and a bounded window of
``4 * parallelism`` segments submitted ahead, in order; each is decompressed
straight into its place in a per-index ``<tmp>-<index>-wal`` file with ``pwrite``, through
reused buffers (``compression.decompress_blocks``): one pair per worker for small
segments, one shared pair for big ones, which decode one at a time; memory stays at a few
MiB per worker whatever the object sizes). The snapshot's path is a
pipeline (``compression.decompress_to``): one thread reads each LZ4 block and decodes it
into one of a few reused buffers with the compiled core (GIL released, content checksum
updated in the same call), the fetching thread writes them in order, through the page
cache where filling it is cheap (the integrity check and the application read the pages
back at once), else with O_DIRECT where the filesystem allows it (``directio``'s probe:
on a VM whose free memory is cold, buffered writes of a 517 MiB database cost 1.6-1.9 s
of system time, O_DIRECT 0.3 s), and every
``FLUSH_BYTES`` a background ``fdatasync`` keeps the disk writing while decoding goes on,
so the final fsync has only the tail left. Indexes are applied in
order as they complete: the index file becomes ``<tmp>-wal``, is verified, and SQLite
checkpoints it (``PASSIVE``, which reports the frames it took, then ``TRUNCATE``; busy
must be 0 — TRUNCATE alone reports 0/0 once it has reset the WAL). Then the optional
integrity check (reading through mmap) while the file is fsynced in another thread, WAL
journal mode (as Litestream's restore leaves the file), and a no-overwrite link (or
rename) to the output. On any failure every temp file is removed and the output is not
created. An existing output is never overwritten. A failing output disk (full, I/O error)
is a ``RestoreError`` naming the temp file.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import mmap
import os
import queue
import re
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO

import apsw

from litestream_fast import directio, wal
from litestream_fast.compression import (
    BLOCK_SIZE,
    ScratchBuffer,
    decompress_blocks,
    decompress_to,
    read_into,
)
from litestream_fast.errors import (
    CorruptObject,
    IntegrityCheckFailed,
    InvalidWALHeader,
    LitestreamError,
    NoBackupFound,
    OutputExists,
    ReplicaError,
    RestoreError,
)
from litestream_fast.pos import Pos, SnapshotInfo, WALSegmentInfo
from litestream_fast.replica_client import ReplicaClient

log = logging.getLogger("litestream_fast.restore")

DEFAULT_PARALLELISM = 8
WINDOW_FACTOR = 4
#: Segments stored in more than this many bytes decode one at a time (``BIG_SEGMENT_SLOTS``),
#: whatever the parallelism: each holds a compressed and a decoded LZ4 block (up to 4 MiB
#: each) while it decodes, and eight at once would double the restore's memory. Small
#: segments (the usual case: one sync interval of commits) are not limited.
BIG_SEGMENT_BYTES = 1 << 20
BIG_SEGMENT_SLOTS = 1
#: The compressed-block buffer a worker thread keeps between small segments.
SMALL_SEGMENT_KEEP = BIG_SEGMENT_BYTES + (64 << 10)
#: Decode buffers keep up to the largest LZ4 block (v0.3 frames: 4 MiB) and then some.
DECODE_KEEP = 2 * BLOCK_SIZE
INTEGRITY_CHECKS = ("none", "quick", "full")
SQLITE_HEADER = b"SQLite format 3\x00"

#: A progress sink: a callable taking a byte increment, or a tqdm-like object with update().
Progress = Callable[[int], Any] | Any


@dataclass(frozen=True)
class GenerationInfo:
    """One generation of one replica, with its listings and time bounds."""

    replica: str
    generation: str
    snapshots: tuple[SnapshotInfo, ...]
    segments: tuple[WALSegmentInfo, ...]

    @property
    def created_at(self) -> datetime | None:
        times = [s.created_at for s in self.snapshots] + [s.created_at for s in self.segments]
        return min(times) if times else None

    @property
    def updated_at(self) -> datetime | None:
        times = [s.created_at for s in self.snapshots] + [s.created_at for s in self.segments]
        return max(times) if times else None


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will download and apply, in order."""

    replica: str
    client: ReplicaClient = field(repr=False, compare=False)
    generation: str
    snapshot: SnapshotInfo
    segments: tuple[WALSegmentInfo, ...]
    generation_created_at: datetime
    generation_updated_at: datetime
    target_index: int | None = None
    timestamp: datetime | None = None

    @property
    def indexes(self) -> list[int]:
        """WAL indexes to apply, ascending (may be empty: snapshot-only restore)."""
        return sorted({s.index for s in self.segments})

    @property
    def total_bytes(self) -> int:
        """Stored (compressed) bytes to download: the snapshot plus every segment."""
        return self.snapshot.size + sum(s.size for s in self.segments)

    @property
    def restores_to(self) -> datetime:
        """The time the restored state is from: the last segment's (else the snapshot's).

        A snapshot holds its index's starting state, so a later-taken snapshot does not
        make the state newer than the last segment applied on top of it.
        """
        if self.segments:
            return self.segments[-1].created_at
        return self.snapshot.created_at

    @property
    def last_segment(self) -> WALSegmentInfo | None:
        return self.segments[-1] if self.segments else None

    def to_dict(self) -> dict[str, Any]:
        last = self.last_segment
        return {
            "replica": self.replica,
            "replica_location": self.client.describe(),
            "generation": self.generation,
            "snapshot_index": self.snapshot.index,
            "snapshot_size": self.snapshot.size,
            "snapshot_created": _rfc3339(self.snapshot.created_at),
            "wal_indexes": [f"{i:08x}" for i in self.indexes],
            "segments": len(self.segments),
            "segment_bytes": sum(s.size for s in self.segments),
            "total_bytes": self.total_bytes,
            "last_index": last.index if last else self.snapshot.index,
            "last_segment_offset": last.offset if last else None,
            "restores_to": _rfc3339(self.restores_to),
            "generation_start": _rfc3339(self.generation_created_at),
            "generation_end": _rfc3339(self.generation_updated_at),
            "target_index": self.target_index,
            "timestamp": _rfc3339(self.timestamp) if self.timestamp else None,
        }


@dataclass(frozen=True)
class RestoreResult:
    """What a finished restore produced."""

    output: str
    replica: str
    generation: str
    snapshot_index: int
    #: Position just past the last WAL byte applied (offset 0 of the snapshot's index
    #: when no segment was applied) — Litestream's ``Pos`` of the restored state.
    pos: Pos
    segments: int
    bytes_downloaded: int
    wal_bytes: int
    db_size: int
    restored_to: datetime
    integrity_check: str
    elapsed: float

    @property
    def last_index(self) -> int:
        return self.pos.index

    @property
    def last_offset(self) -> int:
        return self.pos.offset

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "replica": self.replica,
            "generation": self.generation,
            "snapshot_index": self.snapshot_index,
            "last_index": self.pos.index,
            "last_offset": self.pos.offset,
            "position": str(self.pos),
            "segments": self.segments,
            "bytes_downloaded": self.bytes_downloaded,
            "wal_bytes": self.wal_bytes,
            "db_size": self.db_size,
            "restored_to": _rfc3339(self.restored_to),
            "integrity_check": self.integrity_check,
            "elapsed_seconds": round(self.elapsed, 6),
        }


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


# --------------------------------------------------------------------------- planning


def list_generations(
    clients: Mapping[str, ReplicaClient],
    *,
    replica: str | None = None,
    generation: str | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
) -> list[GenerationInfo]:
    """list_generations lists every (replica, generation) with its snapshots and segments.

    Listings of different generations run in parallel; the result keeps replica order
    (as given) and generation order (sorted).
    """
    if replica is not None and replica not in clients:
        raise RestoreError(f"replica {replica!r} not found")
    names = [replica] if replica is not None else list(clients)
    pairs: list[tuple[str, str]] = []
    for name in names:
        gens = clients[name].generations()
        pairs.extend((name, g) for g in gens if generation is None or g == generation)

    def one(pair: tuple[str, str]) -> GenerationInfo:
        name, gen = pair
        c = clients[name]
        return GenerationInfo(name, gen, tuple(c.snapshots(gen)), tuple(c.wal_segments(gen)))

    if len(pairs) <= 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(pairs)))) as pool:
        return list(pool.map(one, pairs))


def plan_restore(
    clients: Mapping[str, ReplicaClient],
    *,
    generation: str | None = None,
    index: int | None = None,
    timestamp: datetime | None = None,
    replica: str | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
) -> RestorePlan:
    """plan_restore chooses the replica, generation, snapshot and segments to restore.

    See the module docstring for the rules. Raises ``NoBackupFound`` when nothing matches,
    ``RestoreError`` for bad arguments or an unusable replica (missing WAL index, missing
    initial segment), naming the object that is missing.
    """
    if index is not None and generation is None:
        raise RestoreError("must specify generation when restoring to index")
    if index is not None and timestamp is not None:
        raise RestoreError("cannot specify index & timestamp to restore")
    if index is not None and index < 0:
        raise RestoreError(f"invalid index {index}")
    if timestamp is not None:
        timestamp = _utc(timestamp)

    infos = list_generations(
        clients, replica=replica, generation=generation, parallelism=parallelism
    )
    where = f"replica {replica!r}" if replica is not None else _describe(clients)
    if not infos:
        if generation is not None:
            raise NoBackupFound(
                f"no matching backups found: generation {generation} not in {where}"
            )
        raise NoBackupFound(f"no matching backups found: no generations in {where}")

    best: tuple[tuple, GenerationInfo, SnapshotInfo] | None = None
    earliest: datetime | None = None
    for info in infos:
        snap = _pick_snapshot(info, index, timestamp)
        if info.snapshots:
            first = min(s.created_at for s in info.snapshots)
            earliest = first if earliest is None else min(earliest, first)
        if snap is None:
            if not info.snapshots:
                log.warning(
                    "generation %s of replica %s has no snapshot; it cannot be restored",
                    info.generation,
                    info.replica,
                )
            continue
        updated = info.updated_at
        assert updated is not None
        if timestamp is not None:
            rank: tuple = (timestamp <= updated, updated)
        else:
            rank = (updated,)
        if best is None or rank > best[0]:
            best = (rank, info, snap)

    if best is None:
        if timestamp is not None:
            if earliest is None:
                raise NoBackupFound(f"no matching backups found: no snapshots in {where}")
            raise NoBackupFound(
                f"no matching backups found: no snapshot at or before {_rfc3339(timestamp)} "
                f"(earliest snapshot is at {_rfc3339(earliest)})"
            )
        if index is not None:
            raise NoBackupFound(
                f"no matching backups found: no snapshot at or before index {index:08x} "
                f"in generation {generation}"
            )
        raise NoBackupFound(f"no matching backups found: no snapshots in {where}")

    _, info, snap = best
    client = clients[info.replica]
    segments = _pick_segments(info, snap, index, timestamp)

    if index is not None and index != snap.index and not any(s.index == index for s in segments):
        highest = max([snap.index, *(s.index for s in info.segments)])
        raise RestoreError(
            f"WAL index {index:08x} not found in generation {info.generation} "
            f"(highest index is {highest:08x})"
        )
    _check_segments(client, info.generation, snap.index, segments)

    created, updated = info.created_at, info.updated_at
    assert created is not None and updated is not None
    return RestorePlan(
        replica=info.replica,
        client=client,
        generation=info.generation,
        snapshot=snap,
        segments=tuple(segments),
        generation_created_at=created,
        generation_updated_at=updated,
        target_index=index,
        timestamp=timestamp,
    )


def _describe(clients: Mapping[str, ReplicaClient]) -> str:
    parts = [f"{name} ({c.describe()})" for name, c in clients.items()]
    if not parts:
        return "no replicas"
    return "replica " + parts[0] if len(parts) == 1 else "replicas " + ", ".join(parts)


def _pick_snapshot(
    info: GenerationInfo, index: int | None, timestamp: datetime | None
) -> SnapshotInfo | None:
    snaps: Iterable[SnapshotInfo] = info.snapshots
    if index is not None:
        snaps = [s for s in snaps if s.index <= index]
        return max(snaps, key=lambda s: s.index, default=None)
    if timestamp is not None:
        snaps = [s for s in snaps if s.created_at <= timestamp]
        return max(snaps, key=lambda s: (s.created_at, s.index), default=None)
    return max(snaps, key=lambda s: s.index, default=None)


def _pick_segments(
    info: GenerationInfo, snap: SnapshotInfo, index: int | None, timestamp: datetime | None
) -> list[WALSegmentInfo]:
    out = []
    for s in sorted(info.segments, key=lambda s: (s.index, s.offset)):
        if s.index < snap.index:
            continue
        if index is not None and s.index > index:
            break
        if timestamp is not None and s.created_at > timestamp:
            break
        out.append(s)
    return out


def _check_segments(
    client: ReplicaClient, generation: str, first_index: int, segments: list[WALSegmentInfo]
) -> None:
    """_check_segments verifies index continuity, offset 0 first, increasing offsets."""
    if not segments:
        return
    by_index: dict[int, list[WALSegmentInfo]] = {}
    for s in segments:
        by_index.setdefault(s.index, []).append(s)
    for idx in range(first_index, segments[-1].index + 1):
        group = by_index.get(idx)
        if not group:
            raise RestoreError(
                f"missing WAL index {generation}/{idx:08x}: no segments; expected "
                f"{client.object_key(generation, idx, 0)}"
            )
        if group[0].offset != 0:
            raise RestoreError(
                f"missing initial WAL segment {client.object_key(generation, idx, 0)} "
                f"(first segment of index {idx:08x} is at offset {group[0].offset})"
            )
        for a, b in zip(group, group[1:], strict=False):
            if b.offset <= a.offset:
                raise RestoreError(
                    f"WAL segments out of order: {client.object_key(generation, idx, a.offset)} "
                    f"then {client.object_key(generation, idx, b.offset)}"
                )


# --------------------------------------------------------------------------- applying


class _Progress:
    """Thread-safe adapter for a progress callable or tqdm-like bar."""

    def __init__(self, sink: Progress | None) -> None:
        self._lock = threading.Lock()
        if sink is None:
            self._fn: Callable[[int], Any] | None = None
        elif hasattr(sink, "update") and not callable(sink):
            self._fn = sink.update
        elif callable(sink):
            self._fn = sink
        else:
            self._fn = sink.update
        self.total = 0

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
            if self._fn is not None:
                self._fn(n)


class _CountingReader:
    """Wraps a binary stream and reports every read's size to ``progress``."""

    def __init__(self, src: BinaryIO, progress: _Progress) -> None:
        self._src = src
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        buf = self._src.read(n)
        if buf:
            self._progress(len(buf))
        return buf

    def readinto(self, b) -> int:
        n = read_into(self._src, memoryview(b))
        if n:
            self._progress(n)
        return n


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


#: Start the disk writing what is dirty each time this much more has been written.
FLUSH_BYTES = 64 << 20
#: mmap limit for the integrity check (SQLite maps at most this much of the file).
MMAP_CHECK_BYTES = 1 << 40


class _Flusher:
    """_Flusher keeps the disk busy while a large file is written: every ``FLUSH_BYTES``
    it runs ``fdatasync`` in a background thread (one at a time), so the final fsync only
    has the tail left instead of the whole database (measured on a 517 MiB snapshot: the
    write plus its fsync went from 2.5 s to 1.3 s). An error of a background fdatasync (a
    full disk, EIO) is raised by ``close``, which also closes the descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._since = 0
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def _run(self) -> None:
        try:
            os.fdatasync(self.fd) if hasattr(os, "fdatasync") else os.fsync(self.fd)
        except OSError as exc:
            self._error = exc

    def wrote(self, n: int) -> None:
        self._since += n
        if self._since >= FLUSH_BYTES and (self._thread is None or not self._thread.is_alive()):
            self.flush_now()

    def flush_now(self) -> None:
        """Start a background fdatasync now (call only while none is running)."""
        self._since = 0
        self._thread = threading.Thread(target=self._run, name="restore-flush", daemon=True)
        self._thread.start()

    def close(self, path: str, what: str) -> None:
        """Wait for the background flush and close ``fd``; a flush error becomes a
        RestoreError "<what> <path>: <reason>"."""
        try:
            if self._thread is not None:
                self._thread.join()
                self._thread = None
        finally:
            os.close(self.fd)
        if self._error is not None:
            raise RestoreError(f"{what} {path}: {self._error.strerror}") from self._error


class _Restorer:
    """One restore run: the temp files it owns and the steps that fill them."""

    def __init__(
        self,
        plan: RestorePlan,
        output: str,
        parallelism: int,
        integrity_check: str,
        progress: Progress | None,
    ) -> None:
        self.plan = plan
        self.client = plan.client
        self.output = output
        self.parallelism = max(1, int(parallelism))
        self.integrity_check = integrity_check
        self.progress = _Progress(progress)
        self.dir = os.path.dirname(output) or "."
        fd, self.tmp = tempfile.mkstemp(
            prefix=os.path.basename(output) + ".", suffix=".tmp", dir=self.dir
        )
        os.close(fd)
        self.page_size = 0
        self.wal_bytes = 0
        # Decode buffers, reused (compression.decompress_blocks). A big segment takes one
        # of BIG_SEGMENT_SLOTS pairs from this queue and waits while none is free: the
        # pairs are the slots. Small segments use a pair of their worker thread's own.
        self._big_buffers: queue.SimpleQueue[tuple[ScratchBuffer, ScratchBuffer]] = (
            queue.SimpleQueue()
        )
        for _ in range(BIG_SEGMENT_SLOTS):
            self._big_buffers.put(_decode_buffers(DECODE_KEEP))
        self._local = threading.local()

    # -- temp files

    def index_path(self, index: int) -> str:
        return f"{self.tmp}-{index:08x}-wal"

    def cleanup(self) -> None:
        paths = [self.tmp, *glob.glob(glob.escape(self.tmp) + "-*")]
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    # -- downloads (worker threads)

    def fetch_snapshot(self) -> int:
        snap = self.plan.snapshot
        key = self.client.object_key(self.plan.generation, snap.index)
        try:
            with self.client.snapshot_reader(self.plan.generation, snap.index) as src:
                fd = os.open(self.tmp, os.O_WRONLY | os.O_TRUNC)
                flusher = _Flusher(fd)
                # Probing: the check and the application read these pages back at once,
                # so they stay in the page cache unless filling it proves slow here.
                out = directio.DirectWriter(fd, probe=directio.PROBE_BYTES)

                def write(block: memoryview) -> None:
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise RestoreError(f"write {self.tmp}: {exc.strerror}") from exc
                    flusher.wrote(len(block))

                try:
                    decompress_to(_CountingReader(src, self.progress), key, write)
                    try:
                        out.close()
                    except OSError as exc:
                        raise RestoreError(f"write {self.tmp}: {exc.strerror}") from exc
                finally:
                    flusher.close(self.tmp, "write")
        except LitestreamError:
            raise
        except OSError as exc:
            raise ReplicaError(f"read {key}: {exc}") from exc
        n = out.size
        if out.probed_ns_per_byte is not None:
            log.debug(
                "snapshot write: page cache %.2f ns/byte, %s",
                out.probed_ns_per_byte,
                "O_DIRECT" if out.probed_ns_per_byte > directio.COLD_NS_PER_BYTE else "buffered",
            )
        if n < 100:
            raise CorruptObject(key, f"snapshot is {n} bytes, too short for a SQLite database")
        with open(self.tmp, "rb") as f:
            header = f.read(100)
        if header[:16] != SQLITE_HEADER:
            raise CorruptObject(key, "not a SQLite database (bad header)")
        (ps,) = struct.unpack_from(">H", header, 16)
        self.page_size = 65536 if ps == 1 else ps
        if self.page_size < 512 or self.page_size & (self.page_size - 1) or n % self.page_size:
            raise CorruptObject(
                key, f"snapshot size {n} is not a multiple of its page size {self.page_size}"
            )
        return n

    def fetch_segment(self, seg: WALSegmentInfo) -> int:
        """Decompress one segment into its place in the index file; return its length."""
        if seg.size > BIG_SEGMENT_BYTES:
            bufs = self._big_buffers.get()
            try:
                return self._fetch_segment(seg, bufs)
            finally:
                self._big_buffers.put(bufs)
        bufs = getattr(self._local, "buffers", None)
        if bufs is None:
            # The output buffer is a whole block (4 MiB) but only the pages a decode
            # touches are resident; the input (compressed) side is small for these.
            bufs = self._local.buffers = _decode_buffers(SMALL_SEGMENT_KEEP)
        return self._fetch_segment(seg, bufs)

    def _fetch_segment(self, seg: WALSegmentInfo, bufs: tuple[ScratchBuffer, ScratchBuffer]) -> int:
        key = self.client.object_key(seg.generation, seg.index, seg.offset)
        fd = os.open(self.index_path(seg.index), os.O_WRONLY | os.O_CREAT, 0o600)
        pos = seg.offset
        try:
            with self.client.wal_segment_reader(seg.pos) as src:
                for chunk in decompress_blocks(_CountingReader(src, self.progress), key, *bufs):
                    try:
                        _pwrite_all(fd, chunk, pos)
                    except OSError as exc:
                        raise RestoreError(
                            f"write {self.index_path(seg.index)}: {exc.strerror}"
                        ) from exc
                    pos += len(chunk)
        except LitestreamError:
            raise
        except OSError as exc:
            raise ReplicaError(f"read {key}: {exc}") from exc
        finally:
            os.close(fd)
        return pos - seg.offset

    # -- apply (main thread)

    def apply_index(self, index: int, segs: list[WALSegmentInfo], lengths: list[int]) -> int:
        """Verify the assembled WAL of ``index`` and checkpoint it into the temp DB."""
        gen = self.plan.generation
        key = self.client.object_key

        for i, (s, n) in enumerate(zip(segs, lengths, strict=True)):
            end = s.offset + n
            if i + 1 < len(segs):
                nxt = segs[i + 1].offset
                if end < nxt:
                    raise RestoreError(
                        f"missing WAL segment {key(gen, index, end)}: "
                        f"{key(gen, index, s.offset)} ends at offset {end} but the next "
                        f"segment starts at offset {nxt}"
                    )
                if end > nxt:
                    raise CorruptObject(
                        key(gen, index, s.offset),
                        f"decompressed to {n} bytes, overrunning the next segment at offset {nxt}",
                    )
        wal_len = segs[-1].offset + lengths[-1]
        first_key = key(gen, index, 0)
        if wal_len < wal.WAL_HEADER_SIZE or lengths[0] < wal.WAL_HEADER_SIZE:
            raise CorruptObject(first_key, f"{lengths[0]} bytes, too short for a WAL header")

        path = self.index_path(index)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if len(mm) != wal_len:
                raise RestoreError(
                    f"WAL index {index:08x}: assembled {len(mm)} bytes, expected {wal_len}"
                )
            try:
                hdr = wal.WalHeader.parse(mm)
            except InvalidWALHeader as exc:
                raise CorruptObject(first_key, str(exc)) from None
            if hdr.page_size != self.page_size:
                raise CorruptObject(
                    first_key,
                    f"WAL page size {hdr.page_size} does not match the snapshot's {self.page_size}",
                )
            r = wal.scan(mm, hdr, wal.WAL_HEADER_SIZE)
        if r.commit_end != wal_len:
            if r.stop != wal.STOP_EOF:
                bad, why = (
                    r.valid_end,
                    f"frame at WAL offset {r.valid_end} fails the {r.stop_name} check",
                )
            else:
                bad, why = r.commit_end, "the WAL ends inside an uncommitted transaction"
            culprit = segs[-1]
            for s, n in zip(segs, lengths, strict=True):
                if s.offset <= bad < s.offset + n:
                    culprit = s
                    break
            raise CorruptObject(
                key(gen, index, culprit.offset),
                f"{why} (index {index:08x}); the salt/checksum chain is broken",
            )

        frames = (wal_len - wal.WAL_HEADER_SIZE) // hdr.frame_size
        self.wal_bytes += wal_len
        if frames == 0:
            os.unlink(path)
            return wal_len
        os.replace(path, self.tmp + "-wal")
        conn = apsw.Connection(self.tmp, flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            conn.execute("PRAGMA synchronous=OFF")
            # PASSIVE reports how many frames SQLite saw and copied (TRUNCATE reports 0/0
            # once it has reset the WAL); with no other connection it copies them all.
            busy, log_frames, ckpt = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            tbusy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
        finally:
            conn.close()
        if busy != 0 or tbusy != 0 or log_frames != frames or ckpt != frames:
            raise RestoreError(
                f"checkpoint of WAL index {gen}/{index:08x} incomplete: busy={busy or tbusy} "
                f"log={log_frames} checkpointed={ckpt}, expected {frames} frames"
            )
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp + suffix)
        return wal_len

    def finish(self) -> int:
        """Integrity check, WAL journal mode, fsync; returns the database size.

        The fsync runs in a thread while SQLite checks the file, so the check costs no wall
        time beyond whichever of the two is longer. (Where the snapshot went out with
        O_DIRECT, the check reads its pages from the disk; a POSIX_FADV_WILLNEED read-ahead
        in a thread beside it made a cold 517 MiB restore slower, 1.3-1.7 s against
        1.0-1.2 s.)
        """
        syncer = _Flusher(os.open(self.tmp, os.O_RDONLY))
        syncer.flush_now()
        try:
            self._check_and_set_wal_mode()
        finally:
            syncer.close(self.tmp, "fsync")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp + suffix)
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # whatever the check or the journal-mode switch wrote (usually nothing)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise RestoreError(f"fsync {self.tmp}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return size

    def _check_and_set_wal_mode(self) -> None:
        conn = apsw.Connection(self.tmp, flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            if self.integrity_check != "none":
                # Read the file through mmap: the check is then about twice as fast (0.27 s
                # instead of 0.53 s on 517 MiB) as copying each page into SQLite's cache.
                conn.execute(f"PRAGMA mmap_size={MMAP_CHECK_BYTES}").fetchall()
                pragma = "quick_check" if self.integrity_check == "quick" else "integrity_check"
                try:
                    rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}(10)")]
                except apsw.Error as exc:  # SQLite may report corruption as an error
                    rows = [f"{type(exc).__name__}: {exc}"]
                if rows != ["ok"]:
                    raise IntegrityCheckFailed(
                        f"restored database failed PRAGMA {pragma}: " + "; ".join(map(str, rows))
                    )
            mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode=wal").fetchall()
        finally:
            conn.close()

    def publish(self) -> None:
        """Move the temp DB to the output without ever replacing an existing file."""
        try:
            os.link(self.tmp, self.output)
        except FileExistsError:
            raise OutputExists(
                f"cannot restore, output path already exists: {self.output}"
            ) from None
        except OSError:  # no hard links here (some network/FUSE filesystems)
            if os.path.lexists(self.output):
                raise OutputExists(
                    f"cannot restore, output path already exists: {self.output}"
                ) from None
            os.rename(self.tmp, self.output)
        else:
            os.unlink(self.tmp)
        with contextlib.suppress(OSError):
            dfd = os.open(self.dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def run(self) -> tuple[int, Pos]:
        plan = self.plan
        segs = list(plan.segments)
        with ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="restore") as pool:
            try:
                snap_future = pool.submit(self.fetch_snapshot)
                # Workers = parallelism; a few more segments may wait queued so workers stay
                # busy while this thread checkpoints an index (disk ahead stays bounded).
                results = _ordered_window(
                    pool, self.fetch_segment, segs, self.parallelism * WINDOW_FACTOR
                )
                pos = Pos(plan.generation, plan.snapshot.index, 0)
                group: list[WALSegmentInfo] = []
                lengths: list[int] = []
                snap_future.result()
                for i, (seg, n) in enumerate(zip(segs, results, strict=False)):
                    group.append(seg)
                    lengths.append(n)
                    if i + 1 == len(segs) or segs[i + 1].index != seg.index:
                        end = self.apply_index(seg.index, group, lengths)
                        pos = Pos(plan.generation, seg.index, end)
                        group, lengths = [], []
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return self.finish(), pos


def _decode_buffers(in_keep: int) -> tuple[ScratchBuffer, ScratchBuffer]:
    """An input buffer (keeping up to ``in_keep``) and a whole-block output buffer for
    ``decompress_blocks``."""
    return ScratchBuffer(keep=in_keep), ScratchBuffer(keep=DECODE_KEEP)


def _ordered_window(
    pool: ThreadPoolExecutor, fn: Callable[[WALSegmentInfo], int], items: list, window: int
) -> Iterator[int]:
    """Return an iterator of ``fn(item)`` in order, at most ``window`` calls in flight.

    The first ``window`` calls are submitted at once (before the iterator is consumed), so
    they overlap with whatever the caller waits for first (the snapshot download).
    """
    pending: deque[Future[int]] = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break

    def results() -> Iterator[int]:
        try:
            while pending:
                result = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                yield result
        finally:
            for f in pending:
                f.cancel()

    return results()


#: The temp files of a restore to ``<output>``: ``<output>.<8 chars>.tmp`` (mkstemp) and
#: the ``-<index>-wal``, ``-wal``, ``-shm`` files beside it.
_TEMP_SUFFIX = re.compile(r"\.[a-z0-9_]{8}\.tmp(-[0-9a-f]{8}-wal|-wal|-shm|-journal)?")


def _remove_stale_temps(output: str) -> None:
    """Remove what an earlier restore to ``output`` left when it was killed (kill -9 or
    power loss run no cleanup); they can be as large as the database."""
    d, base = os.path.split(output)
    for name in os.listdir(d or "."):
        if name.startswith(base) and _TEMP_SUFFIX.fullmatch(name[len(base) :]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, name))
                log.info("removed a temp file left by an interrupted restore: %s", name)


def restore(
    plan: RestorePlan,
    output: str,
    *,
    parallelism: int = DEFAULT_PARALLELISM,
    integrity_check: str = "quick",
    progress: Progress | None = None,
) -> RestoreResult:
    """restore materialises ``plan`` as a new database file at ``output``.

    ``integrity_check`` is ``none``, ``quick`` (PRAGMA quick_check) or ``full``
    (PRAGMA integrity_check). ``progress`` receives stored bytes as they are read (a
    callable taking an increment, or a tqdm-like object). Raises ``OutputExists`` if
    ``output`` exists, ``CorruptObject`` naming a damaged object, ``RestoreError`` for a
    gap, ``IntegrityCheckFailed``; on any error no output and no temp file remain.
    """
    if integrity_check not in INTEGRITY_CHECKS:
        raise RestoreError(
            f"invalid integrity check {integrity_check!r} (one of: {', '.join(INTEGRITY_CHECKS)})"
        )
    output = os.path.abspath(os.path.expanduser(output))
    if os.path.lexists(output):
        raise OutputExists(f"cannot restore, output path already exists: {output}")
    stale = output + "-wal"
    with contextlib.suppress(FileNotFoundError):
        if os.path.getsize(stale) > 0:
            raise RestoreError(
                f"cannot restore, a WAL file from another database exists at {stale}; "
                "SQLite would apply it to the restored database (remove it first)"
            )
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    _remove_stale_temps(output)

    start = time.monotonic()
    r = _Restorer(plan, output, parallelism, integrity_check, progress)
    try:
        db_size, pos = r.run()
        r.publish()
    except BaseException:
        r.cleanup()
        raise
    return RestoreResult(
        output=output,
        replica=plan.replica,
        generation=plan.generation,
        snapshot_index=plan.snapshot.index,
        pos=pos,
        segments=len(plan.segments),
        bytes_downloaded=r.progress.total,
        wal_bytes=r.wal_bytes,
        db_size=db_size,
        restored_to=plan.restores_to,
        integrity_check=integrity_check,
        elapsed=time.monotonic() - start,
    )
