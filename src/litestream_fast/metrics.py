"""Prometheus metrics, health and status over HTTP on the config's ``addr``.

``/metrics`` exposes Litestream's metric names and labels (spec §3.6) plus ours: replica
lag, time of the last successful sync, and new generations by reason. Values are read from
the running objects at scrape time, so replication pays nothing per sync for them.
Litestream's counters are exposed under their exact names (``litestream_sync_count``, not
``…_total``) so existing dashboards keep working; they are therefore typed ``untyped``.

``/healthz`` answers 200 ``ok``, or 503 with the reasons when a replica's lag exceeds
``max-lag`` or its last sync failed, or a database reports an error. ``/status`` is the
JSON that ``litestream-fast status`` prints.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, UnknownMetricFamily

from litestream_fast import status
from litestream_fast.errors import ConfigError

log = logging.getLogger("litestream_fast.metrics")


class ReplicatorCollector:
    """ReplicatorCollector reads metrics from a Replicator's databases and replicas."""

    def __init__(self, replicator) -> None:
        self.replicator = replicator

    def collect(self):
        g = GaugeMetricFamily
        u = UnknownMetricFamily
        db_size = g("litestream_db_size", "The current size of the real DB", labels=["db"])
        wal_size = g("litestream_wal_size", "The current size of the real WAL", labels=["db"])
        total_wal = u(
            "litestream_total_wal_bytes",
            "Total number of bytes written to shadow WAL",
            labels=["db"],
        )
        sh_index = g(
            "litestream_shadow_wal_index", "The current index of the shadow WAL", labels=["db"]
        )
        sh_size = g(
            "litestream_shadow_wal_size", "Current size of shadow WAL, in bytes", labels=["db"]
        )
        sync_n = u("litestream_sync_count", "Number of sync operations performed", labels=["db"])
        sync_err = u(
            "litestream_sync_error_count", "Number of sync errors that have occurred", labels=["db"]
        )
        sync_s = u(
            "litestream_sync_seconds", "Time spent syncing shadow WAL, in seconds", labels=["db"]
        )
        ck_n = u(
            "litestream_checkpoint_count", "Number of checkpoint operations", labels=["db", "mode"]
        )
        ck_err = u(
            "litestream_checkpoint_error_count",
            "Number of checkpoint errors",
            labels=["db", "mode"],
        )
        ck_s = u(
            "litestream_checkpoint_seconds",
            "Time spent checkpointing WAL, in seconds",
            labels=["db", "mode"],
        )
        gens = u(
            "litestream_fast_new_generation_count",
            "New generations started, by reason",
            labels=["db", "reason"],
        )
        r_bytes = u(
            "litestream_replica_wal_bytes",
            "The number wal bytes written by replica",
            labels=["db", "name"],
        )
        r_index = g("litestream_replica_wal_index", "The current WAL index", labels=["db", "name"])
        r_offset = g(
            "litestream_replica_wal_offset", "The current WAL offset", labels=["db", "name"]
        )
        r_valid = u("litestream_replica_validation_total", "The number of validations performed",
                    labels=["db", "name", "status"])  # fmt: skip
        r_lag = g("litestream_fast_replica_lag_seconds", "Seconds the DB has held data the replica has not",
                  labels=["db", "name"])  # fmt: skip
        r_last = g("litestream_fast_replica_last_sync_timestamp_seconds",
                   "Unix time of the replica's last successful sync", labels=["db", "name"])  # fmt: skip
        ops = u("litestream_replica_operation_total", "The number of replica operations performed",
                labels=["replica_type", "operation"])  # fmt: skip
        op_bytes = u("litestream_replica_operation_bytes", "The number of bytes used by replica operations",
                     labels=["replica_type", "operation"])  # fmt: skip
        op_totals: dict[tuple[str, str], list[float]] = {}
        for m in self.replicator.dbs:
            db = m.db
            pos = db.pos()
            db_size.add_metric([db.path], status._size(db.path))
            wal_size.add_metric([db.path], db.wal_size())
            total_wal.add_metric([db.path], db.total_wal_bytes)
            sh_index.add_metric([db.path], pos.index)
            sh_size.add_metric([db.path], pos.offset)
            sync_n.add_metric([db.path], db.sync_count)
            sync_err.add_metric([db.path], db.sync_error_count)
            sync_s.add_metric([db.path], db.sync_seconds)
            for mode in ("PASSIVE", "TRUNCATE"):
                ck_n.add_metric([db.path, mode], db.checkpoint_count.get(mode, 0))
                ck_err.add_metric([db.path, mode], db.checkpoint_error_count.get(mode, 0))
                ck_s.add_metric([db.path, mode], db.checkpoint_seconds.get(mode, 0.0))
            for reason, n in db.generation_reasons.items():
                gens.add_metric([db.path, reason], n)
            for r in m.replicas:
                labels = [db.path, r.name]
                r_bytes.add_metric(labels, r.wal_bytes)
                r_index.add_metric(labels, r.pos.index)
                r_offset.add_metric(labels, r.pos.offset)
                for st in ("ok", "error"):
                    r_valid.add_metric([*labels, st], r.validations.get(st, 0))
                r_lag.add_metric(labels, r.lag())
                r_last.add_metric(labels, r.last_sync_at or 0)
                counts = getattr(r.client, "op_counts", {}) or {}
                nbytes = getattr(r.client, "op_bytes", {}) or {}
                for op in set(counts) | set(nbytes):
                    t = op_totals.setdefault((r.client.type, op), [0, 0])
                    t[0] += counts.get(op, 0)
                    t[1] += nbytes.get(op, 0)
        for (rtype, op), (n, b) in sorted(op_totals.items()):
            ops.add_metric([rtype, op], n)
            op_bytes.add_metric([rtype, op], b)
        yield from (db_size, wal_size, total_wal, sh_index, sh_size, sync_n, sync_err, sync_s, ck_n,
                    ck_err, ck_s, gens, r_bytes, r_index, r_offset, r_valid, r_lag, r_last, ops, op_bytes)  # fmt: skip


def health(replicator, max_lag: float) -> list[str]:
    """health returns the reasons the replicator is unhealthy (empty when healthy)."""
    reasons = []
    for m in replicator.dbs:
        if m.db.last_error:
            reasons.append(f"db {m.db.path}: {m.db.last_error}")
        for r in m.replicas:
            if r.last_error:
                reasons.append(f"replica {r.name} of {m.db.path}: last sync failed: {r.last_error}")
            elif max_lag > 0 and r.lag() > max_lag:
                reasons.append(
                    f"replica {r.name} of {m.db.path}: lag {r.lag():.1f}s exceeds max-lag {max_lag:g}s"
                )
    return reasons


def parse_addr(addr: str) -> tuple[str, int]:
    """parse_addr splits ``host:port`` (``:9090`` binds every interface, as Go does)."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ConfigError(f"addr: must include a port, got {addr!r}")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"addr: invalid port in {addr!r}") from None
    return host.strip("[]"), p


class MetricsServer:
    """MetricsServer serves /metrics, /healthz and /status for a Replicator."""

    def __init__(self, replicator, addr: str, max_lag: float = 60.0) -> None:
        self.replicator = replicator
        self.max_lag = max_lag
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ReplicatorCollector(replicator))
        host, port = parse_addr(addr)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), "text/plain; version=0.0.4")
                elif path in ("/healthz", "/health"):
                    reasons = health(server.replicator, server.max_lag)
                    body = ("ok\n" if not reasons else "\n".join(reasons) + "\n").encode()
                    self._send(503 if reasons else 200, body, "text/plain")
                elif path == "/status":
                    doc = [status.db_state(m) for m in server.replicator.dbs]
                    self._send(200, json.dumps(doc).encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet: no line per scrape
                pass

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"addr: cannot listen on {addr!r}: {exc.strerror}") from None
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        host, port = self.address
        log.info("serving metrics on http://%s:%d/metrics", host or "0.0.0.0", port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
