"""Workload writer for the end-to-end benchmark (``bench/e2e.py``), run as its own process.

Modes (all write JSON results to ``--out``):

* ``schema``   create the benchmark tables in a new WAL database.
* ``steady``   commit ``--rate`` transactions per second (0 = as fast as possible) for
  ``--duration`` seconds; each transaction inserts one ``--row-bytes`` random row.
* ``burst``    one transaction of ``--mib`` MiB of random rows.
* ``populate`` build a ``--mib`` MiB database of mixed compressible and random rows, then
  checkpoint (TRUNCATE) so the database file holds everything and the WAL is empty.
* ``history``  ``--txns`` transactions at ``--rate``/s on a populated database: half update a
  random existing row, half insert a new one (deterministic from ``--seed``).

Markers: a transaction every ``--marker-every`` seconds, and always the last one, also
inserts a row into ``m`` holding a 16-byte token (``token(seed, k)``: a per-seed magic and
``k``). The harness decodes the replica's new objects (v0.3 LZ4 frames, v0.5 LTX pages) and
finds every token in one pass; the time from a token's commit (recorded here, wall clock)
to its first appearance in the replica is the replication lag of that commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time

import apsw

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, ts REAL, x BLOB);"
    "CREATE TABLE IF NOT EXISTS m (k INTEGER PRIMARY KEY, tok BLOB, ts REAL);"
)


def token(seed: str, k: int) -> bytes:
    """token is marker ``k``: an 8-byte magic of the seed, ``k`` (4 bytes, big endian) and 4
    check bytes. The harness computes the same (bench/e2e.py ``token``)."""
    magic = hashlib.sha256(f"e2e-magic:{seed}".encode()).digest()[:8]
    check = hashlib.sha256(f"e2e-marker:{seed}:{k}".encode()).digest()[:4]
    return magic + k.to_bytes(4, "big") + check


def connect(path: str, autocheckpoint: int, synchronous: str = "NORMAL") -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.set_busy_timeout(10_000)
    mode = conn.execute("PRAGMA journal_mode=wal").fetchall()[0][0]
    if mode != "wal":
        raise SystemExit(f"journal_mode is {mode}, not wal")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}").fetchall()
    return conn


def percentile(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def latency_summary(lat: list[float]) -> dict:
    s = sorted(lat)
    return {
        "n": len(s),
        "mean_ms": (sum(s) / len(s) * 1e3) if s else None,
        "p50_ms": (percentile(s, 50) or 0) * 1e3 if s else None,
        "p99_ms": (percentile(s, 99) or 0) * 1e3 if s else None,
        "max_ms": s[-1] * 1e3 if s else None,
    }


class Markers:
    def __init__(self, seed: str, every: float) -> None:
        self.seed = seed
        self.every = every
        self.k = 0
        self.next_at = 0.0
        self.commits: list[dict] = []

    def due(self, now: float) -> bool:
        return self.every > 0 and now >= self.next_at

    def insert(self, conn: apsw.Connection) -> int:
        k = self.k
        conn.execute(
            "INSERT INTO m (k, tok, ts) VALUES (?, ?, ?)", (k, token(self.seed, k), time.time())
        )
        self.k += 1
        return k

    def committed(self, k: int, now_mono: float) -> None:
        self.commits.append({"k": k, "commit_time": time.time()})
        self.next_at = now_mono + self.every


def run_schema(a) -> dict:
    conn = connect(a.db, a.autocheckpoint)
    conn.execute(SCHEMA)
    conn.close()
    return {}


def run_steady(a) -> dict:
    conn = connect(a.db, a.autocheckpoint)
    conn.execute(SCHEMA)
    rng = random.Random(f"steady:{a.seed}")
    pool = rng.randbytes(1 << 20)
    mk = Markers(a.seed, a.marker_every)
    lat: list[float] = []
    row = a.row_bytes
    t0 = time.monotonic()
    start_wall = time.time()
    end = t0 + a.duration
    mk.next_at = t0
    n = 0
    interval = 1.0 / a.rate if a.rate > 0 else 0.0
    ins = "INSERT INTO t (ts, x) VALUES (?, ?)"
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if interval:
            due = t0 + n * interval
            if due > now:
                time.sleep(due - now)
        off = rng.randrange(0, len(pool) - row)
        x = pool[off : off + row]
        marker = mk.due(time.monotonic())
        c0 = time.monotonic()
        if marker:
            with conn:
                conn.execute(ins, (time.time(), x))
                k = mk.insert(conn)
        else:
            conn.execute(ins, (time.time(), x))
        c1 = time.monotonic()
        lat.append(c1 - c0)
        if marker:
            mk.committed(k, c1)
        n += 1
    # The last transaction always carries a marker: the harness waits for it.
    with conn:
        conn.execute(ins, (time.time(), pool[:row]))
        k = mk.insert(conn)
    mk.committed(k, time.monotonic())
    n += 1
    elapsed = time.monotonic() - t0
    conn.close()
    return {
        "commits": n,
        "elapsed": elapsed,
        "start_time": start_wall,
        "txn_per_s": n / elapsed if elapsed > 0 else None,
        "payload_bytes": n * row,
        "latency": latency_summary(lat),
        "markers": mk.commits,
    }


def run_burst(a) -> dict:
    conn = connect(a.db, a.autocheckpoint)
    conn.execute(SCHEMA)
    rng = random.Random(f"burst:{a.seed}")
    mk = Markers(a.seed, 0)
    total = a.mib << 20
    row = a.row_bytes
    n = max(1, total // row)
    chunk_rows = 4096
    t0 = time.monotonic()
    start_wall = time.time()
    with conn:
        done = 0
        while done < n:
            k = min(chunk_rows, n - done)
            blob = rng.randbytes(k * row)
            now = time.time()
            conn.executemany(
                "INSERT INTO t (ts, x) VALUES (?, ?)",
                ((now, blob[i * row : (i + 1) * row]) for i in range(k)),
            )
            done += k
        k = mk.insert(conn)
    mk.committed(k, time.monotonic())
    elapsed = time.monotonic() - t0
    conn.close()
    return {
        "commits": 1,
        "rows": n,
        "elapsed": elapsed,
        "start_time": start_wall,
        "payload_bytes": n * row,
        "latency": latency_summary([elapsed]),
        "markers": mk.commits,
    }


def run_populate(a) -> dict:
    """Mixed content: odd rows random (incompressible), even rows text-like (compressible)."""
    conn = connect(a.db, 0)
    conn.execute(SCHEMA)
    rng = random.Random(f"populate:{a.seed}")
    words = [rng.randbytes(rng.randrange(3, 9)).hex().encode() for _ in range(512)]
    row = a.row_bytes
    total = a.mib << 20
    page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
    t0 = time.monotonic()
    batch = 4096
    done = 0
    while conn.execute("PRAGMA page_count").fetchall()[0][0] * page_size < total:
        rand = rng.randbytes(batch * row)
        rows = []
        for i in range(batch):
            rid = done + i + 1
            if rid % 2:
                x = rand[i * row : (i + 1) * row]
            else:
                text = b" ".join(rng.choices(words, k=row // 8))
                x = (text + b" " * row)[:row]
            rows.append((rid, float(rid), x))
        with conn:
            conn.executemany("INSERT INTO t (id, ts, x) VALUES (?, ?, ?)", rows)
        done += batch
    n = done
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()
    return {"rows": n, "elapsed": time.monotonic() - t0, "size": os.path.getsize(a.db)}


def run_history(a) -> dict:
    conn = connect(a.db, a.autocheckpoint)
    rng = random.Random(f"history:{a.seed}")
    max_id = conn.execute("SELECT max(id) FROM t").fetchall()[0][0] or 0
    mk = Markers(a.seed, a.marker_every)
    lat: list[float] = []
    row = a.row_bytes
    interval = 1.0 / a.rate if a.rate > 0 else 0.0
    t0 = time.monotonic()
    start_wall = time.time()
    mk.next_at = t0
    for n in range(a.txns):
        if interval:
            due = t0 + n * interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        last = n == a.txns - 1
        marker = last or mk.due(time.monotonic())
        x = rng.randbytes(row)
        c0 = time.monotonic()
        with conn:
            if n % 2 and max_id:
                conn.execute(
                    "UPDATE t SET x = ?, ts = ? WHERE id = ?",
                    (x, float(n), rng.randrange(1, max_id + 1)),
                )
            else:
                conn.execute("INSERT INTO t (ts, x) VALUES (?, ?)", (float(n), x))
            if marker:
                k = mk.insert(conn)
        c1 = time.monotonic()
        lat.append(c1 - c0)
        if marker:
            mk.committed(k, c1)
    elapsed = time.monotonic() - t0
    conn.close()
    return {
        "commits": a.txns,
        "elapsed": elapsed,
        "start_time": start_wall,
        "payload_bytes": a.txns * row,
        "latency": latency_summary(lat),
        "markers": mk.commits,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["schema", "steady", "burst", "populate", "history"])
    p.add_argument("--db", required=True)
    p.add_argument("--out", default="")
    p.add_argument("--seed", default="1")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--row-bytes", type=int, default=1024)
    p.add_argument("--marker-every", type=float, default=1.0)
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--txns", type=int, default=1000)
    p.add_argument("--autocheckpoint", type=int, default=1000,
                   help="the application's PRAGMA wal_autocheckpoint (SQLite's default: 1000)")  # fmt: skip
    a = p.parse_args(argv)
    fn = {"schema": run_schema, "steady": run_steady, "burst": run_burst,
          "populate": run_populate, "history": run_history}[a.mode]  # fmt: skip
    res = fn(a)
    res["mode"] = a.mode
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f)
        os.replace(tmp, a.out)
    else:
        json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
