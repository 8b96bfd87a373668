"""Run the ``litestream-fast`` CLI and kill -9 it at an exact point of its work.

Usage: ``LF_CRASH_AT=<point> [LF_CRASH_AFTER=n] python crashpoint.py replicate -config CFG``.
The process sends itself SIGKILL the n-th time (default 1) it reaches the point, so the
crash is as abrupt as ``kill -9`` from outside, but lands where a random kill rarely does:

* ``checkpoint-barrier``: our PASSIVE checkpoint holds its write barrier (BEGIN IMMEDIATE),
  the WAL is sealed, the checkpoint has not run yet;
* ``checkpoint-pin-move``: in the unlocked first phase of a checkpoint, the read pin is
  being moved to the WAL's end (the new read transaction begun, the old not yet ended);
* ``checkpoint-after``: ``PRAGMA wal_checkpoint`` ran (the WAL may restart on the next
  write), our read transaction is not re-pinned yet;
* ``checkpoint-restarted``: our checkpoint's own write restarted the WAL; the old index is
  copied, the next shadow index not started;
* ``snapshot-mid``: part of a snapshot has been written to its ``.tmp`` object;
* ``snapshot-before``: a snapshot's segments are uploaded, the snapshot is not;
* ``segment-mid``: part of a WAL segment has been written to its ``.tmp`` object;
* ``segment-after``: a segment is stored, the replica's position is not advanced;
* ``shadow-copy``: new frames were appended to the shadow WAL (the DB's position is not
  advanced);
* ``new-generation``: the new generation is recorded, the old shadow not yet removed;
* ``retention``: retention has deleted some, not all, of the objects it chose.

For ``restore``: ``restore-snapshot`` (part of the snapshot decompressed into the temp
file), ``restore-apply`` (a WAL index assembled, not yet checkpointed into the temp
database), ``restore-finish`` (every index applied; integrity check and fsync not run)
and ``restore-published`` (the output is linked in place, the temp name not yet removed).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

POINT = os.environ.get("LF_CRASH_AT", "")
AFTER = int(os.environ.get("LF_CRASH_AFTER", "1"))
_hits = 0
_lock = threading.Lock()
_local = threading.local()


def hit(point: str) -> None:
    global _hits
    if point != POINT:
        return
    with _lock:
        _hits += 1
        if _hits >= AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    from litestream_fast import db as dbmod
    from litestream_fast import replica as repmod
    from litestream_fast import shadow
    from litestream_fast.clients import file as filemod

    DB = dbmod.DB
    orig_ckpt = DB._checkpoint_locked

    def checkpoint_locked(self, mode):
        _local.in_ckpt = True
        _local.bumped = False
        try:
            return orig_ckpt(self, mode)
        finally:
            _local.in_ckpt = False

    DB._checkpoint_locked = checkpoint_locked

    orig_end_read = DB._end_read

    def end_read(self):
        if getattr(_local, "in_ckpt", False):
            if self._conn is not None and not self._conn.get_autocommit():
                hit("checkpoint-barrier")  # BEGIN IMMEDIATE held, WAL sealed
            else:
                hit("checkpoint-pin-move")  # new read pin taken, old one not yet dropped
        return orig_end_read(self)

    DB._end_read = end_read

    orig_bump = DB._bump_seq

    def bump_seq(self):
        if getattr(_local, "in_ckpt", False) and not _local.bumped:
            _local.bumped = True
            hit("checkpoint-after")
            orig_bump(self)
            return
        orig_bump(self)

    DB._bump_seq = bump_seq

    orig_start_index = DB._start_index

    def start_index(self, hdr):
        if getattr(_local, "in_ckpt", False):
            hit("checkpoint-restarted")
        return orig_start_index(self, hdr)

    DB._start_index = start_index

    orig_progress = repmod._with_progress

    def with_progress(chunks, db_path):
        for i, chunk in enumerate(orig_progress(chunks, db_path)):
            if i == 1:
                hit("snapshot-mid")
            yield chunk

    repmod._with_progress = with_progress

    orig_read_range = repmod._read_range

    def read_range(*args):
        yield from orig_read_range(*args)
        hit("segment-mid")  # header and data written, frame end not yet

    repmod._read_range = read_range

    FC = filemod.FileReplicaClient
    orig_write_snapshot = FC.write_snapshot

    def write_snapshot(self, generation, index, data):
        hit("snapshot-before")
        return orig_write_snapshot(self, generation, index, data)

    FC.write_snapshot = write_snapshot

    orig_write_segment = FC.write_wal_segment

    def write_wal_segment(self, pos, data):
        info = orig_write_segment(self, pos, data)
        hit("segment-after")
        return info

    FC.write_wal_segment = write_wal_segment

    orig_delete_segments = FC.delete_wal_segments

    def delete_wal_segments(self, positions):
        half = len(positions) // 2
        orig_delete_segments(self, positions[:half])
        if positions:
            hit("retention")
        orig_delete_segments(self, positions[half:])

    FC.delete_wal_segments = delete_wal_segments

    orig_pwrite_all = dbmod._pwrite_all

    def pwrite_all(fd, data, offset):
        orig_pwrite_all(fd, data, offset)  # only _copy_wal appends to the shadow WAL
        hit("shadow-copy")

    dbmod._pwrite_all = pwrite_all

    orig_write_gen = shadow.write_generation

    def write_generation(meta, generation):
        orig_write_gen(meta, generation)
        hit("new-generation")

    shadow.write_generation = write_generation

    from litestream_fast import restore as resmod

    orig_decompress_to = resmod.decompress_to  # restore imported it by name

    def decompress_to(src, key, sink, *a, **kw):
        blocks = [0]

        def counting_sink(view):
            sink(view)
            blocks[0] += 1
            if blocks[0] == 2 and key.endswith(".snapshot.lz4"):
                hit("restore-snapshot")

        return orig_decompress_to(src, key, counting_sink, *a, **kw)

    resmod.decompress_to = decompress_to
    R = resmod._Restorer
    orig_apply = R.apply_index

    def apply_index(self, index, segs, lengths):
        hit("restore-apply")
        return orig_apply(self, index, segs, lengths)

    R.apply_index = apply_index
    orig_finish = R.finish

    def finish(self):
        hit("restore-finish")
        return orig_finish(self)

    R.finish = finish

    def publish(self):
        try:
            os.link(self.tmp, self.output)
        except OSError:
            return orig_publish(self)
        hit("restore-published")
        os.unlink(self.tmp)

    orig_publish = R.publish
    R.publish = publish


if __name__ == "__main__":
    install()
    from litestream_fast.cli import main

    main(sys.argv[1:])
