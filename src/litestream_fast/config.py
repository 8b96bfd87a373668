"""Configuration: Litestream's ``litestream.yml`` keys and replica URLs, as dataclasses.

The library never reads files or argv: the CLI reads the file and passes its text to
``parse_config``. Unknown keys produce a warning naming the key (Litestream ignores them
silently, which hides typos); invalid values raise ``ConfigError`` naming key and value.
``build_client`` is the one factory that turns a replica config into a storage client.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from litestream_fast.errors import ConfigError
from litestream_fast.replica_client import ReplicaClient

log = logging.getLogger("litestream_fast.config")

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"
DEFAULT_MONITOR_INTERVAL = 1.0
DEFAULT_CHECKPOINT_INTERVAL = 60.0
DEFAULT_MIN_CHECKPOINT_PAGE_COUNT = 1000
DEFAULT_TRUNCATE_PAGE_N = 121359
DEFAULT_BUSY_TIMEOUT = 1.0
DEFAULT_SYNC_INTERVAL = 1.0
DEFAULT_RETENTION = 24 * 3600.0
DEFAULT_RETENTION_CHECK_INTERVAL = 3600.0
DEFAULT_MAX_LAG = 60.0
DEFAULT_HEARTBEAT_INTERVAL = 300.0

URL_RE = re.compile(r"^\w+://")

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, key: str) -> float:
    """parse_duration reads a Go duration ("1s", "100ms", "1h30m") into seconds.

    A bare number is taken as seconds. Raises ConfigError naming ``key`` otherwise.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key}: invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    s = str(value).strip()
    if s in ("0", ""):
        return 0.0
    neg = s.startswith("-")
    body = s[1:] if neg or s.startswith("+") else s
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_RE.match(body, pos)
        if not m:
            raise ConfigError(f'{key}: invalid duration "{value}" (examples: 1s, 100ms, 1h30m)')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise ConfigError(f'{key}: invalid duration "{value}"')
    return -total if neg else total


def _int(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key}: invalid integer {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{key}: invalid integer {value!r}") from None
    if minimum is not None and n < minimum:
        raise ConfigError(f"{key}: must be at least {minimum}, got {n}")
    return n


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key}: invalid boolean {value!r}")


def _str(value: Any, key: str) -> str:
    if value is None or isinstance(value, dict | list):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return str(value)


@dataclass
class ReplicaConfig:
    """ReplicaConfig is one replica of one database (Litestream's per-replica keys)."""

    type: str = "file"
    name: str = ""
    url: str | None = None
    path: str | None = None
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    retention: float = DEFAULT_RETENTION
    retention_check_interval: float = DEFAULT_RETENTION_CHECK_INTERVAL
    snapshot_interval: float = 0.0
    validation_interval: float = 0.0
    # S3 and S3-compatible stores.
    bucket: str | None = None
    region: str | None = None
    endpoint: str | None = None
    force_path_style: bool | None = None  # None: unset (path style when an endpoint is set)
    skip_verify: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


@dataclass
class DBConfig:
    """DBConfig is one replicated database (Litestream's per-db keys, v0.5 checkpoint keys)."""

    path: str
    meta_path: str | None = None
    monitor_interval: float = DEFAULT_MONITOR_INTERVAL
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    min_checkpoint_page_count: int = DEFAULT_MIN_CHECKPOINT_PAGE_COUNT
    truncate_page_n: int = DEFAULT_TRUNCATE_PAGE_N
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    replicas: list[ReplicaConfig] = field(default_factory=list)


@dataclass
class LoggingConfig:
    level: str = "info"
    type: str = "text"
    stderr: bool = False


@dataclass
class Config:
    """Config is a whole ``litestream.yml``."""

    dbs: list[DBConfig] = field(default_factory=list)
    addr: str | None = None
    exec: str | None = None
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    access_key_id: str | None = None
    secret_access_key: str | None = None
    max_lag: float = DEFAULT_MAX_LAG
    heartbeat_url: str | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL

    def db(self, path: str) -> DBConfig | None:
        """db returns the config of the database at ``path`` (compared as absolute paths)."""
        want = os.path.abspath(os.path.expanduser(path))
        for d in self.dbs:
            if d.path == want:
                return d
        return None


_REPLICA_KEYS = {
    "type", "name", "url", "path", "sync-interval", "retention", "retention-check-interval",
    "snapshot-interval", "validation-interval", "bucket", "region", "endpoint",
    "force-path-style", "skip-verify", "access-key-id", "secret-access-key",
}  # fmt: skip
_KNOWN_UNSUPPORTED_REPLICA_KEYS = {
    "account-name", "account-key", "host", "user", "password", "key-path", "age",
}  # fmt: skip
_DB_KEYS = {
    "path", "meta-path", "monitor-interval", "checkpoint-interval", "min-checkpoint-page-count",
    "max-checkpoint-page-count", "truncate-page-n", "busy-timeout", "replicas", "replica",
}  # fmt: skip
_TOP_KEYS = {
    "dbs", "addr", "exec", "logging", "access-key-id", "secret-access-key", "max-lag",
    "heartbeat-url", "heartbeat-interval",
}  # fmt: skip
_LOGGING_KEYS = {"level", "type", "stderr"}


def _warn_unknown(section: dict, known: set[str], where: str) -> None:
    for key in section:
        if key not in known:
            log.warning("unknown config key %s%s (ignored)", where, key)


def expand_env(text: str) -> str:
    """expand_env replaces ``$VAR`` and ``${VAR}`` like Go's os.ExpandEnv (unset ⇒ empty)."""
    return re.sub(
        r"\$(\{([^}]*)\}|[A-Za-z_][A-Za-z0-9_]*)",
        lambda m: os.environ.get(m.group(2) if m.group(2) is not None else m.group(1), ""),
        text,
    )


def parse_config(text: str, expand: bool = True, source: str = "config") -> Config:
    """parse_config builds a Config from YAML text (``$VAR`` expanded unless ``expand``)."""
    import yaml  # 30 ms of imports; a command given a replica URL never needs it

    if expand:
        text = expand_env(text)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: invalid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    _warn_unknown(raw, _TOP_KEYS, "")
    cfg = Config()
    if raw.get("addr") is not None:
        cfg.addr = _str(raw["addr"], "addr")
    if raw.get("exec") is not None:
        cfg.exec = _str(raw["exec"], "exec")
    if "max-lag" in raw:
        cfg.max_lag = parse_duration(raw["max-lag"], "max-lag")
    if raw.get("heartbeat-url"):
        cfg.heartbeat_url = _str(raw["heartbeat-url"], "heartbeat-url")
        if not re.match(r"^https?://", cfg.heartbeat_url):
            raise ConfigError(f"heartbeat-url: must be an http(s) URL, got {cfg.heartbeat_url!r}")
    if "heartbeat-interval" in raw:
        cfg.heartbeat_interval = parse_duration(raw["heartbeat-interval"], "heartbeat-interval")
        if cfg.heartbeat_interval <= 0:
            raise ConfigError("heartbeat-interval: must be positive")
    cfg.access_key_id = raw.get("access-key-id")
    cfg.secret_access_key = raw.get("secret-access-key")
    lg = raw.get("logging") or {}
    if not isinstance(lg, dict):
        raise ConfigError(f"logging: expected a mapping, got {lg!r}")
    _warn_unknown(lg, _LOGGING_KEYS, "logging.")
    level = str(lg.get("level", "info")).lower()
    if level not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"logging.level: invalid level {lg.get('level')!r}")
    ltype = str(lg.get("type", "text")).lower()
    if ltype not in ("text", "json"):
        raise ConfigError(f"logging.type: invalid type {lg.get('type')!r} (text or json)")
    cfg.logging = LoggingConfig(level, ltype, _bool(lg.get("stderr", False), "logging.stderr"))

    dbs = raw.get("dbs") or []
    if not isinstance(dbs, list):
        raise ConfigError("dbs: expected a list")
    for i, d in enumerate(dbs):
        cfg.dbs.append(_parse_db(d, f"dbs[{i}]", cfg))
    seen: set[str] = set()
    for d in cfg.dbs:
        if d.path in seen:
            raise ConfigError(f"dbs: duplicate database path {d.path}")
        seen.add(d.path)
    # Two databases replicating to one location would mix their generations: a restore
    # could return the other database. (v0.3 objects carry no database identity.)
    locations: dict[tuple, str] = {}
    for d in cfg.dbs:
        for r in d.replicas:
            loc = (r.type, r.endpoint or "", r.bucket or "", (r.path or "").rstrip("/"))
            other = locations.setdefault(loc, d.path)
            if other != d.path:
                where = r.path if r.type == "file" else f"s3://{r.bucket}/{r.path or ''}"
                raise ConfigError(
                    f"dbs: {other} and {d.path} replicate to the same location {where}; "
                    "each database needs its own replica path"
                )
    return cfg


def _parse_db(d: Any, where: str, cfg: Config) -> DBConfig:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _warn_unknown(d, _DB_KEYS, f"{where}.")
    if not d.get("path"):
        raise ConfigError(f"{where}.path: required")
    path = os.path.abspath(os.path.expanduser(_str(d["path"], f"{where}.path")))
    db = DBConfig(path=path)
    if d.get("meta-path"):
        db.meta_path = os.path.abspath(
            os.path.expanduser(_str(d["meta-path"], f"{where}.meta-path"))
        )
    if "monitor-interval" in d:
        db.monitor_interval = parse_duration(d["monitor-interval"], f"{where}.monitor-interval")
        if db.monitor_interval <= 0:
            raise ConfigError(f"{where}.monitor-interval: must be positive")
    if "checkpoint-interval" in d:
        db.checkpoint_interval = parse_duration(
            d["checkpoint-interval"], f"{where}.checkpoint-interval"
        )
    if "min-checkpoint-page-count" in d:
        db.min_checkpoint_page_count = _int(
            d["min-checkpoint-page-count"], f"{where}.min-checkpoint-page-count", 1
        )
    if "truncate-page-n" in d:
        n = _int(d["truncate-page-n"], f"{where}.truncate-page-n", 0)
        db.truncate_page_n = n or DEFAULT_TRUNCATE_PAGE_N
    if "busy-timeout" in d:
        db.busy_timeout = parse_duration(d["busy-timeout"], f"{where}.busy-timeout")
    if "max-checkpoint-page-count" in d:
        log.warning(
            "%s.max-checkpoint-page-count: ignored; litestream-fast never takes RESTART "
            "checkpoints (they block writers; Litestream v0.5 removed them)",
            where,
        )
    replicas = d.get("replicas") or []
    if d.get("replica"):
        replicas = [d["replica"], *replicas]
    if not isinstance(replicas, list):
        raise ConfigError(f"{where}.replicas: expected a list")
    for i, r in enumerate(replicas):
        db.replicas.append(_parse_replica(r, f"{where}.replicas[{i}]", cfg))
    names: set[str] = set()
    for r in db.replicas:
        if r.display_name in names:
            raise ConfigError(f"{where}.replicas: duplicate replica name {r.display_name!r}")
        names.add(r.display_name)
    return db


def _parse_replica(r: Any, where: str, cfg: Config) -> ReplicaConfig:
    if not isinstance(r, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key in r:
        if key in _KNOWN_UNSUPPORTED_REPLICA_KEYS:
            raise ConfigError(f"{where}.{key}: not supported by litestream-fast yet")
    _warn_unknown(r, _REPLICA_KEYS, f"{where}.")
    rc = ReplicaConfig()
    if r.get("url"):
        if r.get("path"):
            raise ConfigError(f"{where}: replica cannot have both 'url' and 'path'")
        if r.get("bucket"):
            raise ConfigError(f"{where}: replica cannot have both 'url' and 'bucket'")
        rc = replica_config_from_url(_str(r["url"], f"{where}.url"), f"{where}.url")
    else:
        rc.type = str(r.get("type") or "file")
        if r.get("path"):
            p = _str(r["path"], f"{where}.path")
            if URL_RE.match(p):
                raise ConfigError(f"{where}.path: a URL is not a path; use 'url' instead")
            rc.path = os.path.abspath(os.path.expanduser(p)) if rc.type == "file" else p
    if rc.type not in ("file", "s3"):
        raise ConfigError(f"{where}.type: unsupported replica type {rc.type!r} (file or s3)")
    if rc.type == "file" and not rc.path:
        raise ConfigError(f"{where}: file replica needs 'path' or a file:// 'url'")
    if r.get("type") and r.get("url") and str(r["type"]) != rc.type:
        log.warning("%s.type: %r ignored; the url scheme says %r", where, r["type"], rc.type)
    rc.name = str(r.get("name") or "")
    for key, attr in (
        ("sync-interval", "sync_interval"),
        ("retention", "retention"),
        ("retention-check-interval", "retention_check_interval"),
        ("snapshot-interval", "snapshot_interval"),
        ("validation-interval", "validation_interval"),
    ):
        if key in r:
            setattr(rc, attr, parse_duration(r[key], f"{where}.{key}"))
    if rc.sync_interval <= 0:
        raise ConfigError(f"{where}.sync-interval: must be positive")
    for key, attr in (("bucket", "bucket"), ("region", "region"), ("endpoint", "endpoint")):
        if r.get(key):
            setattr(rc, attr, _str(r[key], f"{where}.{key}"))
    for key, attr in (("force-path-style", "force_path_style"), ("skip-verify", "skip_verify")):
        if key in r:
            setattr(rc, attr, _bool(r[key], f"{where}.{key}"))
    rc.access_key_id = r.get("access-key-id") or rc.access_key_id or cfg.access_key_id
    rc.secret_access_key = (
        r.get("secret-access-key") or rc.secret_access_key or cfg.secret_access_key
    )
    if rc.type == "s3" and not rc.bucket:
        raise ConfigError(f"{where}.bucket: required for an s3 replica")
    return rc


def replica_config_from_url(url: str, key: str = "url") -> ReplicaConfig:
    """replica_config_from_url parses ``file:///path`` and ``s3://bucket/prefix`` URLs."""
    u = urlparse(url)
    scheme = u.scheme.lower()
    if scheme == "file":
        path = unquote(u.netloc + u.path) if u.netloc not in ("", "localhost") else unquote(u.path)
        if not path:
            raise ConfigError(f"{key}: file URL has no path: {url}")
        return ReplicaConfig(type="file", url=url, path=os.path.abspath(os.path.expanduser(path)))
    if scheme == "s3":
        from litestream_fast.clients import s3_url  # parsing rules live with the S3 client

        return s3_url.parse_s3_url(url, key)
    raise ConfigError(f"{key}: unsupported replica URL scheme {u.scheme!r} in {url}")


def build_client(rc: ReplicaConfig) -> ReplicaClient:
    """build_client is the one factory from replica config to storage client."""
    if rc.type == "file":
        from litestream_fast.clients.file import FileReplicaClient

        assert rc.path
        return FileReplicaClient(rc.path)
    if rc.type == "s3":
        from litestream_fast.clients.s3 import S3ReplicaClient

        return S3ReplicaClient.from_config(rc)
    raise ConfigError(f"unsupported replica type {rc.type!r}")
