"""The compiled backend must actually load unless the Python twin was asked for."""

from __future__ import annotations

import os

import litestream_fast
from litestream_fast import _backend


def test_expected_backend_loaded():
    wants_python = os.environ.get("LITESTREAM_FAST_NO_EXTENSIONS", "") not in ("", "0")
    assert ("python" if wants_python else "cython") == litestream_fast.BACKEND
    assert _backend.IMPORT_ERROR is None


def test_twin_has_same_surface():
    from litestream_fast import _walcore, _walcore_py

    names = ["wal_checksum", "parse_wal_header", "scan_frames", "find_page_frame", "crc64"]
    for name in names:
        assert callable(getattr(_walcore, name)) and callable(getattr(_walcore_py, name))
    for stop in ["STOP_EOF", "STOP_SHORT_FRAME", "STOP_SALT_MISMATCH", "STOP_CHECKSUM_MISMATCH"]:
        assert getattr(_walcore, stop) == getattr(_walcore_py, stop)
