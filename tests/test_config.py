"""Config parsing: Litestream's keys, durations, env expansion, errors naming the key."""

from __future__ import annotations

import logging
import os

import pytest

from litestream_fast.config import parse_config, parse_duration, replica_config_from_url
from litestream_fast.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1s", 1.0),
        ("100ms", 0.1),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        (5, 5.0),
        ("250us", 0.00025),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "1x", "s", "1s2", True])
def test_bad_durations_name_the_key(bad):
    with pytest.raises(ConfigError, match="my-key"):
        parse_duration(bad, "my-key")


def test_example_config_parses_without_warnings(caplog, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    with caplog.at_level(logging.WARNING, logger="litestream_fast"):
        cfg = parse_config(open(os.path.join(ROOT, "etc", "litestream.yml")).read())
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    db = cfg.dbs[0]
    assert db.path == "/var/lib/app/app.db" and db.truncate_page_n == 121359
    local, s3 = db.replicas
    assert (local.name, local.type, local.path, local.snapshot_interval) == (
        "local",
        "file",
        "/var/backups/app",
        21600.0,
    )
    assert (s3.type, s3.bucket, s3.path, s3.access_key_id, s3.sync_interval) == (
        "s3",
        "my-bucket",
        "app",
        "AKID",
        10.0,
    )
    assert cfg.addr == "127.0.0.1:9090" and cfg.max_lag == 30.0


def test_env_expansion_and_opt_out(monkeypatch):
    monkeypatch.setenv("DBDIR", "/data")
    text = "dbs:\n  - path: ${DBDIR}/a.db\n    replicas:\n      - path: $DBDIR/r\n"
    cfg = parse_config(text)
    assert cfg.dbs[0].path == "/data/a.db" and cfg.dbs[0].replicas[0].path == "/data/r"
    cfg = parse_config(text, expand=False)
    assert cfg.dbs[0].path.endswith("${DBDIR}/a.db")


def test_replica_rules():
    with pytest.raises(ConfigError, match="both 'url' and 'path'"):
        parse_config(
            "dbs:\n  - path: /a\n    replicas:\n      - url: file:///r\n        path: /r\n"
        )
    with pytest.raises(ConfigError, match="duplicate replica name 'file'"):
        parse_config("dbs:\n  - path: /a\n    replicas:\n      - path: /r1\n      - path: /r2\n")
    with pytest.raises(ConfigError, match="a URL is not a path"):
        parse_config("dbs:\n  - path: /a\n    replicas:\n      - path: s3://b/p\n")
    with pytest.raises(ConfigError, match="not supported"):
        parse_config("dbs:\n  - path: /a\n    replicas:\n      - path: /r\n        age: {}\n")
    assert replica_config_from_url("file:///tmp/x/../y").path == "/tmp/y"
    with pytest.raises(ConfigError, match="unsupported replica URL scheme"):
        replica_config_from_url("ftp://x/y")


def test_global_credentials_propagate_and_max_checkpoint_warns(caplog):
    text = (
        "access-key-id: A\nsecret-access-key: S\n"
        "dbs:\n  - path: /a\n    max-checkpoint-page-count: 10000\n"
        "    replicas:\n      - type: s3\n        bucket: b\n        endpoint: http://127.0.0.1:1\n"
    )
    with caplog.at_level(logging.WARNING, logger="litestream_fast"):
        cfg = parse_config(text)
    rc = cfg.dbs[0].replicas[0]
    assert (rc.access_key_id, rc.secret_access_key) == ("A", "S")
    assert any("never takes RESTART" in r.getMessage() for r in caplog.records)
