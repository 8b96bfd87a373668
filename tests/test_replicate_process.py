"""``litestream-fast replicate`` as a process: signals, -exec, config errors, kill -9,
taking over from real Litestream, and memory for a large transaction.

Restores are made by the real Litestream 0.3.13 binary, so these tests also prove the
replica is byte-compatible. Writers are separate processes (``ledger_writer.py``): commit
k is row k, so a restore can be checked to be exactly a committed prefix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from ledger_writer import check_prefix
from support import (
    connect,
    content_hash,
    integrity_ok,
    litestream_bin,
    ls_restore,
    row_count,
    wait_for,
)

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "ledger_writer.py")


def lf(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "litestream_fast", *args], **kw)


def lf_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "litestream_fast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(tmp_path, db: str, replica: str, **db_keys) -> str:
    lines = ["dbs:", f"  - path: {db}"]
    lines += [f"    {k.replace('_', '-')}: {v}" for k, v in db_keys.items()]
    lines += ["    replicas:", f"      - path: {replica}", "        sync-interval: 100ms"]
    cfg = tmp_path / "litestream.yml"
    cfg.write_text("\n".join(lines) + "\n")
    return str(cfg)


def has_snapshot(replica: str) -> bool:
    gens = os.path.join(replica, "generations")
    if not os.path.isdir(gens):
        return False
    return any(os.listdir(os.path.join(gens, g, "snapshots")) for g in os.listdir(gens)
               if os.path.isdir(os.path.join(gens, g, "snapshots")))  # fmt: skip


def test_sigterm_makes_final_sync_and_exits_zero(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    app = connect(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    p = lf("replicate", db, f"file://{replica}", stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: has_snapshot(replica))
        for _ in range(300):
            app.execute("INSERT INTO t (x) VALUES (randomblob(100))")
        p.send_signal(signal.SIGTERM)  # immediately: only the final sync can ship these
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    out = str(tmp_path / "out.db")
    ls_restore(replica, out)
    assert integrity_ok(out) and content_hash(out) == content_hash(db)


def test_exec_runs_child_and_returns_its_status(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    script = tmp_path / "child.py"
    script.write_text(
        "import apsw, sys\n"
        f"c = apsw.Connection({db!r}); c.set_busy_timeout(5000)\n"
        "c.execute('CREATE TABLE IF NOT EXISTS t (x)')\n"
        "for i in range(100): c.execute('INSERT INTO t VALUES (?)', (i,))\n"
        "sys.exit(3)\n"
    )
    connect(db).close()
    r = lf_run("replicate", "-exec", f"{sys.executable} {script}", db, f"file://{replica}")
    assert r.returncode == 3, r.stderr
    out = str(tmp_path / "out.db")
    ls_restore(replica, out)
    assert row_count(out) == 100


@pytest.mark.parametrize(
    "config, message",
    [
        ("dbs:\n  - path: /x.db\n    replicas:\n      - url: file:///r\n        sync-interval: soon\n",
         'sync-interval: invalid duration "soon"'),
        ("dbs:\n  - replicas: []\n", "dbs[0].path: required"),
        ("dbs:\n  - path: /x.db\n    replicas:\n      - type: gcs\n        path: b\n",
         "unsupported replica type 'gcs'"),
        ("dbs: [\n", "invalid YAML"),
        ("dbs:\n  - path: /x.db\n    min-checkpoint-page-count: -3\n    replicas:\n      - path: /r\n",
         "min-checkpoint-page-count: must be at least 1"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_error(tmp_path, config, message):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(config)
    r = lf_run("replicate", "-config", str(cfg))
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_key_warns_and_env_is_expanded(tmp_path, monkeypatch):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"dbs:\n  - path: $MYDB\n    replicass: []\n    replicas:\n      - path: {replica}\n"
    )
    connect(db).close()
    env = dict(os.environ, MYDB=db)
    p = subprocess.Popen([sys.executable, "-m", "litestream_fast", "replicate", "-config", str(cfg)],
                         stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert wait_for(lambda: has_snapshot(replica))
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert "unknown config key dbs[0].replicass" in err


def test_missing_config_and_usage_errors(tmp_path):
    r = lf_run("replicate", "-config", str(tmp_path / "nope.yml"))
    assert r.returncode == 1 and "config file not found" in r.stderr
    r = lf_run("replicate", str(tmp_path / "a.db"))
    assert r.returncode == 1 and "must specify at least one replica URL" in r.stderr


def test_waits_for_missing_database(tmp_path):
    db, replica = str(tmp_path / "later.db"), str(tmp_path / "replica")
    cfg = write_config(tmp_path, db, replica, monitor_interval="100ms")
    p = lf("replicate", "-config", cfg, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        assert p.poll() is None and not os.path.exists(db)
        app = connect(db)
        app.execute("CREATE TABLE t (x)")
        app.execute("INSERT INTO t VALUES (1)")
        assert wait_for(lambda: has_snapshot(replica))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    out = str(tmp_path / "out.db")
    ls_restore(replica, out)
    assert row_count(out) == 1


def test_kill9_at_random_moments_restores_committed_prefix(tmp_path):
    """20 kill -9s of the replicator while a writer commits; each restore is a committed
    prefix that holds every commit made well before the kill."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    cfg = write_config(tmp_path, db, replica, monitor_interval="100ms",
                       checkpoint_interval="500ms", min_checkpoint_page_count=30)  # fmt: skip
    writer = subprocess.Popen([sys.executable, WRITER, db, "--rate", "300", "--size", "200",
                               "--checkpoint-every", "500"], stdout=subprocess.PIPE)  # fmt: skip
    rng = random.Random(1234)
    kills = 0
    try:
        assert wait_for(lambda: os.path.exists(db) and os.path.getsize(db) > 0)
        for i in range(20):
            p = lf("replicate", "-config", cfg, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, 1.2))
            # Everything committed by now must survive the kill: give it time to ship.
            floor = _max_id(db)
            time.sleep(0.8)
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            out = str(tmp_path / f"out{i}.db")
            ls_restore(replica, out)
            try:
                k = check_prefix(out, 200)
            except Exception as exc:  # noqa: BLE001 - re-raised with a second opinion
                # A rare corrupt restore here is not understood yet (RELIABILITY.md): say
                # whether the same replica restores correctly a second time. The files
                # stay in tmp_path for a look.
                again = str(tmp_path / f"out{i}-again.db")
                ls_restore(replica, again)
                try:
                    second = f"{check_prefix(again, 200)} commits, integrity ok"
                except Exception as exc2:  # noqa: BLE001
                    second = repr(exc2)
                raise AssertionError(
                    f"kill {i}: restore failed its check ({exc!r}); a second restore of the "
                    f"same replica: {second}"
                ) from exc
            assert k >= floor, (
                f"kill {i}: restore has {k} commits, {floor} were committed 0.8 s before"
            )
            os.unlink(out)
    finally:
        writer.send_signal(signal.SIGTERM)
        last = int(writer.communicate(timeout=30)[0])
    assert kills == 20
    # A last clean run ships everything.
    p = lf("replicate", "-config", cfg, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    out = str(tmp_path / "final.db")
    ls_restore(replica, out)
    assert check_prefix(out, 200) == last


def _max_id(db: str) -> int:
    import apsw

    c = apsw.Connection(db)
    c.set_busy_timeout(5000)
    try:
        return c.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchall()[0][0]
    except apsw.SQLError:
        return 0
    finally:
        c.close()


def test_take_over_from_real_litestream_and_back(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    app = connect(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")

    def insert(n):
        for _ in range(n):
            app.execute("INSERT INTO t (x) VALUES (randomblob(300))")

    def run(cmd, n):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        insert(n)
        time.sleep(2.5)
        p.send_signal(signal.SIGTERM)
        p.wait(30)

    insert(50)
    run([litestream_bin(), "replicate", db, f"file://{replica}"], 50)
    gens_before = os.listdir(os.path.join(replica, "generations"))
    run([sys.executable, "-m", "litestream_fast", "replicate", db, f"file://{replica}"], 50)
    # We continued Litestream's generation rather than starting over.
    assert os.listdir(os.path.join(replica, "generations")) == gens_before
    run([litestream_bin(), "replicate", db, f"file://{replica}"], 50)
    out = str(tmp_path / "out.db")
    ls_restore(replica, out)
    assert integrity_ok(out) and row_count(out) == 200
    assert content_hash(out) == content_hash(db)
    app.close()


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def test_large_transaction_bounded_memory(tmp_path):
    """One ~100 MiB transaction replicates; the replicator's peak RSS stays far below it."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    app = connect(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    cfg = write_config(tmp_path, db, replica, monitor_interval="100ms")
    p = lf("replicate", "-config", cfg, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: has_snapshot(replica))
        base = _peak_rss_kib(p.pid)
        with app:
            for _ in range(100):
                app.execute("INSERT INTO t (x) VALUES (randomblob(1048576))")
        wal_size = os.path.getsize(db + "-wal")
        assert wal_size > 100 << 20
        time.sleep(3)
        peak = _peak_rss_kib(p.pid)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
    print(
        f"replicator peak RSS: before {base / 1024:.1f} MiB, after 100 MiB txn {peak / 1024:.1f} MiB"
    )
    # Chunked copy (8 MiB) and streamed LZ4 (4 MiB blocks): growth is a few chunks.
    assert peak - base < 48 * 1024
    out = str(tmp_path / "out.db")
    ls_restore(replica, out)
    assert integrity_ok(out) and row_count(out) == 100


def test_json_logging_and_quiet_by_default(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    app = connect(db)
    app.execute("CREATE TABLE t (x)")
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"logging:\n  type: json\ndbs:\n  - path: {db}\n    replicas:\n"
        f"      - path: {replica}\n        sync-interval: 100ms\n"
    )
    p = lf("replicate", "-config", str(cfg), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: has_snapshot(replica))
        for i in range(20):  # 20 syncs' worth of changes
            app.execute("INSERT INTO t VALUES (?)", (i,))
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    lines = [json.loads(line) for line in err.strip().splitlines()]
    assert all({"time", "level", "msg"} <= set(d) for d in lines)
    assert any("new generation" in d["msg"] for d in lines)
    assert len(lines) < 12  # no line per sync at info level
    app.close()


def test_second_signal_exits_at_once(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    connect(db).close()
    # A child that ignores SIGTERM keeps the first shutdown waiting. It says when it
    # ignores it: a SIGTERM forwarded while it still starts up would kill it.
    ready = tmp_path / "child-ready"
    child = (
        f"{sys.executable} -c 'import pathlib, signal, time; "
        f"signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f'pathlib.Path("{ready}").touch(); time.sleep(8)\''
    )
    p = lf("replicate", "-exec", child, db, f"file://{replica}", stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: has_snapshot(replica) and ready.exists())
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # still waiting for the child
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) != 0
        assert time.monotonic() - t0 < 5
    finally:
        if p.poll() is None:
            p.kill()


BUSY_WRITER = r"""
import sys, time
import apsw
c = apsw.Connection(sys.argv[1])
c.set_busy_timeout(5000)
c.execute("PRAGMA wal_autocheckpoint=1000").fetchall()  # SQLite's default
c.execute("PRAGMA synchronous=NORMAL").fetchall()  # no fsync per commit: as fast as it goes
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline:
    c.execute("INSERT INTO t (x) VALUES (randomblob(1000))")
    n += 1
print(n)
"""


def test_busy_writer_keeps_one_generation(tmp_path):
    """An unthrottled writer in another process, with SQLite's default autocheckpoint,
    next to `replicate`: the read pin must hold the WAL so that only our checkpoints
    restart it. One generation from start to end (a WAL restarted behind our back shows
    as 'wal overwritten by another process' and a new generation, with a full snapshot,
    each time), and the replica restores to the source exactly."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    app = connect(db)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB)")
    app.close()
    cfg = write_config(tmp_path, db, replica, monitor_interval="1s",
                       min_checkpoint_page_count=2000)  # fmt: skip
    log_path = tmp_path / "replicate.log"  # a file, not a pipe nobody drains meanwhile
    with open(log_path, "w") as log_file:
        p = lf("replicate", "-config", cfg, "-log-level", "info", stderr=log_file)
        try:
            assert wait_for(lambda: has_snapshot(replica))
            w = subprocess.run([sys.executable, "-c", BUSY_WRITER, db, "4"],
                               capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
            assert int(w.stdout) > 5000
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, log_path.read_text()[-2000:]
        finally:
            if p.poll() is None:
                p.kill()
    err = log_path.read_text()
    reasons = [line for line in err.splitlines() if "new generation" in line]
    assert len(reasons) == 1 and "no generation exists" in reasons[0], reasons
    assert len(os.listdir(os.path.join(replica, "generations"))) == 1
    out = str(tmp_path / "out.db")
    ls_restore(replica, out)
    assert integrity_ok(out) and content_hash(out) == content_hash(db)
