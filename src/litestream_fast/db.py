"""One replicated SQLite database: its connections, shadow WAL, generations and checkpoints.

How it stays correct (see ../shared/reference/litestream-spec.md §1 and §4.4):

* SQLite is reached only through apsw (bundling SQLite >= 3.51.3, free of the WAL-reset
  bug). Three connections, each with PERSIST_WAL and ``wal_autocheckpoint=0``: ``_read``
  holds a long-running read transaction so no other process can restart the WAL past
  frames we have not copied; ``_conn`` writes the helper tables and takes the write
  barrier; ``_ckpt`` runs checkpoints. A long-lived read-only descriptor on the database
  file serves snapshots and is never closed while SQLite holds locks (closing any
  descriptor of a file drops the process's POSIX locks on it). ``-shm`` is never touched.
* Every sync reads the live WAL with ``pread`` into a reusable buffer, validates salts and
  cumulative checksums with the compiled core, and appends only whole committed
  transactions to the shadow WAL. We read rather than mmap the live WAL on purpose: a
  TRUNCATE checkpoint by another process shrinks the file, and touching an mmap past the
  new end kills the process with SIGBUS; a read just returns fewer bytes.
* Any discontinuity starts a new generation, and the reason is logged: no generation, WAL
  truncated or overwritten by another process, header mismatch, more than one WAL restart
  between two syncs (checkpoint sequence jumped), page size changed, shadow WAL missing
  or short, database file replaced.
* Checkpoints follow Litestream v0.5: PASSIVE past ``min-checkpoint-page-count`` pages or
  every ``checkpoint-interval``, TRUNCATE only past ``truncate-page-n``, never RESTART.
  Each is sealed by a write barrier (``BEGIN IMMEDIATE``) so every frame is copied before
  SQLite may restart the WAL; a restart continues the generation at the next index.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from array import array
from dataclasses import dataclass

import apsw

from litestream_fast import naming, shadow, wal
from litestream_fast.errors import DatabaseError, SQLiteTooOld
from litestream_fast.pos import Pos

log = logging.getLogger("litestream_fast.db")

MIN_SQLITE_VERSION = (3, 51, 3)
#: At most this many unlocked backfill rounds before a checkpoint's short write barrier.
PHASE1_ROUNDS = 4
#: A WAL this long goes to the write barrier after one unlocked round: a writer faster
#: than our copy and backfill then waits for the checkpoint instead of growing the WAL
#: without bound.
PHASE1_MAX_WAL = 64 << 20
#: How long a checkpoint under the write barrier retries while another checkpointer runs.
BARRIER_RETRY_S = 0.1
COPY_CHUNK = 8 << 20
#: The first read of a copy. After a WAL restart the file keeps its old size and SQLite
#: writes the new WAL over the old one from the start, so everything past our position
#: may be stale frames: reading them whole (up to ``COPY_CHUNK``) every tick cost an idle
#: replicator 7.6 MB of reads per second. Reads start at this size and double while the
#: frames stay valid.
FIRST_COPY_READ = 64 << 10


def _rmtree(path: str) -> None:
    import shutil  # rarely needed; it imports bz2 and lzma (4 ms of every start-up)

    shutil.rmtree(path, ignore_errors=True)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite all of ``data`` at ``offset`` (a regular file may take less in one call)."""
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def check_sqlite_version(version: str | None = None) -> None:
    """check_sqlite_version refuses SQLite older than 3.51.3 (WAL-reset corruption bug)."""
    version = version or apsw.sqlite_lib_version()
    parts = tuple(int(p) for p in version.split(".")[:3])
    if parts < MIN_SQLITE_VERSION:
        raise SQLiteTooOld(
            f"SQLite {version} is too old: versions before 3.51.3 can corrupt a database "
            "when the WAL is reset; upgrade apsw (pip install -U apsw)"
        )


@dataclass(frozen=True)
class SyncResult:
    """What one sync did: whether frames were copied and whether a new generation began."""

    changed: bool
    new_generation_reason: str | None = None


class DB:
    """DB replicates one SQLite database into its shadow WAL and decides checkpoints."""

    def __init__(
        self,
        path: str,
        *,
        meta_path: str | None = None,
        monitor_interval: float = 1.0,
        checkpoint_interval: float = 60.0,
        min_checkpoint_page_count: int = 1000,
        truncate_page_n: int = 121359,
        busy_timeout: float = 1.0,
    ) -> None:
        self.path = os.path.abspath(path)
        self.wal_path = self.path + "-wal"
        self.meta_path = meta_path or shadow.meta_dir_for(self.path)
        self.monitor_interval = monitor_interval
        self.checkpoint_interval = checkpoint_interval
        self.min_checkpoint_page_count = min_checkpoint_page_count
        self.truncate_page_n = truncate_page_n
        self.busy_timeout = busy_timeout

        # _lock guards the shadow state and the SQLite connections; _ckpt_lock is held by
        # checkpoints and snapshots so a snapshot never races a WAL restart.
        self._lock = threading.RLock()
        self._ckpt_lock = threading.RLock()
        self._conn: apsw.Connection | None = None
        self._read: apsw.Connection | None = None
        self._read_spare: apsw.Connection | None = None  # for moving the read pin
        self._ckpt: apsw.Connection | None = None
        self._db_fd: int | None = None
        self._db_ino: tuple[int, int] | None = None
        self._need_pin = False
        # A size-triggered checkpoint that could not reset the WAL: when to retry.
        self._stuck_size = 0
        self._stuck_retry_at = 0.0
        self._stuck_backoff = 1.0
        self.page_size = 0
        self.generation: str | None = None
        self.index = 0
        self._shadow: shadow.ShadowState | None = None
        self._buf: mmap.mmap | None = None
        self._spath: tuple[tuple[str, int] | None, str] = (None, "")
        self._last_checkpoint = time.monotonic()
        self._synced_since_checkpoint = False
        self.last_error: str | None = None
        self.missing_logged = False
        # Replicas report their positions so shadow files they still need are kept.
        self._replica_positions: dict[str, Pos] = {}
        self._cleaned_below: tuple[str, int] | None = None  # clean_shadow's last (gen, index)
        # Counters exposed to status/metrics.
        self.sync_count = 0
        self.synced_at = 0.0  # time.monotonic() when the last sync succeeded
        self.sync_error_count = 0
        self.checkpoint_count: dict[str, int] = {}
        self.checkpoint_error_count: dict[str, int] = {}
        self.checkpoint_seconds: dict[str, float] = {}
        self.sync_seconds = 0.0
        self.generation_reasons: dict[str, int] = {}
        self.total_wal_bytes = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def open(self) -> bool:
        """open connects to the database if it exists; returns False while it does not.

        A missing database is waited for, never created.
        """
        with self._lock:
            if self._conn is not None:
                return True
            if not os.path.exists(self.path):
                if not self.missing_logged:
                    log.info("database does not exist yet, waiting: db=%s", self.path)
                    self.missing_logged = True
                return False
            check_sqlite_version()
            try:
                self._open_connections()
            except apsw.Error as exc:
                self._close_connections()
                raise DatabaseError(f"open {self.path}: {exc}") from exc
            self.missing_logged = False
            os.makedirs(self.meta_path, exist_ok=True)
            shadow.remove_stale_tmp(self.meta_path)
            self._load_generation()
            log.info("database opened: db=%s page_size=%d generation=%s",
                     self.path, self.page_size, self.generation or "-")  # fmt: skip
            return True

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READWRITE)
        conn.set_busy_timeout(int(self.busy_timeout * 1000))
        one = array("i", [1])  # a C int to point at; array, not ctypes (5 ms of start-up)
        conn.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, one.buffer_info()[0])
        return conn

    def _open_connections(self) -> None:
        # The long-lived descriptor comes first and is closed last (POSIX lock rule).
        self._db_fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(self._db_fd)
        self._db_ino = (st.st_dev, st.st_ino)
        self._conn = self._connect()
        mode = self._conn.execute("PRAGMA journal_mode=wal").fetchall()[0][0]
        if str(mode).lower() != "wal":
            raise DatabaseError(f"could not enable WAL mode on {self.path} (journal_mode={mode})")
        self._conn.execute("PRAGMA wal_autocheckpoint=0").fetchall()
        # Our commits are one-frame _litestream_seq bumps. Under the default FULL each one
        # fsynced the whole WAL (all the application's unsynced frames) while holding the
        # write lock, stalling the application's commits for up to 0.3 s. Checkpoints
        # sync the WAL and the database under NORMAL too.
        self._conn.execute("PRAGMA synchronous=NORMAL").fetchall()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)"
        )
        self._conn.execute("CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER)")
        self.page_size = self._conn.execute("PRAGMA page_size").fetchall()[0][0]
        self._read = self._connect()
        self._read_spare = self._connect()
        self._read.execute("PRAGMA wal_autocheckpoint=0").fetchall()
        self._ckpt = self._connect()
        self._ckpt.execute("PRAGMA wal_autocheckpoint=0").fetchall()
        self._begin_read()
        # The first sync copies what is there, then re-pins the read transaction on a fresh
        # frame (see _pin_read).
        self._need_pin = True

    def _close_connections(self) -> None:
        for name in ("_read", "_read_spare", "_ckpt", "_conn"):
            conn = getattr(self, name)
            if conn is not None:
                try:
                    conn.close(force=True)
                except apsw.Error:
                    pass
                setattr(self, name, None)
        if self._db_fd is not None:
            os.close(self._db_fd)
            self._db_fd = None

    def close(self) -> None:
        """close ends the read transaction and closes every connection and descriptor."""
        with self._lock:
            self._close_connections()
            self._shadow = None

    def _move_read_pin(self) -> None:
        """Begin a read transaction on the spare reader, then end the old one: the WAL
        stays pinned throughout, now at its current end."""
        assert self._read is not None and self._read_spare is not None
        # A reader that starts on a fully checkpointed WAL takes read mark 0 and does not
        # pin it; one frame of ours first (the old pin still stops a restart) avoids that.
        self._bump_seq()
        spare = self._read_spare
        spare.execute("BEGIN")
        spare.execute("SELECT COUNT(1) FROM _litestream_seq").fetchall()
        self._end_read()
        self._read, self._read_spare = spare, self._read

    def _begin_read(self) -> None:
        assert self._read is not None
        self._read.execute("BEGIN")
        self._read.execute("SELECT COUNT(1) FROM _litestream_seq").fetchall()

    def _end_read(self) -> None:
        assert self._read is not None
        if not self._read.get_autocommit():
            self._read.execute("ROLLBACK")

    def _pin_read(self) -> bool:
        """Write a frame, then restart the read transaction on it. A reader that starts on a
        fully checkpointed WAL takes read mark 0 and would not stop other processes from
        restarting the WAL; one that starts after an uncheckpointed frame pins it.

        Returns False, to be tried again next sync, while a writer holds the lock."""
        try:
            self._move_read_pin()  # the old read transaction holds until the new one starts
        except apsw.BusyError:
            return False
        self._need_pin = False
        return True

    def _wal_missing_or_short(self) -> bool:
        try:
            return os.path.getsize(self.wal_path) < wal.WAL_HEADER_SIZE
        except FileNotFoundError:
            return True

    def _bump_seq(self) -> None:
        assert self._conn is not None
        self._conn.execute(
            "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) "
            "ON CONFLICT (id) DO UPDATE SET seq = seq + 1"
        )

    # ---------------------------------------------------------------- generations

    def _load_generation(self) -> None:
        """Pick up the generation a previous run left if its shadow WAL still checks out
        (every frame re-verified, a torn tail cut). Whether the live WAL still continues
        it is decided by the first sync's ``_verify``, exactly as while running: the same
        WAL, one restart with nothing overwritten, or else a new generation."""
        gen = shadow.read_generation(self.meta_path)
        self.generation, self._shadow = None, None
        if gen is None:
            return
        indexes = shadow.shadow_indexes(self.meta_path, gen)
        if not indexes:
            return
        state = shadow.recover(shadow.shadow_path(self.meta_path, gen, indexes[-1]))
        if state is None:
            log.info("shadow wal unreadable; a new generation will start: db=%s", self.path)
            return
        if state.header.page_size != self.page_size:
            log.info(
                "page size changed while stopped; a new generation will start: db=%s", self.path
            )
            return
        self.generation, self.index, self._shadow = gen, indexes[-1], state

    def _new_generation(self, reason: str) -> None:
        hdr = self._read_wal_header_parsed()
        if hdr is None:
            raise DatabaseError(f"cannot start a generation for {self.path}: wal header invalid")
        gen = naming.new_generation()
        self._shadow = shadow.create(shadow.shadow_path(self.meta_path, gen, 0), hdr)
        shadow.write_generation(self.meta_path, gen)
        old = self.generation
        self.generation, self.index = gen, 0
        self.generation_reasons[reason] = self.generation_reasons.get(reason, 0) + 1
        log.info("new generation: db=%s generation=%s reason=%r", self.path, gen, reason)
        if old:
            _rmtree(os.path.join(self.meta_path, "generations", old))
        self._remove_other_generations()

    def new_generation(self, reason: str) -> None:
        """new_generation starts a new generation now (a replica lost the current one's
        snapshot); every replica then re-seeds it with a snapshot."""
        with self._ckpt_lock, self._lock:
            if self.open():
                self._new_generation(reason)

    def _remove_other_generations(self) -> None:
        root = os.path.join(self.meta_path, "generations")
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return
        for name in names:
            if name != self.generation:
                _rmtree(os.path.join(root, name))

    def _start_index(self, hdr: wal.WalHeader) -> None:
        """Start the next shadow index after a WAL restart (same generation)."""
        assert self.generation
        self.index += 1
        self._shadow = shadow.create(
            shadow.shadow_path(self.meta_path, self.generation, self.index), hdr
        )
        log.debug("wal restarted: db=%s pos=%s", self.path, self.pos())

    # ------------------------------------------------------------------- reading

    def _read_wal_header(self) -> bytes:
        try:
            with open(self.wal_path, "rb") as f:
                return f.read(wal.WAL_HEADER_SIZE)
        except FileNotFoundError:
            return b""

    def _read_wal_header_parsed(self) -> wal.WalHeader | None:
        return wal.WalHeader.try_parse(self._read_wal_header())

    def pos(self) -> Pos:
        """pos is the end of what the shadow WAL holds: (generation, index, committed size)."""
        with self._lock:
            if not self.generation or self._shadow is None:
                return Pos("", 0, 0)
            return Pos(self.generation, self.index, self._shadow.size)

    def shadow_wal_path(self, index: int) -> str:
        assert self.generation
        key = (self.generation, index)
        if self._spath[0] != key:  # asked for several times per tick, almost always alike
            self._spath = (key, shadow.shadow_path(self.meta_path, self.generation, index))
        return self._spath[1]

    def shadow_committed_size(self, generation: str, index: int) -> int | None:
        """The committed size of a shadow WAL file: the live position for the current
        index, the file size for earlier ones, None when it is gone."""
        with self._lock:
            if generation == self.generation and index == self.index and self._shadow:
                return self._shadow.size
        try:
            return os.path.getsize(shadow.shadow_path(self.meta_path, generation, index))
        except FileNotFoundError:
            return None

    # ---------------------------------------------------------------------- sync

    def sync(self) -> SyncResult:
        """sync copies newly committed WAL frames into the shadow WAL.

        Starts a new generation (and says why) on any discontinuity. Safe to call from
        several threads; replicas call it right before they upload.
        """
        with self._lock:
            if not self.open():
                return SyncResult(False)
            t0 = time.monotonic()
            try:
                result = self._sync_locked()
            except Exception as exc:
                self.sync_error_count += 1
                self.last_error = str(exc)
                raise
            finally:
                self.sync_seconds += time.monotonic() - t0
            self.sync_count += 1
            self.synced_at = time.monotonic()
            if self._conn is not None:  # a deleted database keeps its error until it returns
                self.last_error = None
            if result.changed or result.new_generation_reason:
                self._synced_since_checkpoint = True
            return result

    def _check_replaced(self) -> str | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "database deleted"
        if (st.st_dev, st.st_ino) != self._db_ino:
            return "database replaced"
        return None

    def _sync_locked(self) -> SyncResult:
        replaced = self._check_replaced()
        if replaced == "database deleted":
            # Never upload an empty database or delete history: report and wait.
            self.last_error = f"database file {self.path} was deleted"
            log.error("database deleted while replicating; waiting for it: db=%s", self.path)
            self._close_connections()
            self._shadow = None
            return SyncResult(False)
        if replaced:
            log.warning("database file replaced; reopening: db=%s", self.path)
            self._close_connections()
            self._shadow = None
            shadow.remove_generation_file(self.meta_path)
            if not self.open():
                return SyncResult(False)
        if self._wal_missing_or_short():
            self._bump_seq()
        reason, restart_hdr = self._verify()
        if reason == "wal header invalid":
            return SyncResult(False)  # a header being written; look again next tick
        if reason is not None:
            self._new_generation(replaced or reason)
        elif restart_hdr is not None:
            # The WAL restarted once: finish the old index, continue at the next one.
            reason = self._finish_restarted_index(restart_hdr)
            if reason is not None:
                self._new_generation(reason)
        changed = self._copy_wal()
        if self._need_pin and self._pin_read() and self._verify() != (None, None):
            return self._sync_locked_after_pin(changed, reason)
        return SyncResult(changed or reason is not None, reason)

    def _sync_locked_after_pin(self, changed: bool, reason: str | None) -> SyncResult:
        # Our own seq write restarted a fully checkpointed WAL: go through the usual path.
        again = self._sync_locked()
        return SyncResult(
            changed or again.changed or reason is not None, reason or again.new_generation_reason
        )

    def _finish_restarted_index(self, restart_hdr: wal.WalHeader) -> str | None:
        """The live WAL restarted once since the last sync: copy what the old WAL holds
        past our position into the current index, then start the next index. Returns a
        reason for a new generation instead when that tail may have been lost.

        The new WAL is written from the start of the file over the old one, so the old
        tail survives only while the new WAL is shorter than our position, and writers go
        on appending while we look: a tail seen intact by ``_verify`` can be overwritten
        before it is read (then the copy stops early, and the next index would follow a
        silent gap). So the check is repeated under the write lock, where the new WAL
        cannot grow, and the tail is copied before the lock is let go. Restarts happen
        once per checkpoint and the tail is normally empty, so writers wait microseconds.
        """
        assert self._conn is not None
        if not self._conn.get_autocommit():
            # Inside a checkpoint's write barrier: the lock is ours already.
            self._copy_wal()
            self._start_index(restart_hdr)
            return None
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            # A writer held the lock past the busy timeout: copy without it, then look at
            # the frame where the copy stopped. If the new WAL has reached it, whatever
            # the old WAL held there is gone, and we cannot know whether it committed.
            self._copy_wal()
            assert self._shadow is not None
            if self._read_wal_header() != restart_hdr.raw:
                return "wal restarted more than once between syncs"
            if self._new_wal_reached(restart_hdr, self._shadow.size):
                return "wal overwritten by another process"
            self._start_index(restart_hdr)
            return None
        try:
            reason, hdr = self._verify()
            if reason is not None:
                return reason
            self._copy_wal()
            if hdr is not None:
                self._start_index(hdr)
            return None
        finally:
            if not self._conn.get_autocommit():
                self._conn.execute("ROLLBACK")

    def _new_wal_reached(self, hdr: wal.WalHeader, offset: int) -> bool:
        """True if the frame at ``offset`` of the live WAL belongs to the WAL ``hdr`` starts
        (its salts; SQLite writes a frame's header before its page)."""
        try:
            with open(self.wal_path, "rb") as f:
                head = os.pread(f.fileno(), wal.FRAME_HEADER_SIZE, offset)
        except FileNotFoundError:
            return False
        return len(head) == wal.FRAME_HEADER_SIZE and head[8:16] == hdr.raw[16:24]

    def _verify(self) -> tuple[str | None, wal.WalHeader | None]:
        """_verify compares the shadow WAL with the live WAL (Litestream's verify()).

        Returns (reason for a new generation or None, new header if the WAL restarted).
        """
        if not self.generation or self._shadow is None:
            return "no generation exists", None
        if self.index >= naming.MAX_INDEX:
            return "max index exceeded", None
        spath = self.shadow_wal_path(self.index)
        try:
            shadow_file_size = os.path.getsize(spath)
        except FileNotFoundError:
            return "no shadow wal", None
        if shadow_file_size < wal.WAL_HEADER_SIZE:
            return "short shadow wal", None
        sh = self._shadow
        fs = sh.header.frame_size
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return "wal truncated by another process", None
        try:
            wal_size = os.fstat(fd).st_size
            raw = os.pread(fd, wal.WAL_HEADER_SIZE, 0)
            if wal.frame_align(wal_size, sh.header.page_size) < sh.size:
                return "wal truncated by another process", None
            if sh.size > wal.WAL_HEADER_SIZE:
                live = os.pread(fd, fs, sh.size - fs)
                mine = sh.tail
                if mine is None:
                    with open(spath, "rb") as f:
                        mine = os.pread(f.fileno(), fs, sh.size - fs)
                if live != mine:
                    return "wal overwritten by another process", None
        finally:
            os.close(fd)
        if raw == sh.header.raw:
            return None, None
        hdr = wal.WalHeader.try_parse(raw)
        if hdr is None:
            return "wal header invalid", None
        if sh.size == wal.WAL_HEADER_SIZE:
            return "wal header only, mismatched", None
        if hdr.page_size != sh.header.page_size:
            return "page size changed", None
        if hdr.salt1 != (sh.header.salt1 + 1) & 0xFFFFFFFF:
            # SQLite adds one to salt-1 at every restart (the checkpoint sequence field is
            # per-connection and unreliable): anything else means an unseen WAL went by.
            return "wal restarted more than once between syncs", None
        return None, hdr

    def _copy_wal(self) -> bool:
        """_copy_wal appends the live WAL's new committed frames to the shadow WAL.

        Reads in chunks (bounded memory whatever the transaction size), verifies each
        frame's salts and cumulative checksum, writes verified frames, and finally cuts the
        shadow back to the last commit so only whole transactions remain.
        """
        sh = self._shadow
        assert sh is not None and self.generation
        hdr = sh.header
        fs = hdr.frame_size
        chunk = max(1, COPY_CHUNK // fs) * fs
        step = min(chunk, max(1, FIRST_COPY_READ // fs) * fs)
        if self._buf is None or len(self._buf) != wal.WAL_HEADER_SIZE + chunk:
            # An anonymous mapping, not a bytearray: a bytearray is zero-filled, so all
            # 8 MiB were resident in every replicator from its first sync; a mapping holds
            # only what reads wrote (the first read of a sync is 64 KiB).
            self._buf = mmap.mmap(-1, wal.WAL_HEADER_SIZE + chunk)
        mv = memoryview(self._buf)
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        spath = self.shadow_wal_path(self.index)
        try:
            end = wal.frame_align(os.fstat(fd).st_size, hdr.page_size)
            if end <= sh.size:
                return False
            pos, ck = sh.size, sh.checksum
            commit_end, commit_ck, commit_tail = sh.size, sh.checksum, sh.tail
            out = -1
            try:
                while pos < end:
                    want = min(step, end - pos)
                    n = os.preadv(fd, [mv[wal.WAL_HEADER_SIZE : wal.WAL_HEADER_SIZE + want]], pos)
                    n -= n % fs
                    if n <= 0:
                        break
                    r = wal.scan(mv[: wal.WAL_HEADER_SIZE + n], hdr, wal.WAL_HEADER_SIZE, ck)
                    valid = r.valid_end - wal.WAL_HEADER_SIZE
                    if valid <= 0:
                        break
                    if out < 0:
                        out = os.open(spath, os.O_WRONLY)
                        if os.fstat(out).st_size != sh.size:  # a failed copy's leftovers
                            os.ftruncate(out, sh.size)
                    _pwrite_all(out, mv[wal.WAL_HEADER_SIZE : r.valid_end], pos)
                    if r.commit_end > wal.WAL_HEADER_SIZE:
                        commit_end = pos + r.commit_end - wal.WAL_HEADER_SIZE
                        commit_ck = r.checksum
                        commit_tail = bytes(mv[r.commit_end - fs : r.commit_end])
                    if valid < n:
                        pos += valid
                        break
                    ck = wal.checksum_at(mv, hdr, r.valid_end)
                    pos += n
                    step = min(chunk, step * 2)
                # No fsync: the shadow is a staging copy, uploaded (and made durable by
                # the replica) within the tick, and often deleted before writeback reaches
                # it. A machine crash may cut its tail; recovery re-verifies every frame,
                # and a replica left ahead of it starts a new generation
                # (Replica._diverged). Saves a third of the per-tick fsyncs.
                if out >= 0 and pos != commit_end:
                    os.ftruncate(out, commit_end)  # only whole transactions stay
            finally:
                if out >= 0:
                    os.close(out)
        finally:
            os.close(fd)
        if commit_end == sh.size:
            return False
        self.total_wal_bytes += commit_end - sh.size
        self._shadow = shadow.ShadowState(hdr, commit_end, commit_ck, commit_tail)
        return True

    # ---------------------------------------------------------------- checkpoint

    def wal_size(self) -> int:
        try:
            return os.path.getsize(self.wal_path)
        except FileNotFoundError:
            return 0

    def wal_waiting(self, nbytes: int) -> bool:
        """wal_waiting tells whether the live WAL holds at least ``nbytes`` of frames past
        the shadow WAL's end, or has restarted since: the monitor's cheap look between
        ticks, so a writer at full speed is answered within milliseconds, not after a
        whole monitor interval (in which it wrote a GiB while the replica threads were
        busy uploading and nobody copied).

        Two small reads of the WAL: its header, and the frame header ``nbytes`` past our
        position, whose salts are this WAL's once SQLite has written that far. Not the
        file's size (it keeps its size across a restart) and not ``-shm``.
        """
        sh = self._shadow  # no lock: a replica's copy may hold it for a while; a stale
        if sh is None:  # state only makes the answer late by one look
            return False
        fs = sh.header.frame_size
        frames = max(1, nbytes // fs)
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            raw = os.pread(fd, wal.WAL_HEADER_SIZE, 0)
            head = os.pread(fd, 16, sh.size + (frames - 1) * fs)
        finally:
            os.close(fd)
        if len(raw) == wal.WAL_HEADER_SIZE and raw != sh.header.raw:
            return True
        return len(head) == 16 and head[8:16] == sh.header.raw[16:24]

    def checkpoint_if_needed(self) -> str | None:
        """checkpoint_if_needed applies the v0.5 policy; returns the mode run, if any.

        A size-triggered checkpoint that could not reset the WAL (a long-lived reader pins
        it) is not retried on every tick: each attempt takes the write barrier, and
        TRUNCATE waits for readers while blocking writers. It is retried once the WAL has
        grown by another ``min-checkpoint-page-count`` pages, or after a backoff that
        doubles from 1 s to 1 min.
        """
        with self._lock:
            if self._shadow is None or not self.generation:
                return None
            size = self._shadow.size
        ps = self.page_size
        if size >= wal.calc_wal_size(ps, self.min_checkpoint_page_count):
            if not self._may_retry(size):
                return None
            mode = "PASSIVE"
            reset = self._checkpoint_resets("PASSIVE")
            if not reset and size >= wal.calc_wal_size(ps, self.truncate_page_n):
                # Emergency brake: PASSIVE could not reset a huge WAL; TRUNCATE waits
                # for readers (up to the busy timeout) and blocks writers meanwhile.
                mode = "TRUNCATE"
                reset = self._checkpoint_resets("TRUNCATE")
            self._note_checkpoint(reset, size)
            return mode
        if (
            self.checkpoint_interval > 0
            and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval
            and self._synced_since_checkpoint
            and size > wal.calc_wal_size(ps, 1)
        ):
            self.checkpoint("PASSIVE")
            return "PASSIVE"
        return None

    def _checkpoint_resets(self, mode: str) -> bool:
        """Run a checkpoint; True if it reset the WAL (new index or generation)."""
        before = (self.generation, self.index)
        self.checkpoint(mode)
        return (self.generation, self.index) != before

    def _may_retry(self, size: int) -> bool:
        if not self._stuck_size:
            return True
        grown = (
            size - self._stuck_size
            >= wal.calc_wal_size(self.page_size, self.min_checkpoint_page_count) - 32
        )
        return grown or time.monotonic() >= self._stuck_retry_at

    def _note_checkpoint(self, reset: bool, size: int) -> None:
        if reset:
            self._stuck_size, self._stuck_backoff = 0, 1.0
            return
        self._stuck_size = size
        self._stuck_retry_at = time.monotonic() + self._stuck_backoff
        self._stuck_backoff = min(self._stuck_backoff * 2, 60.0)

    def checkpoint(self, mode: str = "PASSIVE") -> bool:
        """checkpoint copies every committed frame, then checkpoints. Never RESTART.

        PASSIVE runs under a write barrier (``BEGIN IMMEDIATE`` on our own connection):
        after one more copy ("seal") nothing can commit until SQLite has checkpointed, so
        no frame can be backfilled and then lost to a WAL restart before we copied it.
        TRUNCATE cannot hold that barrier (it waits for every reader, the barrier
        included); instead it compares the frame count SQLite reports with what we sealed
        and starts a new generation if a commit slipped in between.

        Returns False when skipped because a snapshot is being read.
        """
        mode = mode.upper()
        if mode not in ("PASSIVE", "TRUNCATE"):
            raise ValueError(f"unsupported checkpoint mode {mode}")
        if not self._ckpt_lock.acquire(blocking=False):
            return False
        t0 = time.monotonic()
        try:
            return self._checkpoint_locked(mode)
        except Exception:
            self.checkpoint_error_count[mode] = self.checkpoint_error_count.get(mode, 0) + 1
            raise
        finally:
            self.checkpoint_seconds[mode] = (
                self.checkpoint_seconds.get(mode, 0.0) + time.monotonic() - t0
            )
            self._ckpt_lock.release()

    def _flush_wal(self) -> None:
        try:
            fd = os.open(self.wal_path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
        finally:
            os.close(fd)

    def _run_checkpoint(self, mode: str, retry: bool) -> tuple[int, int]:
        """SQLite's (busy, frames in the log) for one checkpoint; (1, -1) when busy.

        PASSIVE never waits for another checkpointer: an application's auto-checkpoint
        that started just before our write barrier made the whole barrier a waste (and,
        at full write speed, let the WAL grow by another second of writes). Under the
        barrier that checkpoint ends within milliseconds and no new one can start (it
        runs after a commit), so ``retry`` tries again for up to ``BARRIER_RETRY_S``.
        """
        assert self._ckpt is not None
        deadline = time.monotonic() + BARRIER_RETRY_S
        while True:
            try:
                row = self._ckpt.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0]
                return row[0], row[1]
            except apsw.BusyError:
                if not retry or time.monotonic() >= deadline:
                    log.debug("checkpoint busy: db=%s mode=%s", self.path, mode)
                    return 1, -1
                time.sleep(0.002)

    def _checkpoint_locked(self, mode: str) -> bool:
        t0 = time.monotonic()
        if mode == "PASSIVE":
            # Phase 1, blocking nobody: copy, move our read pin to the WAL's end (the new
            # pin is taken before the old one is dropped, so the WAL can never restart
            # in between), and backfill everything up to it. Writers go on; replicas can
            # read positions (we do not hold _lock while SQLite writes pages). Repeated
            # while writers added a lot meanwhile, so the barrier below stays short.
            # A round only helps while each leaves less behind than the one before: a
            # writer faster than our copy and backfill makes every round longer than the
            # last, and the WAL (and the barrier that ends it) grew to a GiB. So a round
            # that copied more than half as much as the previous one goes to the barrier,
            # as does any after the first once the WAL holds ``PHASE1_MAX_WAL``: the
            # barrier then throttles the writer to our pace instead.
            small = wal.calc_wal_size(self.page_size or 4096, self.min_checkpoint_page_count)
            prev_grew = 0
            for attempt in range(PHASE1_ROUNDS):
                with self._lock:
                    if not self.open():
                        return False
                    before_pos = self.pos()
                    self._sync_locked()
                    grew = (
                        self.pos().offset - before_pos.offset
                        if self.pos().index == before_pos.index
                        else small
                    )
                    assert self._shadow is not None
                    if attempt > 0 and (
                        grew < small or 2 * grew > prev_grew or self._shadow.size >= PHASE1_MAX_WAL
                    ):
                        break
                    prev_grew = grew
                    self._move_read_pin()
                    ckpt = self._ckpt
                assert ckpt is not None
                try:
                    ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except apsw.BusyError:
                    break  # another checkpointer (the application's) is at work
        # Phase 2, short: under the write barrier only what committed during phase 1 is
        # left to copy and to backfill before the WAL may restart.
        with self._lock:
            if not self.open():
                return False
            self._sync_locked()  # catch up without blocking writers
            assert self._conn is not None and self._ckpt is not None
            before = self._read_wal_header()
            busy, nlog = 1, -1  # SQLite's result row: busy flag, frames in the log
            barrier = mode == "PASSIVE"
            if barrier:
                # The checkpoint below fsyncs the WAL first, and an application on
                # synchronous=NORMAL leaves every commit's frames unsynced: flushed under
                # the barrier, that backlog (tens of MB at full speed) stalled its commits.
                # Flushed here, writers go on meanwhile and the barrier's fsync finds
                # only what came in during the last few milliseconds.
                self._flush_wal()
                self._conn.execute("BEGIN IMMEDIATE")  # no commit from now on
                t_barrier = time.monotonic()
            try:
                if barrier:
                    self._sync_locked()  # seal what committed before the barrier
                sealed_gen = self.generation
                self._end_read()
                busy, nlog = self._run_checkpoint(mode, retry=barrier)
            finally:
                if barrier and not self._conn.get_autocommit():
                    self._conn.execute("ROLLBACK")
                    log.debug(
                        "write barrier held: db=%s seconds=%.3f",
                        self.path,
                        time.monotonic() - t_barrier,
                    )
            # A write now restarts the WAL if it was fully checkpointed; our read
            # transaction then pins the new WAL. The reader comes first: our write may
            # wait up to busy_timeout on the application's commits, and a reader held
            # meanwhile (read mark 0 on a fully backfilled WAL, which holds off every
            # other backfill) lets the application restart the WAL at most once, which
            # the next sync copies. With none, a writer at full speed could restart,
            # fill, checkpoint and restart again before we looked: a new generation.
            self._begin_read()
            try:
                self._move_read_pin()
            except apsw.BusyError:
                log.debug("checkpoint: db=%s pin deferred, a writer holds the lock", self.path)
                self._need_pin = True  # the next sync pins; the reader above holds meanwhile
            self.checkpoint_count[mode] = self.checkpoint_count.get(mode, 0) + 1
            self._last_checkpoint = time.monotonic()
            self._synced_since_checkpoint = False
            after = self._read_wal_header()
            if (
                mode == "TRUNCATE"
                and busy == 0
                and after != before
                and self.generation == sealed_gen
            ):
                # A commit could slip in between our last copy and the moment TRUNCATE
                # took the write lock, and SQLite no longer tells how many frames it
                # checkpointed; so, as Litestream v0.5 does, restart from a snapshot.
                self._new_generation("truncate checkpoint")
            # Otherwise the usual verify decides: same WAL, one restart (copy the rest
            # of the old WAL, then the next index), or a new generation.
            self._sync_locked()
            log.debug("checkpoint: db=%s mode=%s busy=%s frames=%s seconds=%.3f pos=%s",
                      self.path, mode, busy, nlog, time.monotonic() - t0, self.pos())  # fmt: skip
            return True

    # ----------------------------------------------------------------- snapshots

    def snapshot_chunks(self, chunk_size: int = 4 << 20):
        """snapshot_chunks is a context manager yielding (pos, iterator of database-file
        chunks). Checkpoints are held off while it is open, so the database file plus the
        whole shadow index ``pos.index`` replayed from offset 0 is a consistent state.

        The chunks are views into one reused buffer: each is valid only until the next is
        asked for, so a consumer writes (or copies) it first."""
        return _Snapshot(self, chunk_size)

    def set_replica_position(self, name: str, pos: Pos) -> None:
        with self._lock:
            self._replica_positions[name] = pos

    def clean_shadow(self) -> None:
        """clean_shadow deletes shadow WAL files every replica has uploaded (keeps one)."""
        with self._lock:
            if not self.generation:
                return
            positions = [
                p for p in self._replica_positions.values() if p.generation == self.generation
            ]
            if len(positions) < len(self._replica_positions) or not positions:
                return
            keep_from = min(p.index for p in positions) - 1
            if self._cleaned_below == (self.generation, keep_from):
                return  # nothing older appeared since: indexes only grow (no listdir per tick)
            for idx in shadow.shadow_indexes(self.meta_path, self.generation):
                if idx < keep_from:
                    try:
                        os.unlink(self.shadow_wal_path(idx))
                    except FileNotFoundError:
                        pass
            self._cleaned_below = (self.generation, keep_from)


class _Snapshot:
    def __init__(self, db: DB, chunk_size: int) -> None:
        self.db = db
        self.chunk_size = chunk_size

    def __enter__(self):
        db = self.db
        db._ckpt_lock.acquire()
        try:
            db.sync()
            pos = db.pos()
            if pos.is_zero or db._db_fd is None:
                raise DatabaseError(f"cannot snapshot {db.path}: not open")
            size = os.fstat(db._db_fd).st_size
        except BaseException:
            db._ckpt_lock.release()
            raise
        fd = db._db_fd

        def chunks():
            # One mapped buffer for the whole file: a fresh 4 MiB bytes per read was a
            # second chunk resident beside the one being compressed (and malloc'd anew).
            # (Not closed here: a consumer may still hold a view; the GC unmaps it.)
            buf = memoryview(mmap.mmap(-1, min(self.chunk_size, size) or 1))
            off = 0
            while off < size:
                n = os.preadv(fd, [buf[: min(self.chunk_size, size - off)]], off)
                if not n:
                    break
                off += n
                yield buf[:n]

        self.size = size
        return pos, chunks()

    def __exit__(self, *exc) -> None:
        self.db._ckpt_lock.release()
