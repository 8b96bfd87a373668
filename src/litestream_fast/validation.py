"""Validation: does a restore from the replica give exactly the database we replicated?

``validate`` compares, at one known position P (generation, index, offset), the database
built locally from the database file plus our shadow WAL up to P with the database
restored from the replica up to P, by CRC-64 of the two files. Writers are never blocked:
only our own checkpoints are held off while the database file is copied (the same lock a
snapshot takes), and the application's checkpoints cannot backfill past our read mark,
which is at or before P, so "file ⊕ shadow WAL [0, P)" is exactly the state at P.

Litestream v0.3 instead forces a RESTART checkpoint (blocking writers while readers
exist) and compares the live file; we never take RESTART checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import apsw

from litestream_fast import wal
from litestream_fast.errors import ReplicaError
from litestream_fast.pos import Pos
from litestream_fast.restore import plan_restore, restore

log = logging.getLogger("litestream_fast.validation")

CHUNK = 4 << 20


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of one validation."""

    ok: bool
    replica: str
    pos: Pos
    expected_crc64: int
    replica_crc64: int
    detail: str = ""

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "replica": self.replica,
            "position": str(self.pos),
            "expected_crc64": f"{self.expected_crc64:016x}",
            "replica_crc64": f"{self.replica_crc64:016x}",
            "detail": self.detail,
        }


def file_crc64(path: str) -> int:
    """file_crc64 is the CRC-64/ISO of a whole file, read in chunks."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = wal.crc64(chunk, crc)
    return crc


def _copy_range(src: str, dst, start: int, end: int) -> None:
    with open(src, "rb") as f:
        fd = f.fileno()
        off = start
        while off < end:
            data = os.pread(fd, min(CHUNK, end - off), off)
            if not data:
                raise ReplicaError(f"shadow wal {src} shorter than {end} bytes")
            dst.write(data)
            off += len(data)


def validate(replica, tmpdir: str | None = None) -> ValidationResult:
    """validate checks ``replica`` against the local database at its current position.

    Raises on errors that prevent a comparison (replica unreachable, restore failure
    naming the damaged object); returns a result with ok=False on a checksum mismatch.
    """
    db = replica.db
    replica.sync_once()
    work = tempfile.mkdtemp(prefix=".litestream-validate-", dir=tmpdir or os.path.dirname(db.path))
    try:
        expected = os.path.join(work, "expected.db")
        with db.snapshot_chunks(CHUNK) as (_pos, chunks):
            pos = replica.sync_once()  # everything up to here is uploaded
            if pos.is_zero or pos.generation != db.generation:
                raise ReplicaError(f"replica {replica.name} is not in sync with {db.path}")
            with open(expected, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            with open(expected + "-wal", "wb") as f:
                _copy_range(db.shadow_wal_path(pos.index), f, 0, pos.offset)
        conn = apsw.Connection(expected)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
        expected_crc = file_crc64(expected)

        plan = plan_restore(
            {replica.name: replica.client}, generation=pos.generation, index=pos.index
        )
        segs = tuple(s for s in plan.segments if (s.index, s.offset) < (pos.index, pos.offset))
        plan = dataclasses.replace(plan, segments=segs)
        restored = os.path.join(work, "replica.db")
        result = restore(plan, restored, integrity_check="none")
        got_crc = file_crc64(restored)
        detail = ""
        if result.pos != pos and not (pos.offset == 0 and not segs):
            detail = f"replica restores to {result.pos}, expected {pos}"
        elif got_crc != expected_crc:
            detail = "database checksums differ"
        ok = not detail
        out = ValidationResult(ok, replica.name, pos, expected_crc, got_crc, detail)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    key = "ok" if out.ok else "error"
    replica.validations[key] = replica.validations.get(key, 0) + 1
    if out.ok:
        log.info(
            "validation ok: db=%s replica=%s pos=%s crc64=%016x",
            db.path,
            replica.name,
            pos,
            expected_crc,
        )
    else:
        log.error("validation failed: db=%s replica=%s pos=%s %s (expected crc64 %016x, replica %016x)",
                  db.path, replica.name, pos, detail, expected_crc, got_crc)  # fmt: skip
    return out
