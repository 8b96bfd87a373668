"""One replica of one database: ships shadow-WAL bytes and snapshots to a ReplicaClient.

``sync_once`` is a plain method (tests call it directly); the scheduler calls it every
``sync-interval``. Each call asks the DB to sync first, so what was committed before the
call is uploaded by it: lag is one sync interval plus the upload, not two intervals.

Position bookkeeping follows Litestream v0.3: on start, or when the DB's generation
changes, the replica LISTs the generation (snapshot needed? where do segments end?) once;
afterwards it tracks its position in memory, so an idle database costs zero requests.
A segment is the byte range [replica position, committed end) of one shadow WAL file,
LZ4-framed and streamed in 4 MiB blocks, so memory stays bounded for any transaction size.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

from litestream_fast import compression, wal
from litestream_fast.db import DB
from litestream_fast.errors import LitestreamError, ReplicaDiverged, ReplicaError
from litestream_fast.pos import Pos
from litestream_fast.replica_client import ReplicaClient

log = logging.getLogger("litestream_fast.replica")

READ_CHUNK = 4 << 20
#: What a replica's segment buffers keep between uploads: a whole read chunk and its
#: compressed block. They are anonymous mappings (compression.ScratchBuffer), resident
#: only as far as a segment wrote them; at a 1 s interval a segment is a few MB, and a
#: buffer given back every tick cost a page fault per 4 KiB the next tick.
SEGMENT_SCRATCH_KEEP = READ_CHUNK + (64 << 10)

#: An uploading replica checks at most this often (seconds) that its generation still has
#: a snapshot in storage: if the prefix was wiped or the snapshot deleted, what it uploads
#: could never be restored, so it starts a new generation (a fresh snapshot re-seeds it).
#: Each check is one LIST, so it is rare enough to cost little on S3 (one per 30 s while
#: writing; none while idle).
REMOTE_CHECK_INTERVAL = 30.0
#: ... but not within this long after its own snapshot upload: some stores' listings lag
#: their writes, and a lagging LIST must not look like a lost snapshot.
REMOTE_CHECK_GRACE = 10.0


class Replica:
    """Replica uploads one DB's changes to one storage client."""

    def __init__(
        self,
        db: DB,
        client: ReplicaClient,
        name: str = "",
        sync_interval: float = 1.0,
        *,
        retention: float = 24 * 3600.0,
        retention_check_interval: float = 3600.0,
        snapshot_interval: float = 0.0,
        validation_interval: float = 0.0,
    ) -> None:
        self.db = db
        self.client = client
        self.name = name or client.type
        self.sync_interval = sync_interval
        self.retention = retention
        self.retention_check_interval = retention_check_interval
        self.snapshot_interval = snapshot_interval
        self.validation_interval = validation_interval
        self._last_validation_at = time.monotonic()
        self.last_snapshot_at: float | None = None  # wall time of the newest snapshot
        self._last_retention_at = time.monotonic()
        self.behind_since: float | None = None  # wall time the DB first got ahead of us
        self.pos = Pos("", 0, 0)
        self.last_sync_at: float | None = None  # wall time of the last successful sync
        self.last_error: str | None = None
        self.wal_bytes = 0
        self.segments_uploaded = 0
        self.snapshots_taken = 0
        self.validations: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._remote_checked_at = time.monotonic()
        self._snapshot_uploaded_at = 0.0
        # Reused by every segment upload (see compression.ScratchBuffer); the lock covers
        # a final sync racing an upload thread that did not stop in time.
        self._read_scratch = compression.ScratchBuffer(keep=SEGMENT_SCRATCH_KEEP)
        self._compress_scratch = compression.ScratchBuffer(keep=SEGMENT_SCRATCH_KEEP)
        self._scratch_lock = threading.Lock()

    # ------------------------------------------------------------------- sync

    def sync_once(self) -> Pos:
        """sync_once uploads everything the DB has committed, snapshotting first if the
        replica holds nothing for the DB's current generation. Returns the new position."""
        self.db.sync()
        dbpos = self.db.pos()
        if dbpos.is_zero:
            return self.pos
        if dbpos != self.pos and self.behind_since is None:
            self.behind_since = time.time()
        if self.pos.generation != dbpos.generation:
            self.pos = self._init_generation(dbpos.generation)
            dbpos = self.db.pos()  # a diverged replica moved the DB to a new generation
        elif self.pos < dbpos and self._snapshot_lost(dbpos.generation):
            log.error("replica lost the snapshot of generation %s (objects deleted?); starting "
                      "a new generation: db=%s replica=%s", dbpos.generation, self.db.path,
                      self.name)  # fmt: skip
            self.db.new_generation("replica lost its snapshot")
            self.db.sync()
            dbpos = self.db.pos()
            self.pos = self._init_generation(dbpos.generation)
        if self.pos.generation == dbpos.generation and self.pos > dbpos:
            self.pos = self._diverged(f"replica position {self.pos} is past the database's {dbpos}")
            dbpos = self.db.pos()
        while self.pos < dbpos:
            if self.pos.generation != dbpos.generation:
                break  # the DB started a new generation meanwhile: the next sync follows it
            end = self.db.shadow_committed_size(self.pos.generation, self.pos.index)
            if end is None:
                # The shadow file we need is gone (e.g. meta directory damaged): re-seed
                # with a fresh snapshot in this generation.
                log.warning("shadow wal %08x missing; taking a new snapshot: db=%s replica=%s",
                            self.pos.index, self.db.path, self.name)  # fmt: skip
                self.pos = self._snapshot_and_position(dbpos.generation)
                continue
            if self.pos.offset > end:
                self.pos = self._diverged(
                    f"replica position {self.pos} is past the local shadow wal (size {end})"
                )
                dbpos = self.db.pos()
                continue
            if self.pos.offset == end:
                if self.pos.index < dbpos.index:
                    self.pos = Pos(self.pos.generation, self.pos.index + 1, 0)
                    continue
                break
            self._upload_segment(self.pos, end)
            self.pos = Pos(self.pos.generation, self.pos.index, end)
        self.db.set_replica_position(self.name, self.pos)
        self.last_sync_at = time.time()
        self.last_error = None
        if self.pos == dbpos:
            self.behind_since = None
        return self.pos

    def _snapshot_lost(self, generation: str) -> bool:
        """True when storage no longer holds any snapshot of ``generation`` (rate-limited)."""
        now = time.monotonic()
        if (
            now - self._remote_checked_at < REMOTE_CHECK_INTERVAL
            or now - self._snapshot_uploaded_at < REMOTE_CHECK_GRACE
        ):
            return False
        self._remote_checked_at = now
        return not self.client.snapshots(generation)

    def lag(self) -> float:
        """lag is how long the database has held data this replica has not (seconds)."""
        return 0.0 if self.behind_since is None else max(0.0, time.time() - self.behind_since)

    def _upload_segment(self, pos: Pos, end: int) -> None:
        path = self.db.shadow_wal_path(pos.index) if pos.generation == self.db.generation else None
        if path is None:
            raise ReplicaError(f"generation {pos.generation} is no longer current")
        n = end - pos.offset
        with self._scratch_lock, open(path, "rb") as f:
            chunks = _read_range(f, pos.offset, end, self._read_scratch)
            self.client.write_wal_segment(
                pos, compression.compress_chunks(chunks, self._compress_scratch)
            )
        self.wal_bytes += n
        self.segments_uploaded += 1
        log.debug(
            "wal segment written: db=%s replica=%s pos=%s size=%d", self.db.path, self.name, pos, n
        )

    # -------------------------------------------------------------- positions

    def _diverged(self, why: str) -> Pos:
        """The replica holds WAL the local shadow does not (``why``): the shadow WAL is not
        fsynced, so a machine crash can cut its tail after that tail was uploaded, and the
        application's own unsynced WAL may have lost it too. Extending this generation
        would leave a gap or mix two histories; a new generation (with a snapshot) is the
        answer. Returns the replica's position in it."""
        log.warning("%s; starting a new generation: db=%s replica=%s", why, self.db.path,
                    self.name)  # fmt: skip
        self.db.new_generation("replica ahead of the shadow wal")
        self.db.sync()
        return self._init_generation(self.db.pos().generation)

    def _init_generation(self, generation: str) -> Pos:
        """Work out where this replica stands in ``generation`` (LISTs, maybe one GET);
        snapshot if the generation has no snapshot yet. A replica that diverged from the
        local shadow WAL moves to a new generation instead (``_diverged``)."""
        try:
            pos = self.calc_pos(generation)
        except ReplicaDiverged as exc:
            return self._diverged(str(exc))
        if not self.client.snapshots(generation):
            return self._snapshot_and_position(generation, pos)
        return pos

    def _snapshot_and_position(self, generation: str, start: Pos | None = None) -> Pos:
        pos = self.snapshot(start)
        if pos.generation != generation:
            return Pos("", 0, 0)  # the DB moved on meanwhile; next sync starts over
        return pos

    def calc_pos(self, generation: str) -> Pos:
        """calc_pos finds the end of the last uploaded segment of ``generation``.

        With no segment it is the start of the newest snapshot's index. The last segment is
        downloaded to learn its length, and its last frame is compared with the local
        shadow WAL, so a replica that diverged from this database is caught, not extended.
        """
        snaps = self.client.snapshots(generation)
        segs = self.client.wal_segments(generation)
        max_snap = max((s.index for s in snaps), default=0)
        if not segs or (segs[-1].index < max_snap):
            return Pos(generation, max_snap, 0)
        last = segs[-1]
        key = self.client.object_key(generation, last.index, last.offset)
        with self.client.wal_segment_reader(last.pos) as r:
            data = b"".join(compression.decompress_stream(r, key))
        end = last.offset + len(data)
        local = self.db.shadow_committed_size(generation, last.index)
        if local is not None and local >= end and len(data) > wal.WAL_HEADER_SIZE:
            fs = wal.frame_size(self.db.page_size)
            tail = data[-fs:]
            with open(self.db.shadow_wal_path(last.index), "rb") as f:
                mine = os.pread(f.fileno(), fs, end - fs)
            if tail != mine:
                raise ReplicaDiverged(f"replica object {key} does not match the local shadow wal")
        return Pos(generation, last.index, end)

    # -------------------------------------------------------------- snapshots

    def snapshot(self, start: Pos | None = None) -> Pos:
        """snapshot uploads the whole database file as ``<index>.snapshot.lz4``.

        A database file read while the application may checkpoint is only consistent
        together with the WAL frames up to the moment it was read. So, with checkpoints
        held off, the segments of the snapshot's index up to the current position are
        uploaded *first*, then the snapshot: a generation that has a snapshot can always
        be restored, and a crash in between leaves a generation without a snapshot, which
        restore skips. Returns the replica's new position, which ``self.pos`` takes only
        once the snapshot is stored (a position in a generation without a snapshot would
        claim data no restore can reach). ``start`` is where the replica's objects of this
        generation end, if not ``self.pos``.
        """
        t0 = time.monotonic()
        with self.db.snapshot_chunks(READ_CHUNK) as (pos, chunks):
            cur = self.pos if start is None else start
            if cur.generation != pos.generation or cur.index != pos.index:
                cur = Pos(pos.generation, pos.index, 0)
            if cur.offset < pos.offset:
                self._upload_segment(cur, pos.offset)
            info = self.client.write_snapshot(
                pos.generation,
                pos.index,
                compression.compress_chunks(_with_progress(chunks, self.db.path)),
            )
        self.pos = pos
        self.snapshots_taken += 1
        self._snapshot_uploaded_at = time.monotonic()
        self.last_snapshot_at = info.created_at.timestamp()
        log.info("snapshot written: db=%s replica=%s generation=%s index=%08x size=%d seconds=%.2f",
                 self.db.path, self.name, pos.generation, pos.index, info.size, time.monotonic() - t0)  # fmt: skip
        return pos

    # ---------------------------------------------------------- retention

    def snapshot_due(self, now: float | None = None) -> bool:
        """snapshot_due says whether ``snapshot-interval`` asks for a snapshot now."""
        if self.snapshot_interval <= 0 or self.pos.is_zero:
            return False
        now = time.time() if now is None else now
        if self.last_snapshot_at is None:
            snaps = self.client.snapshots(self.pos.generation)
            self.last_snapshot_at = max((s.created_at.timestamp() for s in snaps), default=0.0)
        return now - self.last_snapshot_at >= self.snapshot_interval

    def enforce_retention(self, now: float | None = None) -> int:
        """enforce_retention applies Litestream v0.3's retention; returns objects deleted.

        Keeps every snapshot newer than ``now - retention`` (taking one first if there is
        none), deletes older snapshots and the WAL segments only they needed, and deletes
        generations that keep no snapshot. The current generation's newest snapshot and
        every segment after it are never deleted, so the newest restorable point stays.
        """
        if self.retention <= 0:
            return 0
        now = time.time() if now is None else now
        cutoff = now - self.retention
        gens = self.client.generations()
        snaps = {g: self.client.snapshots(g) for g in gens}
        retained = [s for ss in snaps.values() for s in ss if s.created_at.timestamp() >= cutoff]
        if not retained:
            self.pos = self.snapshot()
            gens = self.client.generations()
            snaps = {g: self.client.snapshots(g) for g in gens}
            retained = [
                s for ss in snaps.values() for s in ss if s.created_at.timestamp() >= cutoff
            ]
            retained += [s for s in snaps.get(self.pos.generation, []) if s.index == self.pos.index]
        current = self.db.generation
        deleted = 0
        for g in gens:
            keep = [s for s in retained if s.generation == g]
            if g == current and not keep and snaps.get(g):
                keep = [snaps[g][-1]]  # never strand the live generation
            if not keep:
                if g == current:
                    continue  # snapshot still being made; its segments are needed
                n = len(snaps.get(g, [])) + len(self.client.wal_segments(g))
                # Snapshots first: a deletion cut short then leaves a generation restore
                # skips, never a snapshot whose chain has holes.
                for s in snaps.get(g, []):
                    self.client.delete_snapshot(g, s.index)
                self.client.delete_generation(g)
                log.info("generation deleted by retention: replica=%s generation=%s", self.name, g)
                deleted += n
                continue
            min_index = min(s.index for s in keep)
            for s in snaps[g]:
                if s.index < min_index:
                    self.client.delete_snapshot(g, s.index)
                    deleted += 1
            old = [seg.pos for seg in self.client.wal_segments(g) if seg.index < min_index]
            if old:
                # Newest first: a pass cut short leaves whole leading indexes, each still
                # starting at offset 0, which Litestream 0.3.13's restore requires.
                self.client.delete_wal_segments(old[::-1])
                deleted += len(old)
        if deleted:
            log.info("retention enforced: replica=%s deleted=%d", self.name, deleted)
        return deleted

    def _periodic(self) -> None:
        """Snapshot and retention work the upload loop does between syncs."""
        if self.snapshot_due():
            # Checkpoint first: if the WAL restarts, the snapshot gets a new index instead
            # of replacing the previous one (which point-in-time restores still need).
            self.db.checkpoint("PASSIVE")
            self.sync_once()
            self.pos = self.snapshot()
        if (
            self.validation_interval > 0
            and time.monotonic() - self._last_validation_at >= self.validation_interval
        ):
            from litestream_fast.validation import validate

            self._last_validation_at = time.monotonic()
            validate(self)
        interval = min(self.retention_check_interval, self.retention) if self.retention > 0 else 0
        if interval > 0 and time.monotonic() - self._last_retention_at >= interval:
            self._last_retention_at = time.monotonic()
            self.enforce_retention()

    # ---------------------------------------------------------------- running

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"replica:{self.name}", daemon=True)
        self._thread.start()

    def stop(self, final_sync: bool = True, timeout: float = 30.0) -> None:
        """stop ends the upload loop; with ``final_sync`` it uploads what is left first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if final_sync:
            try:
                self.sync_once()
            except (LitestreamError, OSError) as exc:
                log.error(
                    "final sync failed: db=%s replica=%s error=%s", self.db.path, self.name, exc
                )

    def _run(self) -> None:
        from litestream_fast.logs import RateLimitedLogger

        errors = RateLimitedLogger(log, interval=30.0)
        backoff = self.sync_interval
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sync_once()
                self._periodic()
                backoff = self.sync_interval
                # Syncs start every interval, not an interval after the previous one
                # ended: a commit waits at most one interval plus one upload.
                wait = started + self.sync_interval - time.monotonic()
            except Exception as exc:  # noqa: BLE001 - any failure is logged and retried
                self.last_error = str(exc)
                self.pos = Pos("", 0, 0)  # recompute from the replica next time (as v0.3)
                errors.error(
                    "replica sync failed: db=%s replica=%s error=%s", self.db.path, self.name, exc
                )
                backoff = min(max(backoff * 2, self.sync_interval), 60.0)
                wait = backoff
            self._stop.wait(max(0.0, wait))


PROGRESS_MIN_BYTES = 64 << 20


def _with_progress(chunks: Iterator[bytes], db_path: str) -> Iterator[bytes]:
    """_with_progress shows a progress bar for a large snapshot when stderr is a terminal
    (never in logs or under a service manager)."""
    try:
        total = os.path.getsize(db_path)
    except OSError:
        total = 0
    if total < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield from chunks
        return
    from tqdm import tqdm

    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="snapshot", leave=False
    ) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk


def _read_range(
    f, start: int, end: int, scratch: compression.ScratchBuffer
) -> Iterator[memoryview]:
    """_read_range yields ``f``'s bytes from ``start`` to ``end`` in chunks of at most
    ``READ_CHUNK``, read into ``scratch`` (each valid until the next is asked for)."""
    off = start
    fd = f.fileno()
    while off < end:
        want = min(READ_CHUNK, end - off)
        buf = scratch.get(want)[:want]
        n = os.preadv(fd, [buf], off)
        if not n:
            raise ReplicaError(f"shadow wal {f.name} shorter than expected ({off} < {end})")
        off += n
        yield buf[:n]
