"""A writer process with a ledger: commit k inserts row id=k whose payload is derived from
k, so any restored database can be checked to be exactly "the state after commit k".

Run: python ledger_writer.py DB [--rate TXN_PER_S] [--duration S] [--size BYTES]
     [--checkpoint-every N MODE] [--autocheckpoint N]
Prints the number of the last commit on exit (SIGTERM/SIGINT end it cleanly).
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import time

import apsw


def payload(k: int, size: int) -> bytes:
    seed = hashlib.sha256(b"%d" % k).digest()
    return (seed * (size // len(seed) + 1))[:size]


def check_prefix(path: str, size: int | None = None) -> int:
    """check_prefix returns k if the database holds exactly commits 1..k; raises otherwise."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], "integrity"
        k = 0
        for rid, data in conn.execute("SELECT id, x FROM ledger ORDER BY id"):
            k += 1
            if rid != k:
                raise AssertionError(f"ledger gap: expected id {k}, found {rid}")
            if data != payload(k, size if size is not None else len(data)):
                raise AssertionError(f"ledger row {k} has wrong content")
        return k
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--rate", type=float, default=0, help="commits per second (0 = unthrottled)")
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--checkpoint-mode", default="PASSIVE")
    ap.add_argument("--autocheckpoint", type=int, default=1000)
    args = ap.parse_args()

    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    conn = apsw.Connection(args.db)
    conn.set_busy_timeout(5000)
    conn.execute("PRAGMA journal_mode=wal").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint={args.autocheckpoint}").fetchall()
    conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, x BLOB)")
    k = conn.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchall()[0][0]
    start = time.monotonic()
    n = 0
    while not stop and time.monotonic() - start < args.duration:
        k += 1
        n += 1
        conn.execute("INSERT INTO ledger (id, x) VALUES (?, ?)", (k, payload(k, args.size)))
        if args.checkpoint_every and k % args.checkpoint_every == 0:
            conn.execute(f"PRAGMA wal_checkpoint({args.checkpoint_mode})").fetchall()
        if args.rate:
            delay = start + n / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    conn.close()
    print(k)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
