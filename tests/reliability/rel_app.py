"""The application of the reliability suite: ledger writers and readers as processes.

Modes (``--mode``):

* ``write``: commit k inserts row id=k with ``ledger_writer.payload(k, size)`` (the same
  ledger as ``tests/ledger_writer.py``). Each commit is ``BEGIN IMMEDIATE``, read max(id),
  insert max+1, ``COMMIT``, so several writer processes share one ledger. Every
  ``apsw.BusyError`` is counted and the transaction retried; commit latency is measured.
  ``--checkpoint-every N --checkpoint-modes PASSIVE,FULL,...`` runs the application's own
  checkpoints in rotation on a second connection (``--checkpoint-busy-timeout``).
  ``--log PATH`` appends ``k wall_time_ns`` per commit.
* ``read``: short read transactions (count, max, a random row), each held for up to
  ``--hold`` seconds; BusyErrors counted.
* ``hold``: one read transaction held for ``--hold`` seconds (checkpoint starvation).

SIGTERM/SIGINT end the loop; a JSON summary is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time

import apsw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ledger_writer import payload  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--mode", default="write", choices=["write", "read", "hold"])
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--busy-timeout", type=int, default=5000)
    ap.add_argument("--autocheckpoint", type=int, default=1000)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--checkpoint-modes", default="PASSIVE")
    ap.add_argument("--checkpoint-busy-timeout", type=int, default=300)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--log", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rng = random.Random(args.seed or os.getpid())
    conn = apsw.Connection(args.db)
    conn.set_busy_timeout(args.busy_timeout)
    summary: dict = {"mode": args.mode, "busy": 0, "errors": 0}
    start = time.monotonic()

    if args.mode == "hold":
        conn.execute("BEGIN")
        summary["rows"] = conn.execute("SELECT count(*) FROM ledger").fetchall()[0][0]
        print("HOLDING", flush=True)  # the read transaction has begun
        while not stop and time.monotonic() - start < args.hold:
            time.sleep(0.05)
        conn.execute("COMMIT")
        summary["held"] = time.monotonic() - start
    elif args.mode == "read":
        n = 0
        while not stop and time.monotonic() - start < args.duration:
            try:
                conn.execute("BEGIN")
                cnt, mx = conn.execute(
                    "SELECT count(*), coalesce(max(id), 0) FROM ledger"
                ).fetchall()[0]
                if cnt != mx:
                    summary["errors"] += 1  # a reader saw a ledger with a hole
                if mx:
                    rid = rng.randint(1, mx)
                    (x,) = conn.execute("SELECT x FROM ledger WHERE id = ?", (rid,)).fetchall()[0]
                    if x != payload(rid, len(x)):
                        summary["errors"] += 1
                if args.hold:
                    time.sleep(rng.uniform(0, args.hold))
                conn.execute("COMMIT")
                n += 1
            except apsw.BusyError:
                summary["busy"] += 1
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
            if args.rate:
                time.sleep(1.0 / args.rate)
        summary["reads"] = n
    else:
        conn.execute("PRAGMA journal_mode=wal").fetchall()
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint={args.autocheckpoint}").fetchall()
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, x BLOB)")
        ck = None
        modes = [m.strip().upper() for m in args.checkpoint_modes.split(",") if m.strip()]
        if args.checkpoint_every:
            ck = apsw.Connection(args.db)
            ck.set_busy_timeout(args.checkpoint_busy_timeout)
        ckstats: dict = {}
        log = open(args.log, "a") if args.log else None  # noqa: SIM115
        n, last, max_latency = 0, 0, 0.0
        while not stop and time.monotonic() - start < args.duration:
            t0 = time.monotonic()
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    k = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM ledger").fetchall()[0][0]
                    conn.execute(
                        "INSERT INTO ledger (id, x) VALUES (?, ?)", (k, payload(k, args.size))
                    )
                    conn.execute("COMMIT")
                    break
                except apsw.BusyError:
                    summary["busy"] += 1
                    if not conn.get_autocommit():
                        conn.execute("ROLLBACK")
            max_latency = max(max_latency, time.monotonic() - t0)
            n, last = n + 1, k
            if log:
                log.write(f"{k} {time.time_ns()}\n")
                log.flush()
            if ck is not None and n % args.checkpoint_every == 0:
                mode = modes[(n // args.checkpoint_every - 1) % len(modes)]
                t1 = time.monotonic()
                try:
                    busy = ck.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0][0]
                except apsw.BusyError:
                    busy = 1
                s = ckstats.setdefault(mode, {"n": 0, "busy": 0, "max_s": 0.0})
                s["n"] += 1
                s["busy"] += busy
                s["max_s"] = round(max(s["max_s"], time.monotonic() - t1), 3)
            if args.rate:
                delay = start + n / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        summary.update(last=last, commits=n, max_latency=round(max_latency, 3), checkpoints=ckstats)
        if log:
            log.close()
    conn.close()
    print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
