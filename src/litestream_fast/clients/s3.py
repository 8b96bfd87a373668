"""S3 and S3-compatible replica: the v0.3 layout under a key prefix in a bucket.

Keys are ``<prefix>/generations/<gen>/snapshots/<index:08x>.snapshot.lz4`` and
``<prefix>/generations/<gen>/wal/<index:08x>_<offset:08x>.wal.lz4`` (``naming.join``, no
leading slash), exactly as Litestream v0.3.13 writes them, so either tool restores the
other's replica.

Atomicity: an object is written by one PUT, or by a multipart upload that is completed
only once every part is in; any failure aborts the upload, so readers never see a partial
object. Payloads stream through in parts of ``part_size`` (8 MiB) with at most
``concurrency`` parts uploading and one being filled, so memory stays bounded whatever
the object size.

Retries are ours, not botocore's (its standard mode has a retry quota that stops retrying
during a long outage and ignores Retry-After): every request is retried with exponential
backoff and jitter on 5xx, 429/SlowDown and other throttling codes, timeouts and dropped
connections, waiting at least a server's Retry-After. Requests are idempotent — a PUT whose
answer was lost is simply sent again with the same bytes. Readers resume a GET that loses
its connection with a ranged GET from the byte they reached (``If-Match`` the ETag, so
they never splice two versions).

``op_counts`` counts HTTP requests sent per Litestream operation class (GET, PUT, LIST,
DELETE; retries and multipart parts included); ``op_bytes`` counts payload bytes stored
(PUT, once per object) and read (GET). Object times (``created_at``) are S3's
LastModified in listings and the server's Date of the completing response after a write.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import io
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, TypeVar

from litestream_fast import naming
from litestream_fast.errors import ObjectNotFound, ReplicaError
from litestream_fast.pos import Pos, SnapshotInfo, WALSegmentInfo
from litestream_fast.replica_client import Payload, iter_payload

log = logging.getLogger("litestream_fast.s3")

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
MAX_KEYS = 1000  # S3's limit per ListObjects page and per DeleteObjects batch
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 * 1024 * 1024
#: The most one GET body read asks urllib3 for. urllib3 and http.client allocate (and
#: copy) what they are asked for, so a 4 MiB read (one snapshot block) made transient
#: 4 MiB objects in the reading thread's malloc arena; small steps reuse small chunks.
READ_STEP = 256 * 1024

# Operation name -> Litestream's operation class (metrics label).
_OP_CLASS = {
    "GetObject": "GET",
    "HeadObject": "GET",
    "GetBucketLocation": "GET",
    "HeadBucket": "GET",
    "PutObject": "PUT",
    "CreateMultipartUpload": "PUT",
    "UploadPart": "PUT",
    "CompleteMultipartUpload": "PUT",
    "AbortMultipartUpload": "PUT",
    "ListObjectsV2": "LIST",
    "ListObjects": "LIST",
    "DeleteObjects": "DELETE",
    "DeleteObject": "DELETE",
}

# Error codes worth retrying whatever their status (throttling, transient server states).
_RETRY_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
        "RequestThrottled", "RequestThrottledException", "TooManyRequests",
        "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
        "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
        "OperationAborted", "PriorRequestNotComplete",
    }
)  # fmt: skip


class _Cancelled(Exception):
    """A sibling part failed; this part's upload stops retrying."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """_transport_errors are the exceptions of a request that died on the wire."""
    from botocore import exceptions as bx
    from urllib3 import exceptions as ux

    return (
        bx.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, timeouts, …
        bx.HTTPClientError,
        bx.ResponseStreamingError,
        bx.IncompleteReadError,
        bx.ReadTimeoutError,
        bx.ConnectTimeoutError,
        ux.ProtocolError,
        ux.ReadTimeoutError,
        ux.IncompleteRead,
        ConnectionError,
        TimeoutError,
    )


def _not_retryable() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as bx

    return (bx.SSLError, bx.NoCredentialsError, bx.PartialCredentialsError)


def _error_code(exc: BaseException) -> tuple[str, int]:
    resp = getattr(exc, "response", None) or {}
    code = str((resp.get("Error") or {}).get("Code") or "")
    status = int((resp.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return code, status


def _retry_after(exc: BaseException) -> float | None:
    resp = getattr(exc, "response", None) or {}
    headers = (resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _response_time(resp: dict) -> datetime:
    """_response_time is the server's Date of a response (≈ the object's LastModified)."""
    headers = (resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    try:
        return parsedate_to_datetime(headers["date"]).astimezone(timezone.utc)
    except (KeyError, TypeError, ValueError):
        return datetime.now(timezone.utc).replace(microsecond=0)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """_gc_paused holds off the cyclic GC while boto3 is imported and its client built.

    That makes many long-lived objects (service models, event handlers), and each
    collection their allocations trigger walks them all again: creating the client took
    0.162 s of CPU with the GC on and 0.146 s with it paused (medians of 8), on the path
    of every restore and every replicator start. Nothing built here is garbage, so
    nothing is lost by collecting later.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _add_content_md5(params: dict, **_: Any) -> None:
    """DeleteObjects needs an integrity header; many S3-compatible servers want MD5."""
    body = params.get("body")
    headers = params.setdefault("headers", {})
    if isinstance(body, bytes | bytearray) and "Content-MD5" not in headers:
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


class S3ReplicaClient:
    """S3ReplicaClient stores a replica under ``prefix`` in an S3 (or compatible) bucket."""

    type = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint: str | None = None,
        force_path_style: bool = False,
        skip_verify: bool = False,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        url: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = 2,
        max_attempts: int = 10,
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        if not bucket:
            raise ReplicaError("s3 replica: bucket required")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE}")
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self.region = region or None
        self.endpoint = endpoint or None
        self.force_path_style = force_path_style
        self.skip_verify = skip_verify
        self.access_key_id = access_key_id or None
        self.secret_access_key = secret_access_key or None
        self.url = url
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

        self.op_counts: dict[str, int] = {"GET": 0, "PUT": 0, "LIST": 0, "DELETE": 0}
        self.op_bytes: dict[str, int] = {"GET": 0, "PUT": 0}
        self.retry_count = 0
        self._count_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._s3: Any = None
        self._rng = random.Random()

    @classmethod
    def from_config(cls, rc: Any) -> S3ReplicaClient:
        """from_config builds a client from a ReplicaConfig (Litestream's rules).

        Credentials: the config's keys, else ``LITESTREAM_ACCESS_KEY_ID`` /
        ``LITESTREAM_SECRET_ACCESS_KEY`` unless ``AWS_ACCESS_KEY_ID`` is set, else boto3's
        default chain (AWS_* variables, shared files, instance roles). An endpoint implies
        path-style addressing (``force-path-style: false`` cannot turn that off yet: the
        config does not record whether the key was given).
        """
        from litestream_fast.clients.s3_url import ensure_endpoint_scheme

        if not rc.bucket:
            raise ReplicaError("s3 replica: bucket required")
        key_id, secret = rc.access_key_id, rc.secret_access_key
        if not key_id and not secret and "AWS_ACCESS_KEY_ID" not in os.environ:
            # Litestream copies LITESTREAM_* to AWS_* only when those are unset.
            key_id = os.environ.get("LITESTREAM_ACCESS_KEY_ID") or None
            secret = os.environ.get("LITESTREAM_SECRET_ACCESS_KEY") or None
        endpoint = ensure_endpoint_scheme(rc.endpoint) if rc.endpoint else None
        return cls(
            rc.bucket,
            rc.path or "",
            region=rc.region,
            endpoint=endpoint,
            force_path_style=bool(endpoint) if rc.force_path_style is None else rc.force_path_style,
            skip_verify=bool(rc.skip_verify),
            access_key_id=key_id,
            secret_access_key=secret,
            url=rc.url,
        )

    # ----------------------------------------------------------------- plumbing

    def describe(self) -> str:
        if self.url:
            return self.url
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3ReplicaClient({self.describe()!r})"

    def _new_client(self, region: str) -> Any:
        import boto3
        from botocore.config import Config

        opts: dict[str, Any] = dict(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.force_path_style else "auto"},
            retries={"total_max_attempts": 1, "mode": "standard"},  # we retry ourselves
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=max(10, 2 * self.concurrency + 2),
            tcp_keepalive=True,
            # Our requests are built here, not by users: botocore's check of each one
            # against the model was 12% of a segment PUT's CPU (2.5 -> 2.2 ms).
            parameter_validation=False,
            # Plain Content-Length bodies (no aws-chunked CRC trailers): what every
            # S3-compatible server understands.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            config = Config(**opts)
        except TypeError:  # botocore < 1.36 has no checksum options
            opts.pop("request_checksum_calculation")
            opts.pop("response_checksum_validation")
            config = Config(**opts)
        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=region,
        )
        if self.skip_verify:  # asked for explicitly; one warning per request is noise
            import warnings

            from urllib3.exceptions import InsecureRequestWarning

            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        client = session.client(
            "s3", endpoint_url=self.endpoint, verify=not self.skip_verify, config=config
        )
        client.meta.events.register("before-send.s3", self._on_send)
        client.meta.events.register("before-call.s3.DeleteObjects", _add_content_md5)
        return client

    def _client(self) -> Any:
        """_client creates the boto3 client on first use (thread-safe; clients are)."""
        c = self._s3
        if c is not None:
            return c
        with self._client_lock:
            if self._s3 is None:
                region = self.region
                if not region:
                    region = DEFAULT_REGION if self.endpoint else self._find_bucket_region()
                with _gc_paused():
                    self._s3 = self._new_client(region)
            return self._s3

    def _find_bucket_region(self) -> str:
        """_find_bucket_region asks AWS where the bucket lives (no region, no endpoint)."""
        probe = self._new_client(DEFAULT_REGION)
        try:
            out = self._call(
                "GET", f"bucket {self.bucket}", probe.get_bucket_location, Bucket=self.bucket
            )
            loc = out.get("LocationConstraint") or DEFAULT_REGION
            return "eu-west-1" if loc == "EU" else loc
        except ReplicaError as exc:
            # Not the bucket owner: HeadBucket still names the region in a header.
            headers = {}
            try:
                headers = probe.head_bucket(Bucket=self.bucket)["ResponseMetadata"]["HTTPHeaders"]
            except Exception as head_exc:
                resp = getattr(head_exc, "response", None) or {}
                headers = (resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            region = headers.get("x-amz-bucket-region")
            if region:
                return region
            raise ReplicaError(
                f"{self.describe()}: cannot look up the bucket's region (set 'region'): {exc}"
            ) from exc
        finally:
            probe.close()

    def close(self) -> None:
        """close releases pooled connections; the client reconnects if used again."""
        with self._client_lock:
            c, self._s3 = self._s3, None
        if c is not None:
            c.close()

    def _on_send(self, event_name: str = "", **_: Any) -> None:
        op = _OP_CLASS.get(event_name.rsplit(".", 1)[-1])
        if op is not None:
            with self._count_lock:
                self.op_counts[op] += 1
        return None  # a value here would replace the HTTP response

    def _add_bytes(self, op: str, n: int) -> None:
        with self._count_lock:
            self.op_bytes[op] += n

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return self._rng.uniform(cap / 2, cap)

    def _retry_delay(self, exc: BaseException, attempt: int) -> float | None:
        """_retry_delay is how long to wait before retrying after ``exc``, or None to give up."""
        if attempt >= self.max_attempts or isinstance(exc, _not_retryable()):
            return None
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code, status = _error_code(exc)
            if not (status >= 500 or status == 429 or code in _RETRY_CODES):
                return None
            delay = self._backoff(attempt)
            after = _retry_after(exc)
            if after is not None:
                delay = max(delay, min(after, 60.0))
            return delay
        if isinstance(exc, _transport_errors()):
            return self._backoff(attempt)
        return None

    def _call(
        self,
        op: str,
        what: str,
        fn: Callable[..., T],
        /,
        *,
        cancel: threading.Event | None = None,
        **kwargs: Any,
    ) -> T:
        """_call runs one S3 request with retries; errors become ReplicaError/ObjectNotFound.

        Only storage errors are translated; anything else (a bug, an interrupt) propagates.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        storage_errors = (ClientError, BotoCoreError, *_transport_errors())

        attempt = 0
        while True:
            attempt += 1
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            try:
                return fn(**kwargs)
            except storage_errors as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    if isinstance(exc, ClientError):
                        code, status = _error_code(exc)
                        if code in ("NoSuchKey", "NotFound") or (
                            op == "GET" and status == 404 and code != "NoSuchBucket"
                        ):
                            raise ObjectNotFound(what) from None
                        raise ReplicaError(
                            f"s3 {op} {self.bucket}/{what}: {code or status}: {exc}"
                        ) from exc
                    raise ReplicaError(f"s3 {op} {self.bucket}/{what}: {exc}") from exc
                with self._count_lock:
                    self.retry_count += 1
                log.debug(
                    "s3 %s %s failed (%s); retry %d/%d in %.2fs",
                    op, what, exc, attempt, self.max_attempts - 1, delay,
                )  # fmt: skip
                time.sleep(delay)

    # ----------------------------------------------------------------- keys

    def object_key(self, generation: str, index: int, offset: int | None = None) -> str:
        if offset is None:
            return naming.snapshot_path(self.prefix, generation, index)
        return naming.wal_segment_path(self.prefix, generation, index, offset)

    # ----------------------------------------------------------------- listing

    def _pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        """_pages lists ``prefix`` page by page (continuation tokens; each page retried)."""
        s3 = self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": MAX_KEYS}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = self._call("LIST", prefix, s3.list_objects_v2, **kwargs)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def _objects(self, directory: str) -> Iterator[tuple[str, int, datetime]]:
        """_objects yields (name, size, LastModified) of the objects directly in ``directory``."""
        prefix = directory + "/"
        for page in self._pages(prefix, "/"):
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                yield key[len(prefix) :], int(obj.get("Size", 0)), obj["LastModified"]

    def generations(self) -> list[str]:
        prefix = naming.generations_dir(self.prefix) + "/"
        names = set()
        for page in self._pages(prefix, "/"):
            for cp in page.get("CommonPrefixes", ()):
                name = cp["Prefix"][len(prefix) :].rstrip("/")
                if naming.is_generation(name):
                    names.add(name)
        return sorted(names)

    def snapshots(self, generation: str) -> list[SnapshotInfo]:
        out = []
        for name, size, mtime in self._objects(naming.snapshots_dir(self.prefix, generation)):
            index = naming.parse_snapshot_name(name)
            if index is not None:
                out.append(SnapshotInfo(generation, index, size, mtime.astimezone(timezone.utc)))
        out.sort(key=lambda s: s.index)
        return out

    def wal_segments(self, generation: str) -> list[WALSegmentInfo]:
        out = []
        for name, size, mtime in self._objects(naming.wal_dir(self.prefix, generation)):
            parsed = naming.parse_wal_segment_name(name)
            if parsed is not None:
                out.append(
                    WALSegmentInfo(
                        generation, parsed[0], parsed[1], size, mtime.astimezone(timezone.utc)
                    )
                )
        out.sort(key=lambda s: (s.index, s.offset))
        return out

    # ----------------------------------------------------------------- deleting

    def _delete_keys(self, keys: Iterable[str]) -> None:
        """_delete_keys removes keys in DeleteObjects batches of 1000; missing is fine.

        Per-object failures reported in a 200 answer raise ReplicaError naming them.
        """
        s3 = self._client()
        batch: list[str] = []

        def flush() -> None:
            out = self._call(
                "DELETE",
                batch[0] if len(batch) == 1 else f"{len(batch)} objects under {self.prefix or '/'}",
                s3.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = [e for e in out.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise ReplicaError(
                    f"s3 DELETE {self.bucket}/{first.get('Key')}: {first.get('Code')}: "
                    f"{first.get('Message')}{more}"
                )
            batch.clear()

        for key in keys:
            batch.append(key)
            if len(batch) == MAX_KEYS:
                flush()
        if batch:
            flush()

    def delete_generation(self, generation: str) -> None:
        """delete_generation removes every object under the generation's prefix.

        Stores with real directories (SeaweedFS, some gateways) keep listing an emptied
        ``<gen>/`` as a common prefix, so the directory keys (deepest first) follow the
        objects in the same batches; on S3 proper they are no-ops.
        """
        prefix = naming.generation_dir(self.prefix, generation) + "/"
        keys = [obj["Key"] for page in self._pages(prefix) for obj in page.get("Contents", ())]
        dirs = {prefix, prefix + "snapshots/", prefix + "wal/"}
        for key in keys:
            parent = key.rsplit("/", 1)[0]
            while len(parent) >= len(prefix):
                dirs.add(parent + "/")
                parent = parent.rsplit("/", 1)[0]
        self._delete_keys(keys + sorted(dirs, key=lambda d: (-d.count("/"), d)))

    def delete_snapshot(self, generation: str, index: int) -> None:
        self._delete_keys([naming.snapshot_path(self.prefix, generation, index)])

    def delete_wal_segments(self, positions: list[Pos]) -> None:
        self._delete_keys(
            naming.wal_segment_path(self.prefix, p.generation, p.index, p.offset) for p in positions
        )

    # ----------------------------------------------------------------- writing

    def _parts(self, data: Payload, spare: list[bytearray]) -> Iterator[bytearray]:
        """_parts cuts a payload into non-empty parts of exactly ``part_size`` (last: less).

        Each part is a bytearray handed to botocore as is (no copy into bytes). A part
        the caller has uploaded goes back on ``spare`` and is refilled in place, so a
        multipart upload holds ``concurrency`` + 1 parts, allocated once, instead of a
        fresh one per part beside the one being cut. A new part grows as it fills: a small
        object costs its own size, not a part's.
        """
        size = self.part_size
        buf, n = bytearray(), 0
        for chunk in iter_payload(data):
            mv = memoryview(chunk).cast("B")
            i = 0
            while i < len(mv):
                k = min(size - n, len(mv) - i)
                if n == len(buf):
                    buf += mv[i : i + k]
                else:  # a reused part: overwrite in place
                    buf[n : n + k] = mv[i : i + k]
                n += k
                i += k
                if n == size:
                    yield buf
                    buf, n = (spare.pop() if spare else bytearray()), 0
        if n:
            del buf[n:]
            yield buf

    def _put(self, key: str, data: Payload) -> tuple[int, datetime]:
        """_put stores ``data`` at ``key`` atomically; returns (size, server time)."""
        s3 = self._client()
        spare: list[bytearray] = []
        parts = self._parts(data, spare)
        head = list(itertools.islice(parts, 2))
        if len(head) < 2:
            body = head[0] if head else b""
            resp = self._call("PUT", key, s3.put_object, Bucket=self.bucket, Key=key, Body=body)
            self._add_bytes("PUT", len(body))
            return len(body), _response_time(resp)
        return self._multipart(s3, key, head, parts, spare)

    def _multipart(
        self,
        s3: Any,
        key: str,
        head: list[bytearray],
        rest: Iterator[bytearray],
        spare: list[bytearray],
    ) -> tuple[int, datetime]:
        """_multipart uploads ``head`` + ``rest`` as parts; each part, once uploaded, goes
        on ``spare`` for ``rest`` to refill."""
        upload_id = self._call("PUT", key, s3.create_multipart_upload, Bucket=self.bucket, Key=key)[
            "UploadId"
        ]
        cancel = threading.Event()
        etags: dict[int, str] = {}
        total = 0
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part") as pool:
                pending: set[Future] = set()
                try:
                    for number, body in enumerate(_drain(head, rest), 1):
                        while len(pending) >= self.concurrency:
                            done, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for f in done:
                                n, etag = f.result()
                                etags[n] = etag
                        total += len(body)
                        pending.add(
                            pool.submit(
                                self._upload_part, s3, key, upload_id, number, body, cancel, spare
                            )
                        )
                        del body
                    for f in wait(pending).done:
                        n, etag = f.result()
                        etags[n] = etag
                except BaseException:
                    cancel.set()
                    raise
            resp = self._complete(s3, key, upload_id, etags)
        except BaseException as exc:
            cancel.set()
            self._abort(s3, key, upload_id)
            if isinstance(exc, _Cancelled):
                raise ReplicaError(f"s3 PUT {self.bucket}/{key}: upload cancelled") from exc
            raise
        self._add_bytes("PUT", total)
        return total, _response_time(resp)

    def _upload_part(
        self,
        s3: Any,
        key: str,
        upload_id: str,
        number: int,
        body: bytearray,
        cancel: threading.Event,
        spare: list[bytearray],
    ) -> tuple[int, str]:
        resp = self._call(
            "PUT", f"{key} (part {number})", s3.upload_part, cancel=cancel,
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
        )  # fmt: skip
        if len(body) == self.part_size:
            spare.append(body)  # done with (list.append is atomic); refilled by _parts
        return number, resp["ETag"]

    def _complete(self, s3: Any, key: str, upload_id: str, etags: dict[int, str]) -> dict:
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        tries = 0

        def complete() -> dict:
            nonlocal tries
            tries += 1
            try:
                return s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except Exception as exc:
                # A retried Complete whose first answer was lost: the upload is gone because
                # it completed. Accept it if the object is there with our part count.
                if tries > 1 and _error_code(exc)[0] == "NoSuchUpload":
                    head = s3.head_object(Bucket=self.bucket, Key=key)
                    if str(head.get("ETag", "")).strip('"').endswith(f"-{len(parts)}"):
                        return head
                raise

        return self._call("PUT", key, complete)

    def _abort(self, s3: Any, key: str, upload_id: str) -> None:
        try:
            self._call(
                "PUT",
                key,
                s3.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except ReplicaError as exc:  # invisible to readers; a lifecycle rule reaps it
            log.warning("s3: cannot abort multipart upload of %s: %s", key, exc)

    def write_snapshot(self, generation: str, index: int, data: Payload) -> SnapshotInfo:
        size, created = self._put(naming.snapshot_path(self.prefix, generation, index), data)
        return SnapshotInfo(generation, index, size, created)

    def write_wal_segment(self, pos: Pos, data: Payload) -> WALSegmentInfo:
        key = naming.wal_segment_path(self.prefix, pos.generation, pos.index, pos.offset)
        size, created = self._put(key, data)
        return WALSegmentInfo(pos.generation, pos.index, pos.offset, size, created)

    # ----------------------------------------------------------------- reading

    def _open(self, key: str) -> BinaryIO:
        raw = _ResumableReader(self, key)
        return io.BufferedReader(raw, buffer_size=256 * 1024)  # type: ignore[return-value]

    def snapshot_reader(self, generation: str, index: int) -> BinaryIO:
        return self._open(naming.snapshot_path(self.prefix, generation, index))

    def wal_segment_reader(self, pos: Pos) -> BinaryIO:
        return self._open(
            naming.wal_segment_path(self.prefix, pos.generation, pos.index, pos.offset)
        )


def _drain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """_drain yields ``head``'s items (dropping its references) and then ``rest``."""
    while head:
        yield head.pop(0)
    yield from rest


class _ResumableReader(io.RawIOBase):
    """_ResumableReader streams one object; a dropped connection resumes with a ranged GET.

    The object is opened (and ObjectNotFound raised) at construction. Each resume asks for
    ``bytes=<pos>-`` with ``If-Match: <etag>``; it gives up after ``max_attempts``
    consecutive failures without progress.
    """

    def __init__(self, client: S3ReplicaClient, key: str) -> None:
        super().__init__()
        self._c = client
        self._key = key
        self._pos = 0
        self._etag: str | None = None
        self._size: int | None = None
        self._body: Any = None
        self._get(first=True)

    def _get(self, first: bool = False) -> None:
        c = self._c
        kwargs: dict[str, Any] = {"Bucket": c.bucket, "Key": self._key}
        if not first:
            kwargs["Range"] = f"bytes={self._pos}-"
            if self._etag:
                kwargs["IfMatch"] = self._etag
        resp = c._call("GET", self._key, c._client().get_object, **kwargs)
        body = resp["Body"]
        if first:
            self._etag = resp.get("ETag")
            self._size = resp.get("ContentLength")
        elif not resp.get("ContentRange") and self._pos:
            # The server ignored the range: skip what we already have.
            skip = self._pos
            while skip:
                got = body.read(min(skip, 1 << 20))
                if not got:
                    raise ReplicaError(
                        f"s3 GET {c.bucket}/{self._key}: object shrank while reading"
                    )
                skip -= len(got)
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = len(b)
        if want == 0 or self.closed:
            return 0
        if self._size is not None and self._pos >= self._size:
            return 0
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._get()
                data = self._body.read(min(want, READ_STEP))
            except ReplicaError:
                raise
            except Exception as exc:
                failures += 1
                if failures >= self._c.max_attempts or not isinstance(exc, _transport_errors()):
                    raise ReplicaError(
                        f"s3 GET {self._c.bucket}/{self._key} at byte {self._pos}: {exc}"
                    ) from exc
                self._drop_body()
                with self._c._count_lock:
                    self._c.retry_count += 1
                log.debug("s3 GET %s dropped at byte %d (%s); resuming", self._key, self._pos, exc)
                time.sleep(self._c._backoff(failures))
                continue
            n = len(data)
            if n == 0:
                if self._size is not None and self._pos < self._size:
                    # Early EOF without an error: resume like a drop.
                    failures += 1
                    if failures >= self._c.max_attempts:
                        raise ReplicaError(
                            f"s3 GET {self._c.bucket}/{self._key}: body ended at byte {self._pos} of {self._size}"
                        )
                    self._drop_body()
                    continue
                return 0
            b[:n] = data
            self._pos += n
            self._c._add_bytes("GET", n)
            return n

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:
                pass

    def close(self) -> None:
        self._drop_body()
        super().close()
