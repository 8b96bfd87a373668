"""Metrics, health, status and heartbeat of a running replicator (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import connect, wait_for

from litestream_fast.config import DBConfig, ReplicaConfig, parse_config
from litestream_fast.errors import ConfigError
from litestream_fast.metrics import MetricsServer, parse_addr
from litestream_fast.scheduler import Replicator

LITESTREAM_METRICS = [
    "litestream_db_size", "litestream_wal_size", "litestream_total_wal_bytes",
    "litestream_shadow_wal_index", "litestream_shadow_wal_size", "litestream_sync_count",
    "litestream_sync_error_count", "litestream_sync_seconds", "litestream_checkpoint_count",
    "litestream_checkpoint_error_count", "litestream_checkpoint_seconds",
    "litestream_replica_wal_bytes", "litestream_replica_wal_index", "litestream_replica_wal_offset",
    "litestream_replica_validation_total", "litestream_fast_replica_lag_seconds",
    "litestream_fast_replica_last_sync_timestamp_seconds", "litestream_fast_new_generation_count",
]  # fmt: skip


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def running(tmp_path):
    path = str(tmp_path / "app.db")
    app = connect(path)
    app.execute("CREATE TABLE t (x)")
    cfg = DBConfig(path=path, monitor_interval=0.1,
                   replicas=[ReplicaConfig(type="file", name="r1", path=str(tmp_path / "r1"), sync_interval=0.1)])  # fmt: skip
    rep = Replicator.from_config([cfg])
    server = MetricsServer(rep, "127.0.0.1:0", max_lag=5)
    server.start()
    rep.start()
    base = "http://127.0.0.1:%d" % server.address[1]
    yield app, rep, base, path
    rep.stop(timeout=10)
    server.stop()
    app.close()


def test_metrics_health_and_status_endpoints(running):
    app, rep, base, path = running
    for i in range(50):
        app.execute("INSERT INTO t VALUES (?)", (i,))
    r = rep.dbs[0].replicas[0]
    assert wait_for(lambda: r.pos == rep.dbs[0].db.pos() and r.pos.offset > 32)
    code, text = get(base + "/metrics")
    assert code == 200
    for name in LITESTREAM_METRICS:
        assert f"\n{name}{{" in text, name
    assert f'litestream_replica_wal_index{{db="{path}",name="r1"}} 0.0' in text
    assert (
        f'litestream_fast_new_generation_count{{db="{path}",reason="no generation exists"}} 1.0'
        in text
    )
    code, text = get(base + "/healthz")
    assert (code, text) == (200, "ok\n")
    code, text = get(base + "/status")
    doc = json.loads(text)
    assert doc[0]["path"] == path and doc[0]["replicas"][0]["name"] == "r1"
    # A failing replica turns health red, with the reason.
    r.last_error = "boom"
    code, text = get(base + "/healthz")
    assert code == 503 and "r1" in text and "boom" in text


def test_status_command_reads_published_state(running, tmp_path):
    app, rep, base, path = running
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"dbs:\n  - path: {path}\n    replicas:\n      - path: {tmp_path / 'r1'}\n")
    app.execute("INSERT INTO t VALUES (1)")
    out = {}

    def ran():
        p = subprocess.run([sys.executable, "-m", "litestream_fast", "status", "-config", str(cfg), "-json"],
                           capture_output=True, text=True)  # fmt: skip
        out["p"] = p
        return p.returncode == 0 and json.loads(p.stdout)[0]["running"]

    assert wait_for(ran)
    doc = json.loads(out["p"].stdout)[0]
    assert doc["generation"] == rep.dbs[0].db.generation
    assert doc["replicas"][0]["name"] == "r1"  # what the running process says


def test_status_says_when_nothing_runs(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        f"dbs:\n  - path: {tmp_path / 'x.db'}\n    replicas:\n      - path: {tmp_path / 'r'}\n"
    )
    p = subprocess.run([sys.executable, "-m", "litestream_fast", "status", "-config", str(cfg)],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 1 and "no replicator running" in p.stdout


def test_heartbeat_only_when_in_sync(tmp_path):
    hits = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        path = str(tmp_path / "app.db")
        app = connect(path)
        app.execute("CREATE TABLE t (x)")
        cfg = DBConfig(path=path, monitor_interval=0.1,
                       replicas=[ReplicaConfig(type="file", path=str(tmp_path / "r"), sync_interval=0.1)])  # fmt: skip
        rep = Replicator.from_config([cfg])
        rep.heartbeat_url = "http://127.0.0.1:%d/ping" % srv.server_address[1]
        assert not rep.heartbeat_once()  # nothing synced yet: no heartbeat
        rep.start()
        try:
            assert wait_for(lambda: rep.healthy_and_synced())
            assert rep.heartbeat_once()
            assert hits == ["/ping"]
        finally:
            rep.stop(timeout=10)
        app.close()
    finally:
        srv.shutdown()


def test_addr_and_operations_config():
    assert parse_addr(":9090") == ("", 9090)
    assert parse_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="must include a port"):
        parse_addr("localhost")
    cfg = parse_config(
        "addr: ':9090'\nmax-lag: 30s\nheartbeat-url: http://h/x\nheartbeat-interval: 1m\n"
    )
    assert (cfg.addr, cfg.max_lag, cfg.heartbeat_url, cfg.heartbeat_interval) == (
        ":9090",
        30.0,
        "http://h/x",
        60.0,
    )
    with pytest.raises(ConfigError, match="heartbeat-url"):
        parse_config("heartbeat-url: ftp://x\n")
