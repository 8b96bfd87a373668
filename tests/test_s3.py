"""The S3 client beyond the shared conformance suite: URL/host parsing, configuration,
retries and resumed reads through a fault-injecting proxy, and DeleteObjects batching."""

from __future__ import annotations

import hashlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from faultproxy import FaultProxy, Response, s3_error
from s3server import ACCESS_KEY, SECRET_KEY, Bucket, make_client

from litestream_fast.clients.s3 import S3ReplicaClient
from litestream_fast.clients.s3_url import ensure_endpoint_scheme, parse_s3_url
from litestream_fast.config import build_client, parse_config, replica_config_from_url
from litestream_fast.errors import ConfigError, ObjectNotFound, ReplicaError
from litestream_fast.pos import Pos

GEN = "0123456789abcdef"
MiB = 1024 * 1024

# ------------------------------------------------------------------ URL parsing

URLS = [
    # url, bucket, prefix, region, endpoint, force_path_style
    ("s3://mybkt/db", "mybkt", "db", None, None, False),
    ("s3://mybkt", "mybkt", "", None, None, False),
    ("s3://mybkt/", "mybkt", "", None, None, False),
    ("s3://mybkt/a/b/", "mybkt", "a/b", None, None, False),
    ("s3://mybkt//a//./b", "mybkt", "a/b", None, None, False),
    ("s3://my.dotted.bucket/x", "my.dotted.bucket", "x", None, None, False),
    ("s3://mybkt:9000/x", "mybkt", "x", None, None, False),  # AWS host: port dropped
    ("s3://mybkt.localhost/x", "mybkt", "x", "us-east-1", "http://localhost", True),
    ("s3://mybkt.localhost:9000/x", "mybkt", "x", "us-east-1", "http://localhost:9000", True),
    (
        "s3://mybkt.s3.us-west-002.backblazeb2.com/x",
        "mybkt", "x", "us-west-002", "https://s3.us-west-002.backblazeb2.com", True,
    ),
    ("s3://mybkt.s3.filebase.com/x", "mybkt", "x", None, "https://s3.filebase.com", True),
    (
        "s3://mybkt.nyc3.digitaloceanspaces.com/x",
        "mybkt", "x", "nyc3", "https://nyc3.digitaloceanspaces.com", True,
    ),
    ("s3://mybkt.s3.fr-par.scw.cloud/x", "mybkt", "x", "fr-par", "https://s3.fr-par.scw.cloud", True),
    (
        "s3://mybkt.us-east-1.linodeobjects.com/x",
        "mybkt", "x", "us-east-1", "https://us-east-1.linodeobjects.com", True,
    ),
    (
        "s3://a.b.nyc3.digitaloceanspaces.com/x",  # the bucket may contain dots
        "a.b", "x", "nyc3", "https://nyc3.digitaloceanspaces.com", True,
    ),
    (
        "s3://mybkt/db?endpoint=https://acct.r2.cloudflarestorage.com&region=auto",
        "mybkt", "db", "auto", "https://acct.r2.cloudflarestorage.com", True,
    ),
    ("s3://mybkt/db?endpoint=127.0.0.1:9000", "mybkt", "db", None, "http://127.0.0.1:9000", True),
    ("s3://mybkt/db?endpoint=minio:9000", "mybkt", "db", None, "https://minio:9000", True),
    ("s3://mybkt/db?endpoint=localhost:9000", "mybkt", "db", None, "http://localhost:9000", True),
    (
        "s3://mybkt/db?endpoint=https://s3.example.com&forcePathStyle=false",
        "mybkt", "db", None, "https://s3.example.com", False,
    ),
    ("s3://mybkt/db?forcePathStyle=true&region=eu-west-1", "mybkt", "db", "eu-west-1", None, True),
    ("s3://mybkt.localhost:9000/db?region=us-west-2", "mybkt", "db", "us-west-2", "http://localhost:9000", True),
]  # fmt: skip


@pytest.mark.parametrize(("url", "bucket", "prefix", "region", "endpoint", "fps"), URLS)
def test_parse_s3_url(url, bucket, prefix, region, endpoint, fps):
    rc = parse_s3_url(url)
    assert (rc.type, rc.url) == ("s3", url)
    assert (rc.bucket, rc.path, rc.region, rc.endpoint, rc.force_path_style) == (
        bucket, prefix, region, endpoint, fps,
    )  # fmt: skip
    assert replica_config_from_url(url) == rc


def test_parse_s3_url_skip_verify_and_errors(caplog):
    assert parse_s3_url("s3://b/p?skipVerify=true").skip_verify is True
    assert parse_s3_url("s3://b/p").skip_verify is False
    for bad in ("s3:///prefix", "s3://localhost/x", "s3://b/p?skipVerify=maybe", "s3://b:xx/p"):
        with pytest.raises(ConfigError) as e:
            parse_s3_url(bad, "dbs[0].replicas[0].url")
        assert "dbs[0].replicas[0].url" in str(e.value)
    with caplog.at_level("WARNING"):
        assert parse_s3_url("s3://b/p?colour=blue").bucket == "b"
    assert "colour" in caplog.text


def test_ensure_endpoint_scheme():
    assert ensure_endpoint_scheme("http://x:1") == "http://x:1"
    assert ensure_endpoint_scheme("https://x") == "https://x"
    assert ensure_endpoint_scheme("10.1.2.3:9000") == "http://10.1.2.3:9000"
    assert ensure_endpoint_scheme("minio.local") == "http://minio.local"
    assert ensure_endpoint_scheme("[::1]:9000") == "http://[::1]:9000"
    assert ensure_endpoint_scheme("s3.example.com") == "https://s3.example.com"


def test_config_builds_s3_client(monkeypatch):
    monkeypatch.delenv("LITESTREAM_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("LITESTREAM_SECRET_ACCESS_KEY", raising=False)
    cfg = parse_config(
        """
access-key-id: GLOBALKEY
secret-access-key: GLOBALSECRET
dbs:
  - path: /data/app.db
    replicas:
      - url: s3://bkt.localhost:9000/app
      - name: other
        type: s3
        bucket: bkt2
        path: /backups/app/
        endpoint: minio.local:9000
        region: eu-central-1
        access-key-id: K
        secret-access-key: S
        skip-verify: true
"""
    )
    a, b = (build_client(r) for r in cfg.dbs[0].replicas)
    assert isinstance(a, S3ReplicaClient) and isinstance(b, S3ReplicaClient)
    assert (a.bucket, a.prefix, a.endpoint, a.region, a.force_path_style) == (
        "bkt", "app", "http://localhost:9000", "us-east-1", True,
    )  # fmt: skip
    assert (a.access_key_id, a.secret_access_key) == ("GLOBALKEY", "GLOBALSECRET")
    assert a.describe() == "s3://bkt.localhost:9000/app"
    assert (b.bucket, b.prefix, b.endpoint, b.region, b.force_path_style, b.skip_verify) == (
        "bkt2", "backups/app", "http://minio.local:9000", "eu-central-1", True, True,
    )  # fmt: skip
    assert (b.access_key_id, b.secret_access_key) == ("K", "S")
    assert b.describe() == "s3://bkt2/backups/app"
    assert b.object_key(GEN, 1) == f"backups/app/generations/{GEN}/snapshots/00000001.snapshot.lz4"
    assert a._s3 is None  # no connection until first use


def test_credentials_from_litestream_env(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("LITESTREAM_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("LITESTREAM_SECRET_ACCESS_KEY", "ENVSECRET")
    c = build_client(replica_config_from_url("s3://b/p?endpoint=http://127.0.0.1:1"))
    assert (c.access_key_id, c.secret_access_key) == ("ENVKEY", "ENVSECRET")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AWSKEY")  # AWS_* wins, through boto3's chain
    c = build_client(replica_config_from_url("s3://b/p?endpoint=http://127.0.0.1:1"))
    assert (c.access_key_id, c.secret_access_key) == (None, None)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("LITESTREAM_ACCESS_KEY_ID")
    monkeypatch.delenv("LITESTREAM_SECRET_ACCESS_KEY")
    c = build_client(replica_config_from_url("s3://b/p?endpoint=http://127.0.0.1:1"))
    assert (c.access_key_id, c.secret_access_key) == (None, None)  # boto3's default chain


# ------------------------------------------------------------------ real server


def _chunks(n: int, size: int = MiB, seed: int = 0):
    for i in range(n):
        yield random.Random(seed * 1000 + i).randbytes(size)


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _read_digest(f, chunk: int = 256 * 1024) -> str:
    h = hashlib.sha256()
    with f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def test_credentials_from_env_reach_server(s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY)
    url = f"s3://{s3_bucket.name}/{s3_bucket.prefix}env?endpoint={s3_bucket.endpoint}"
    c = build_client(replica_config_from_url(url))
    c.write_snapshot(GEN, 0, b"hi")
    assert [s.index for s in c.snapshots(GEN)] == [0]


def test_unreachable_server(s3_server):
    c = make_client(Bucket(s3_server, "bkt"), "http://127.0.0.1:1", max_attempts=2)
    with pytest.raises(ReplicaError) as e:
        c.generations()
    assert "127.0.0.1:1" in str(e.value)
    assert c.retry_count == 1


def test_bucket_region_lookup(s3_bucket):
    c = make_client(s3_bucket)
    c.region = None
    assert c._find_bucket_region() == "us-east-1"  # GetBucketLocation: empty means us-east-1


def test_bad_credentials_fail_without_retrying(s3_bucket):
    c = make_client(s3_bucket)
    c.secret_access_key = "wrong"
    with pytest.raises(ReplicaError) as e:
        c.write_snapshot(GEN, 0, b"x")
    assert "SignatureDoesNotMatch" in str(e.value) or "AccessDenied" in str(e.value)
    assert c.retry_count == 0 and c.op_counts["PUT"] == 1


def test_missing_bucket_is_not_object_not_found(s3_server):
    c = make_client(Bucket(s3_server, "no-such-bucket-here"))
    with pytest.raises(ReplicaError) as e:
        c.snapshot_reader(GEN, 0)
    assert not isinstance(e.value, ObjectNotFound)


def test_writes_survive_server_errors(s3_bucket):
    """30% of requests answer 500 or 503 SlowDown: every write still lands, exactly."""
    with FaultProxy(s3_bucket.server.s3_port, seed=7, error_rate=0.3, retry_after=0.01) as proxy:
        c = make_client(s3_bucket, proxy.endpoint)
        payloads = {
            Pos(GEN, 0, i * 4152): random.Random(i).randbytes(100 + i * 37) for i in range(30)
        }
        for pos, data in payloads.items():
            c.write_wal_segment(pos, [data[:50], data[50:]])
        c.write_snapshot(GEN, 0, _chunks(20, seed=1))  # multipart: 3 parts
        assert [s.pos for s in c.wal_segments(GEN)] == sorted(payloads)
        proxy.configure(error_rate=0.0)
        for pos, data in payloads.items():
            assert c.wal_segment_reader(pos).read() == data
        assert _read_digest(c.snapshot_reader(GEN, 0)) == _digest(_chunks(20, seed=1))
    assert proxy.stats["error"] > 0 and proxy.stats["slowdown"] > 0
    assert c.retry_count == proxy.stats["faults"]
    assert s3_bucket.uploads() == []


def test_multipart_refills_uploaded_parts(s3_bucket):
    """A long multipart upload refills parts once uploaded: it holds at most concurrency + 1
    part buffers, and the object is still exact, with chunks straddling part boundaries
    and some parts retried through server errors."""
    with FaultProxy(s3_bucket.server.s3_port, seed=11, error_rate=0.2, retry_after=0.01) as proxy:
        c = make_client(s3_bucket, proxy.endpoint, part_size=5 * MiB, concurrency=2)
        bodies: list[bytearray] = []  # kept alive, so ids are unique
        sizes: list[int] = []
        upload_part = c._upload_part

        def recording(s3, key, upload_id, number, body, *rest):
            bodies.append(body)
            sizes.append(len(body))
            return upload_part(s3, key, upload_id, number, body, *rest)

        c._upload_part = recording
        chunks = list(_chunks(45, size=777_777, seed=4))  # 33.4 MiB: 7 parts
        c.write_snapshot(GEN, 2, iter(chunks))
    assert proxy.stats["error"] > 0
    assert len(bodies) == 7
    assert len({id(b) for b in bodies}) <= 3
    assert sorted(sizes) == sorted([5 * MiB] * 6 + [sum(map(len, chunks)) - 30 * MiB])
    assert _read_digest(make_client(s3_bucket).snapshot_reader(GEN, 2)) == _digest(chunks)


def test_writes_survive_dropped_connections(s3_bucket):
    """PUT bodies cut mid-way, and PUTs whose answer is lost (done but ambiguous)."""
    port = s3_bucket.server.s3_port
    with FaultProxy(
        port, seed=3, drop_request_rate=0.3, drop_response_rate=0.2, methods=("PUT", "POST")
    ) as proxy:
        c = make_client(s3_bucket, proxy.endpoint)
        payloads = {Pos(GEN, 1, i): random.Random(i).randbytes(5000) for i in range(20)}
        for pos, data in payloads.items():
            c.write_wal_segment(pos, data)
        c.write_snapshot(GEN, 1, _chunks(17, seed=2))
    assert proxy.stats["drop_request"] > 0 and proxy.stats["drop_response"] > 0
    c = make_client(s3_bucket)
    for pos, data in payloads.items():
        assert c.wal_segment_reader(pos).read() == data
    assert _read_digest(c.snapshot_reader(GEN, 1)) == _digest(_chunks(17, seed=2))


def test_ambiguous_complete_multipart(s3_bucket):
    """CompleteMultipartUpload succeeds but its answer is lost; the retry sees NoSuchUpload
    (as on AWS) and the client accepts the object after checking it is there, whole."""
    port = s3_bucket.server.s3_port
    completes = []

    def is_complete(method: str, target: str) -> bool:
        return method == "POST" and "uploadId=" in target

    def second_complete(req) -> Response | None:
        if not is_complete(req.method, req.target):
            return None
        completes.append(req.target)
        if len(completes) == 1:
            return None  # forwarded; its answer is cut by the fault below
        return s3_error(404, "NoSuchUpload", "The specified upload does not exist.")

    with FaultProxy(
        port, drop_response_rate=1.0, match=is_complete, max_faults=1, intercept=second_complete
    ) as proxy:
        c = make_client(s3_bucket, proxy.endpoint)
        info = c.write_snapshot(GEN, 4, _chunks(9, seed=4))
    assert proxy.stats["drop_response"] == 1 and len(completes) == 2
    assert c.op_counts["GET"] == 1  # the HeadObject that confirmed the completed upload
    assert info.size == 9 * MiB
    direct = make_client(s3_bucket)
    assert _read_digest(direct.snapshot_reader(GEN, 4)) == _digest(_chunks(9, seed=4))


def test_retry_after_is_honoured(s3_bucket):
    with FaultProxy(
        s3_bucket.server.s3_port, error_rate=1.0, slowdown_share=1.0, retry_after=0.6, max_faults=1
    ) as proxy:
        c = make_client(s3_bucket, proxy.endpoint, backoff_base=0.001, backoff_max=0.001)
        t = time.monotonic()
        c.write_snapshot(GEN, 0, b"x")
        assert time.monotonic() - t >= 0.55
    assert proxy.stats["slowdown"] == 1 and c.retry_count == 1


def test_retries_are_bounded(s3_bucket):
    with FaultProxy(s3_bucket.server.s3_port, error_rate=1.0, slowdown_share=0.0) as proxy:
        c = make_client(s3_bucket, proxy.endpoint, max_attempts=4)
        with pytest.raises(ReplicaError) as e:
            c.write_snapshot(GEN, 0, b"x")
        assert "InternalError" in str(e.value)
        with pytest.raises(ReplicaError):
            c.snapshots(GEN)
    assert proxy.stats["requests"] == 8 and c.op_counts["PUT"] == 4 and c.op_counts["LIST"] == 4


def test_reads_resume_after_dropped_connections(s3_bucket):
    """GET bodies cut mid-way resume with ranged GETs and return the exact bytes."""
    direct = make_client(s3_bucket)
    direct.write_snapshot(GEN, 0, _chunks(3, seed=5))  # one 3 MiB object
    direct.write_wal_segment(Pos(GEN, 0, 0), b"tiny")
    want = _digest(_chunks(3, seed=5))
    with FaultProxy(
        s3_bucket.server.s3_port,
        seed=11,
        drop_response_rate=0.6,
        methods=("GET",),
        min_drop_body=1,
        max_faults=6,
    ) as proxy:
        c = make_client(s3_bucket, proxy.endpoint)
        assert _read_digest(c.snapshot_reader(GEN, 0), chunk=64 * 1024) == want
        assert c.wal_segment_reader(Pos(GEN, 0, 0)).read() == b"tiny"
    assert proxy.stats["drop_response"] >= 3
    assert c.op_counts["GET"] > 2
    assert c.op_bytes["GET"] == 3 * MiB + 4  # resumed reads fetch each byte once


def test_reads_give_up_eventually(s3_bucket):
    direct = make_client(s3_bucket)
    direct.write_snapshot(GEN, 0, b"z" * 100_000)
    port = s3_bucket.server.s3_port
    with FaultProxy(port, drop_response_rate=1.0, methods=("GET",), min_drop_body=1) as proxy:
        c = make_client(s3_bucket, proxy.endpoint, max_attempts=3)
        with pytest.raises(ReplicaError) as e:
            c.snapshot_reader(GEN, 0).read()
    assert "at byte" in str(e.value)
    assert proxy.stats["drop_response"] >= 3  # resumes that make progress do not count


def test_delete_objects_in_batches(s3_bucket):
    """1005 segments: LIST pages of 1000 and DeleteObjects batches of 1000."""
    c = make_client(s3_bucket, None, prefix="big")
    positions = [Pos(GEN, i // 1000, i % 1000) for i in range(1005)]
    raw = s3_bucket.client(max_pool_connections=8)

    def put(p: Pos) -> None:
        key = c.object_key(p.generation, p.index, p.offset)
        raw.put_object(Bucket=s3_bucket.name, Key=key, Body=b"w")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, positions))
    assert [s.pos for s in c.wal_segments(GEN)] == positions
    assert c.op_counts["LIST"] == 2
    c.delete_wal_segments(positions[2:])
    assert c.op_counts["DELETE"] == 2
    assert [s.pos for s in c.wal_segments(GEN)] == positions[:2]
    c.delete_generation(GEN)
    assert s3_bucket.keys("big/") == []
    assert c.generations() == []


def test_delete_errors_are_surfaced(s3_bucket):
    """Per-object errors inside a 200 DeleteObjects answer become a ReplicaError."""
    c0 = make_client(s3_bucket)
    c0.write_wal_segment(Pos(GEN, 0, 0), b"w")
    key = c0.object_key(GEN, 0, 0)

    def deny(req) -> Response | None:
        if req.method == "POST" and req.target.split("?", 1)[-1].startswith("delete"):
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><DeleteResult>'
                f"<Error><Key>{key}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                "</DeleteResult>"
            ).encode()
            return Response(200, "OK", [("Content-Type", "application/xml")], body)
        return None

    with FaultProxy(s3_bucket.server.s3_port, intercept=deny) as proxy:
        c = make_client(s3_bucket, proxy.endpoint)
        with pytest.raises(ReplicaError) as e:
            c.delete_wal_segments([Pos(GEN, 0, 0)])
    assert key in str(e.value) and "AccessDenied" in str(e.value)
    assert proxy.stats["intercepted"] == 1


def test_latency_and_concurrent_use(s3_bucket):
    """One client shared by threads, through a slow link, with parallel part uploads."""
    with FaultProxy(s3_bucket.server.s3_port, seed=5, latency=(0.0, 0.02)) as proxy:
        c = make_client(s3_bucket, proxy.endpoint)

        def work(i: int) -> None:
            c.write_wal_segment(Pos(GEN, 2, i), random.Random(i).randbytes(1000))
            assert c.wal_segment_reader(Pos(GEN, 2, i)).read() == random.Random(i).randbytes(1000)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(24)))
        c.write_snapshot(GEN, 9, _chunks(24, seed=9))
        assert len(c.wal_segments(GEN)) == 24
        assert c.op_counts["PUT"] == 24 + 1 + 3 + 1
        assert _read_digest(c.snapshot_reader(GEN, 9)) == _digest(_chunks(24, seed=9))
