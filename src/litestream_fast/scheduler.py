"""Run databases and replicas on their intervals: the ``replicate`` command's engine.

Periodic work is a plain method first (``DB.sync``, ``DB.checkpoint_if_needed``,
``Replica.sync_once``) and scheduled here second: one monitor thread per database (sync,
checkpoint, shadow clean-up every ``monitor-interval``) and one upload thread per replica.
A slow or failing replica only delays itself: it does not hold the database's lock while
uploading, and the shadow WAL keeps what it still needs.
"""

from __future__ import annotations

import logging
import threading
import time

from litestream_fast import status, wal
from litestream_fast.config import DBConfig, build_client
from litestream_fast.db import DB
from litestream_fast.logs import RateLimitedLogger
from litestream_fast.replica import Replica

log = logging.getLogger("litestream_fast.scheduler")

#: Seconds to the next monitor tick after one that copied at least a checkpoint's worth
#: of WAL (``min-checkpoint-page-count`` pages). A fast writer fills that many pages in
#: milliseconds; waiting the whole monitor interval would let the WAL grow by a second of
#: writes and make each checkpoint (and its write barrier) as long.
BUSY_TICK = 0.1
#: Seconds between the monitor's looks at the live WAL while it waits (``wait_tick``).
WAKE_POLL = 0.05


class ManagedDB:
    """ManagedDB is a DB plus its replicas and its monitor thread."""

    def __init__(self, db: DB, replicas: list[Replica]) -> None:
        self.db = db
        self.replicas = replicas
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = RateLimitedLogger(log, interval=30.0)
        self._published_at = 0.0
        self._looked_at = 0.0  # time.monotonic() after the previous tick's (skipped) sync
        self.monitor_ticks = 0
        self.monitor_syncs = 0  # ticks that synced (the others found a replica had)

    @classmethod
    def from_config(cls, cfg: DBConfig) -> ManagedDB:
        db = DB(
            cfg.path,
            meta_path=cfg.meta_path,
            monitor_interval=cfg.monitor_interval,
            checkpoint_interval=cfg.checkpoint_interval,
            min_checkpoint_page_count=cfg.min_checkpoint_page_count,
            truncate_page_n=cfg.truncate_page_n,
            busy_timeout=cfg.busy_timeout,
        )
        replicas = [
            Replica(
                db,
                build_client(rc),
                name=rc.display_name,
                sync_interval=rc.sync_interval,
                retention=rc.retention,
                retention_check_interval=rc.retention_check_interval,
                snapshot_interval=rc.snapshot_interval,
                validation_interval=rc.validation_interval,
            )
            for rc in cfg.replicas
        ]
        return cls(db, replicas)

    def monitor_once(self, force_sync: bool = False) -> None:
        """monitor_once syncs the shadow WAL, checkpoints if the policy says so, and drops
        shadow files every replica has uploaded.

        The sync is skipped when one succeeded since the previous tick's: each replica
        syncs right before it uploads, so with replicas on the monitor's interval (the
        usual setup) a second sync per tick copied and fsynced the frames that had come
        in since, for nothing. A replica in backoff or on a longer interval leaves ticks
        without a sync, and then the monitor syncs, as before. So does a tick the wait
        cut short for WAL nobody has copied yet (``force_sync``).
        """
        self.monitor_ticks += 1
        if force_sync or self.db.synced_at <= self._looked_at:
            self.monitor_syncs += 1
            self.db.sync()
        self._looked_at = time.monotonic()
        if self.db.is_open:
            self.db.checkpoint_if_needed()
            self.db.clean_shadow()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"db:{self.db.path}", daemon=True)
        self._thread.start()
        for r in self.replicas:
            r.start()

    def publish_status(self) -> None:
        """publish_status writes the state ``litestream-fast status`` reads (~1/s)."""
        now = time.monotonic()
        if now - self._published_at < 1.0:
            return
        self._published_at = now
        try:
            status.publish(self.db.meta_path, status.db_state(self))
        except OSError as exc:
            self._errors.error("publish status failed: db=%s error=%s", self.db.path, exc)

    def _busy_bytes(self) -> int:
        return wal.calc_wal_size(self.db.page_size or 4096, self.db.min_checkpoint_page_count)

    def next_wait(self, copied: int) -> float:
        """next_wait is the pause before the next tick, given the WAL bytes copied since
        the last tick began: the monitor interval, or ``BUSY_TICK`` while the writer
        outpaces it."""
        if copied >= self._busy_bytes():
            return min(self.db.monitor_interval, BUSY_TICK)
        return self.db.monitor_interval

    def wait_tick(self, since: int) -> bool:
        """wait_tick waits for the next tick: ``next_wait`` of the WAL copied since
        ``total_wal_bytes`` was ``since``, cut short once a checkpoint's worth of WAL has
        come in. Returns True when cut short because that WAL is still waiting in the
        live WAL, uncopied, so the tick syncs it itself.

        Two looks every ``WAKE_POLL``. The copies counted are anyone's: each replica
        syncs right before it uploads, so under a fast writer the replica threads copy
        nearly every frame and the monitor's own sync finds little. And the live WAL
        itself (``DB.wal_waiting``): while the replica threads compress and upload a big
        segment nobody copies, and judging by copies alone the monitor slept the whole
        interval while the application wrote a GiB of WAL.
        """
        wait = self.next_wait(self.db.total_wal_bytes - since)
        if wait < self.db.monitor_interval:
            self._stop.wait(wait)
            return False
        busy = self._busy_bytes()
        deadline = time.monotonic() + wait
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self.db.total_wal_bytes - since >= busy:
                return False
            if self._stop.wait(min(left, WAKE_POLL)):
                return False
            if self.db.is_open and self.db.wal_waiting(busy):
                return True
        return False

    def _run(self) -> None:
        force_sync = False
        while not self._stop.is_set():
            before = self.db.total_wal_bytes
            try:
                self.monitor_once(force_sync)
            except Exception as exc:  # noqa: BLE001 - logged, retried next tick
                self._errors.error("sync failed: db=%s error=%s", self.db.path, exc)
            self.publish_status()
            force_sync = self.wait_tick(before)

    def stop(self, final_sync: bool = True, timeout: float = 30.0) -> None:
        """stop halts the monitor, then each replica (with a final upload), then the DB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if final_sync:
            try:
                self.db.sync()
            except Exception as exc:  # noqa: BLE001
                log.error("final sync failed: db=%s error=%s", self.db.path, exc)
        for r in self.replicas:
            r.stop(final_sync=final_sync, timeout=timeout)
        self.db.close()


class Replicator:
    """Replicator runs every configured database with its replicas."""

    def __init__(self, dbs: list[ManagedDB], heartbeat_url: str | None = None,
                 heartbeat_interval: float = 300.0) -> None:  # fmt: skip
        self.dbs = dbs
        self.heartbeat_url = heartbeat_url
        self.heartbeat_interval = heartbeat_interval
        self.heartbeats_sent = 0
        self._stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._errors = RateLimitedLogger(log, interval=60.0)

    def healthy_and_synced(self) -> bool:
        """True when every replica synced without error and holds what its DB holds."""
        return all(
            r.last_error is None and r.last_sync_at is not None and r.lag() == 0
            for m in self.dbs
            for r in m.replicas
        )

    def heartbeat_once(self) -> bool:
        """heartbeat_once GETs ``heartbeat-url`` if every replica is in sync."""
        if not self.heartbeat_url or not self.healthy_and_synced():
            return False
        import urllib.request  # 45 ms of imports (http, email, ssl) only this needs

        try:
            with urllib.request.urlopen(self.heartbeat_url, timeout=10) as resp:
                resp.read()
        except OSError as exc:
            self._errors.error("heartbeat failed: url=%s error=%s", self.heartbeat_url, exc)
            return False
        self.heartbeats_sent += 1
        return True

    def _heartbeat_loop(self) -> None:
        last = 0.0
        while not self._stop.wait(1.0):
            if time.monotonic() - last >= self.heartbeat_interval and self.heartbeat_once():
                last = time.monotonic()

    @classmethod
    def from_config(cls, dbs: list[DBConfig]) -> Replicator:
        return cls([ManagedDB.from_config(d) for d in dbs])

    def start(self) -> None:
        for m in self.dbs:
            try:
                m.db.open()
            except Exception as exc:  # noqa: BLE001 - keep going; the monitor retries
                log.error("open failed: db=%s error=%s", m.db.path, exc)
            m.start()
        if self.heartbeat_url:
            self._hb_thread = threading.Thread(
                target=self._heartbeat_loop, name="heartbeat", daemon=True
            )
            self._hb_thread.start()
        log.info("replicating %d database(s)", len(self.dbs))

    def stop(self, final_sync: bool = True, timeout: float = 30.0) -> None:
        self._stop.set()
        for m in self.dbs:
            m.stop(final_sync=final_sync, timeout=timeout)
