"""``litestream-fast replicate``: continuously replicate databases to their replicas."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

import click

from litestream_fast.cli import cli
from litestream_fast.cli.common import config_options, load_config
from litestream_fast.config import URL_RE, Config, DBConfig, replica_config_from_url
from litestream_fast.errors import ConfigError
from litestream_fast.logs import setup_logging
from litestream_fast.scheduler import Replicator

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("litestream_fast.cli")

SHUTDOWN_TIMEOUT = 30.0


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1)
@config_options
@click.option(
    "-exec",
    "--exec",
    "exec_cmd",
    metavar="CMD",
    help="Run CMD as a child process; stop when it exits.",
)
@click.option(
    "-log-level",
    "--log-level",
    type=click.Choice(["debug", "info", "warn", "error"]),
    help="Override logging.level.",
)
def replicate(
    args: tuple[str, ...],
    config_path: str | None,
    no_expand_env: bool,
    exec_cmd: str | None,
    log_level: str | None,
) -> None:
    """Replicate databases: from the config file, or DB_PATH REPLICA_URL [REPLICA_URL...].

    Runs until SIGINT/SIGTERM (a final sync is made first; a second signal exits at once)
    or, with -exec, until the child process exits, whose status becomes ours.
    """
    if args:
        if config_path:
            raise ConfigError("cannot specify a replica URL and the -config flag")
        if len(args) < 2:
            raise ConfigError("must specify at least one replica URL")
        db = DBConfig(path=os.path.abspath(os.path.expanduser(args[0])))
        for i, url in enumerate(args[1:]):
            if not URL_RE.match(url):
                raise ConfigError(f"invalid replica URL: {url}")
            rc = replica_config_from_url(url, f"replica URL {i + 1}")
            db.replicas.append(rc)
        cfg = Config(dbs=[db])
    else:
        cfg = load_config(config_path, no_expand_env)
    if not cfg.dbs:
        raise ConfigError("no databases specified in configuration")
    for d in cfg.dbs:
        if not d.replicas:
            raise ConfigError(f"database {d.path} has no replicas")
    setup_logging(log_level or cfg.logging.level, cfg.logging.type, stderr=True)
    exec_cmd = exec_cmd or cfg.exec
    sys.exit(run(cfg, exec_cmd))


def run(cfg: Config, exec_cmd: str | None) -> int:
    """run starts replication, waits for a signal or the child, and shuts down cleanly."""
    # Handlers first: a signal that arrives while replication starts still gets a clean
    # shutdown with a final sync, not the default immediate death.
    stop = threading.Event()
    signals: list[int] = []
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        signals.append(signum)
        if len(signals) > 1:
            log.error("second signal received, exiting immediately")
            os._exit(1)
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    replicator = Replicator.from_config(cfg.dbs)
    replicator.heartbeat_url = cfg.heartbeat_url
    replicator.heartbeat_interval = cfg.heartbeat_interval
    server = None
    if cfg.addr:
        from litestream_fast.metrics import MetricsServer

        server = MetricsServer(replicator, cfg.addr, max_lag=cfg.max_lag)
        server.start()
    replicator.start()
    for m in replicator.dbs:
        for r in m.replicas:
            log.info("replicating: db=%s replica=%s type=%s location=%s",
                     m.db.path, r.name, r.client.type, r.client.describe())  # fmt: skip

    status = 0
    if exec_cmd and not stop.is_set():
        try:
            import shlex  # only for -exec (~11 ms of start-up with subprocess)
            import subprocess

            child = subprocess.Popen(shlex.split(exec_cmd))
        except OSError as exc:
            replicator.stop(final_sync=True, timeout=SHUTDOWN_TIMEOUT)
            raise ConfigError(f"cannot start -exec command {exec_cmd!r}: {exc.strerror}") from None
        while not stop.is_set():
            if child.poll() is not None:
                log.info("subprocess exited, litestream-fast shutting down")
                break
            stop.wait(0.2)
        status = child.wait()
        status = status if status >= 0 else 128 - status
    else:
        while not stop.wait(0.5):
            pass
        log.info("signal received, litestream-fast shutting down")

    replicator.stop(final_sync=True, timeout=SHUTDOWN_TIMEOUT)
    if server is not None:
        server.stop()
    log.info("litestream-fast shut down")
    return status
