"""Restore itself under faults: kill -9 of ``litestream-fast restore``, restoring twice, and
the ``-if-db-not-exists`` / ``-if-replica-exists`` semantics (scenario 37).

The replica holds a 16 MiB database (random ballast, so a restore takes a moment) and a
few WAL indexes. The CLI restore is killed at a random instant and at exact points
(``crashpoint.py``: mid snapshot download, before a WAL index is applied, before the
integrity check, between linking the output and removing the temp name); afterwards the output
either does not exist or is the complete restore, and rerunning the restore gives a
database byte-identical to an undisturbed one, with no temporary file left beside it
(the next restore removes what a killed one left). Restoring again over an existing file
is refused; ``-if-db-not-exists`` skips with status 0, ``-if-replica-exists`` on an empty
replica skips with status 0.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

from relsupport import CRASHPOINT, Ledger, make_db, record, restore_ours, scaled

from litestream_fast.clients.file import FileReplicaClient
from litestream_fast.db import DB
from litestream_fast.replica import Replica


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


POINTS = ["restore-snapshot", "restore-apply", "restore-finish", "restore-published"]


def _cli(*args: str, crash: bool = False, **kw) -> subprocess.Popen:
    head = [CRASHPOINT] if crash else ["-m", "litestream_fast"]
    return subprocess.Popen([sys.executable, *head, "restore", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def test_restore_killed_and_rerun(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    make_db(db, ballast_mb=16)
    app = Ledger(db, size=300)
    dbo = DB(db, checkpoint_interval=0)
    r = Replica(dbo, FileReplicaClient(replica))
    for _ in range(4):
        app.commit(200)
        r.sync_once()
        dbo.checkpoint("PASSIVE")
    r.sync_once()
    dbo.close()
    url = f"file://{replica}"
    ref = str(tmp_path / "ref.db")
    assert restore_ours(replica, ref) == app.k
    want = _sha(ref)

    rng = random.Random(37)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = str(outdir / "restored.db")
    kills, finished_before_kill, leftovers = 0, 0, []
    modes = ["random", *POINTS] * scaled(1, 8)
    for mode in modes:
        if mode == "random":
            p = _cli("-o", out, url)
            time.sleep(rng.uniform(0.2, 0.6))
        else:
            p = _cli("-o", out, url, env=dict(os.environ, LF_CRASH_AT=mode), crash=True)
            p.wait(60)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
        if mode != "random":  # the crash point itself killed it, not an error at start
            assert p.returncode == -signal.SIGKILL, f"{mode}: exited {p.returncode}: {err}"
        kills += p.returncode == -signal.SIGKILL
        if os.path.exists(out):  # it finished first: then it is the whole restore
            assert _sha(out) == want  # published only when complete (even if killed after)
            finished_before_kill += 1
            os.unlink(out)
        leftovers.append(len(os.listdir(outdir)))
        # Rerun to completion: identical to the undisturbed restore, nothing left over.
        q = _cli("-o", out, url)
        _, err = q.communicate(timeout=120)
        assert q.returncode == 0, err
        assert _sha(out) == want
        assert sorted(os.listdir(outdir)) == ["restored.db"], os.listdir(outdir)
        os.unlink(out)

    # Twice in a row: the second never overwrites; -if-db-not-exists skips.
    assert _cli("-o", out, url).wait(120) == 0
    q = _cli("-o", out, url)
    _, err = q.communicate(timeout=60)
    assert q.returncode == 1 and "already exists" in err
    q = _cli("-if-db-not-exists", "-o", out, url)
    _, err = q.communicate(timeout=60)
    assert q.returncode == 0 and "skipping" in err
    assert _sha(out) == want
    # -if-replica-exists: an empty replica is not an error.
    empty = tmp_path / "empty"
    empty.mkdir()
    q = _cli("-if-replica-exists", "-o", str(tmp_path / "none.db"), f"file://{empty}")
    _, err = q.communicate(timeout=60)
    assert q.returncode == 0 and not os.path.exists(tmp_path / "none.db"), err
    q = _cli("-o", str(tmp_path / "none.db"), f"file://{empty}")
    assert q.wait(60) == 1
    app.close()
    record("restore_killed", kills=kills, finished_before_kill=finished_before_kill,
           files_left_by_killed_restore=leftovers, restores=2 * len(leftovers) + 2)  # fmt: skip
