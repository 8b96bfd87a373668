"""Shared helpers for the reliability suite (``tests/reliability``).

The oracle is the ledger of ``tests/ledger_writer.py``: commit k inserts row id=k with
``payload(k, size)``, so ``check_prefix(db, size)`` returns k when a database holds exactly
commits 1..k and raises otherwise (integrity_check included). A restore is PREFIX-OK(W)
when ``check_prefix`` passes with k >= W, W being what was known to be replicated; a
point-in-time restore is EXACT when k is exactly the ledger's commit at that time.

Scaling: the suite runs in CI in well under four minutes per backend. With
``LITESTREAM_FAST_SOAK=1`` every test scales its iterations and durations up
(``scaled(ci, soak)``). Figures (kills survived, faults injected, restores verified) are
collected with ``record()`` and printed in the terminal summary; with
``LITESTREAM_FAST_RELIABILITY_FIGURES=PATH`` they are also appended to PATH as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import apsw
from ledger_writer import check_prefix, payload  # noqa: F401  (re-exported)
from support import connect, litestream_bin, wait_for  # noqa: F401 (re-exported)

from litestream_fast import compression, naming
from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.pos import Pos
from litestream_fast.restore import plan_restore, restore

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
LEDGER_WRITER = os.path.join(TESTS, "ledger_writer.py")
APP = os.path.join(HERE, "rel_app.py")
CRASHPOINT = os.path.join(HERE, "crashpoint.py")

SOAK = os.environ.get("LITESTREAM_FAST_SOAK", "") not in ("", "0")
PY_BACKEND = os.environ.get("LITESTREAM_FAST_NO_EXTENSIONS", "") not in ("", "0")


def scaled(ci, soak):
    """scaled picks the CI value, or the soak value under ``LITESTREAM_FAST_SOAK=1``."""
    return soak if SOAK else ci


# --------------------------------------------------------------------------- figures

FIGURES: list[tuple[str, dict]] = []
TOTALS: Counter = Counter()


def record(test: str, **figures) -> None:
    """record keeps one test's figures for the summary (and prints them under ``-s``)."""
    FIGURES.append((test, figures))
    for key in ("kills", "faults", "restores", "damaged_objects"):
        if isinstance(figures.get(key), int):
            TOTALS[key] += figures[key]
    line = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\nRELIABILITY {test}: {line}")
    out = os.environ.get("LITESTREAM_FAST_RELIABILITY_FIGURES")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"test": test, "backend": backend(), **figures}) + "\n")


def backend() -> str:
    from litestream_fast._backend import BACKEND

    return BACKEND


# --------------------------------------------------------------------------- waiting


def caught_up(m, timeout: float = 20.0) -> bool:
    """caught_up syncs a ManagedDB once (retrying while that fails, e.g. disk full) and
    waits until its first replica holds that position: the same generation at or past
    it, or a newer generation (whose snapshot, taken later, holds it too)."""
    deadline = time.monotonic() + timeout

    def synced():
        try:
            m.db.sync()
        except Exception:  # noqa: BLE001 - still failing: try again
            return False
        return not m.db.pos().is_zero

    if not wait_for(synced, timeout, 0.1):
        return False
    t = m.db.pos()
    r = m.replicas[0]

    def reached():
        p = r.pos
        if p.generation == t.generation:
            return p >= t
        return bool(p.generation) and p.generation == m.db.generation

    return wait_for(reached, max(0.1, deadline - time.monotonic()), 0.05)


# --------------------------------------------------------------------------- databases


def make_db(path: str, *, ballast_mb: int = 0, page_size: int | None = None,
            auto_vacuum: str | None = None) -> None:  # fmt: skip
    """make_db creates a WAL database with an empty ledger table, plus ``ballast_mb`` MiB of
    random (incompressible) rows written in rollback-journal mode, so the database file is
    big (snapshots take a moment) while the WAL stays small."""
    conn = apsw.Connection(path)
    try:
        conn.set_busy_timeout(5000)
        if page_size:
            conn.execute(f"PRAGMA page_size={page_size}")
        if auto_vacuum:
            conn.execute(f"PRAGMA auto_vacuum={auto_vacuum}")
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, x BLOB)")
        if ballast_mb:
            conn.execute("CREATE TABLE ballast (id INTEGER PRIMARY KEY, x BLOB)")
            with conn:
                for _ in range(ballast_mb):
                    conn.execute("INSERT INTO ballast (x) VALUES (randomblob(1048000))")
        assert conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0] == "wal"
    finally:
        conn.close()


class Ledger:
    """Ledger is an in-process application writer: ``commit()`` makes commit k = row k."""

    def __init__(self, path: str, size: int = 100, autocheckpoint: int | None = 0) -> None:
        self.path = path
        self.size = size
        self.conn = connect(path, autocheckpoint=autocheckpoint)
        self.conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, x BLOB)")
        self.k = self.conn.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchall()[0][0]

    def commit(self, n: int = 1) -> int:
        for _ in range(n):
            self.k += 1
            self.conn.execute(
                "INSERT INTO ledger (id, x) VALUES (?, ?)", (self.k, payload(self.k, self.size))
            )
        return self.k

    def checkpoint(self, mode: str) -> tuple[int, int, int]:
        return tuple(self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0])

    def close(self) -> None:
        self.conn.close()


def max_id(db: str) -> int:
    c = apsw.Connection(db)
    c.set_busy_timeout(5000)
    try:
        return c.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchall()[0][0]
    except apsw.SQLError:
        return 0
    finally:
        c.close()


def page_info(db: str) -> tuple[int, int]:
    """(page_size, page_count) of a database, read through SQLite."""
    c = apsw.Connection(db, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        ps = c.execute("PRAGMA page_size").fetchall()[0][0]
        pc = c.execute("PRAGMA page_count").fetchall()[0][0]
        return ps, pc
    finally:
        c.close()


# --------------------------------------------------------------------------- restores


def restore_ours(replica_dir: str, out: str, **plan_kw) -> int:
    """Restore with the library (plan_restore + restore, full integrity check); returns
    the ledger length k, raising unless the result is a ledger prefix."""
    return restore_ours_pos(replica_dir, out, **plan_kw)[0]


def restore_ours_pos(replica_dir: str, out: str, **plan_kw) -> tuple[int, Pos]:
    """restore_ours, also returning the restored position (generation/index:offset)."""
    plan = plan_restore({"file": FileReplicaClient(replica_dir)}, **plan_kw)
    result = restore(plan, out, integrity_check="full")
    return check_prefix(out), result.pos


def parse_pos(s: str | None) -> Pos | None:
    """parse_pos reads ``<gen>/<index:08x>:<offset>`` (as status and logs print it)."""
    if not s:
        return None
    gen, rest = s.split("/")
    idx, off = rest.split(":")
    return Pos(gen, int(idx, 16), int(off))


def restore_cli(replica_dir: str, out: str, *flags: str) -> int:
    """Restore with ``python -m litestream_fast restore``; returns k."""
    r = subprocess.run(
        [sys.executable, "-m", "litestream_fast", "restore", *flags, "-o", out,
         f"file://{replica_dir}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return check_prefix(out)


def restore_litestream(replica_dir: str, out: str, *flags: str) -> int:
    """Restore with the real Litestream 0.3.13 binary; returns k."""
    r = subprocess.run(
        [litestream_bin(), "restore", *flags, "-o", out, f"file://{replica_dir}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return check_prefix(out)


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


# --------------------------------------------------------------------------- replicas


def replica_objects(root: str) -> dict[str, tuple[int, int]]:
    """Every stored object (relative path -> (size, mtime_ns)), temp files excluded."""
    out = {}
    for d, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".tmp"):
                continue
            p = os.path.join(d, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(p)
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def tmp_objects(root: str) -> list[str]:
    out = []
    for d, _dirs, files in os.walk(root):
        out += [os.path.join(d, n) for n in files if n.endswith(".tmp")]
    return out


def generations_with_snapshot(root: str) -> list[str]:
    c = FileReplicaClient(root)
    return [g for g in c.generations() if c.snapshots(g)]


def remote_end(root: str, generation: str, index: int) -> int:
    """Where the stored segments of (generation, index) end (0 if none)."""
    c = FileReplicaClient(root)
    segs = [s for s in c.wal_segments(generation) if s.index == index]
    if not segs:
        return 0
    last = segs[-1]
    with c.wal_segment_reader(last.pos) as r:
        data = b"".join(compression.decompress_stream(r, "x"))
    return last.offset + len(data)


def meta_dir(db: str) -> str:
    d, base = os.path.split(os.path.abspath(db))
    return os.path.join(d, f".{base}-litestream")


def current_generation(meta: str) -> str | None:
    try:
        with open(os.path.join(meta, "generation")) as f:
            g = f.read().strip()
    except FileNotFoundError:
        return None
    return g if naming.is_generation(g) else None


def dir_size(root: str) -> int:
    total = 0
    for d, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(d, name))
    return total


def flip_byte(path: str, pos: int) -> None:
    """flip_byte damages one byte in place (bit rot: the object's time is kept)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def truncate_half(path: str) -> None:
    st = os.stat(path)
    os.truncate(path, st.st_size // 2)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# --------------------------------------------------------------------------- processes


def write_config(path: str, db: str, replica: str, db_keys: dict | None = None,
                 replica_keys: dict | None = None) -> str:  # fmt: skip
    """write_config writes a one-database, one-file-replica ``litestream.yml``."""
    lines = ["dbs:", f"  - path: {db}"]
    lines += [f"    {k.replace('_', '-')}: {v}" for k, v in (db_keys or {}).items()]
    lines += ["    replicas:", f"      - path: {replica}"]
    rk = {"sync_interval": "100ms", **(replica_keys or {})}
    lines += [f"        {k.replace('_', '-')}: {v}" for k, v in rk.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_replicator(cfg: str, *, crash: str | None = None, crash_after: int = 1,
                     log: str | None = None, env: dict | None = None) -> subprocess.Popen:  # fmt: skip
    """start_replicator runs ``python -m litestream_fast replicate -config CFG``; with
    ``crash`` it runs the same CLI through ``crashpoint.py``, which kill -9s the process
    itself at the named point (see that module)."""
    e = dict(os.environ, **(env or {}))
    level = ["-log-level", "debug"] if log else []
    if crash:
        cmd = [sys.executable, CRASHPOINT, "replicate", "-config", cfg, *level]
        e["LF_CRASH_AT"] = crash
        e["LF_CRASH_AFTER"] = str(crash_after)
    else:
        cmd = [sys.executable, "-m", "litestream_fast", "replicate", "-config", cfg, *level]
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, stderr=stderr, stdout=subprocess.DEVNULL, env=e)
    finally:
        if log:
            stderr.close()


def kill9(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait(30)


def stop(p: subprocess.Popen, timeout: float = 60) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise


def start_app(db: str, *args: str) -> subprocess.Popen:
    """start_app runs ``rel_app.py`` (writer/reader processes, JSON summary on stdout)."""
    return subprocess.Popen([sys.executable, APP, db, *args], stdout=subprocess.PIPE, text=True)


def finish_app(p: subprocess.Popen, timeout: float = 60) -> dict:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"app exited {p.returncode}: {out}"
    return json.loads(out.strip().splitlines()[-1])


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    """A list of child processes that are all killed on exit (test failure included)."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(Exception):
                    p.wait(10)
