"""Scan + checksum verification, CRC-64 and LZ4 throughput: compiled core vs its Python twin
vs the memcpy floor. Run: python -m pytest bench/bench_walcore.py --benchmark-only

A 256 MiB WAL for the compiled core and the floor; the Python twin on 8 MiB (it is the
oracle, not a fast path). MB/s = bytes / mean time, printed in extra_info."""

from __future__ import annotations

import os

import lz4.frame
import pytest
from test_wal_kernels import build

from litestream_fast import _walcore, _walcore_py, compression

MiB = 1 << 20


def _wal(page_size: int, mib: int) -> bytes:
    frames = mib * MiB // (24 + page_size)
    return build(page_size, [10] * (frames // 10))


@pytest.fixture(scope="module", params=[4096, 65536], ids=["4k", "64k"])
def big_wal(request):
    return request.param, _wal(request.param, 256)


def _scan(mod, buf):
    h = mod.parse_wal_header(buf)
    return mod.scan_frames(buf, 32, h[2], h[4], h[5], h[6], h[7], False)


def _mbps(benchmark, nbytes):
    benchmark.extra_info["MB/s"] = round(nbytes / benchmark.stats.stats.mean / 1e6)


def test_scan_cython(benchmark, big_wal):
    _ps, buf = big_wal
    r = benchmark(_scan, _walcore, buf)
    assert r[0] == len(buf)
    _mbps(benchmark, len(buf))


def test_scan_python(benchmark):
    buf = _wal(4096, 8)
    r = benchmark.pedantic(_scan, args=(_walcore_py, buf), rounds=3)
    assert r[0] == len(buf)
    _mbps(benchmark, len(buf))


def test_memcpy_floor(benchmark, big_wal):
    _ps, buf = big_wal
    benchmark(lambda: bytes(memoryview(buf)))
    _mbps(benchmark, len(buf))


def test_crc64_cython(benchmark, big_wal):
    _ps, buf = big_wal
    benchmark(_walcore.crc64, buf)
    _mbps(benchmark, len(buf))


@pytest.fixture(scope="module", params=["compressible", "random"])
def pages(request):
    if request.param == "random":
        return os.urandom(64 * MiB)
    page = (b"row data %08d " * 200)[:4000] + bytes(96)
    return page * (64 * MiB // len(page))


def test_lz4_compress(benchmark, pages):
    out = benchmark(
        lambda: b"".join(
            bytes(c)
            for c in compression.compress_chunks(
                memoryview(pages)[i : i + 4 * MiB] for i in range(0, len(pages), 4 * MiB)
            )
        )
    )
    benchmark.extra_info["ratio"] = round(len(out) / len(pages), 3)
    _mbps(benchmark, len(pages))


def test_lz4_compress_python_lz4(benchmark, pages):
    """The same frame through python-lz4 (what compress_chunks used before the kernel)."""
    out = benchmark(
        lz4.frame.compress, pages, block_size=lz4.frame.BLOCKSIZE_MAX4MB, block_linked=False,
        content_checksum=True,
    )  # fmt: skip
    benchmark.extra_info["ratio"] = round(len(out) / len(pages), 3)
    _mbps(benchmark, len(pages))


def test_lz4_decompress(benchmark, pages):
    z = lz4.frame.compress(
        pages, block_size=lz4.frame.BLOCKSIZE_MAX4MB, block_linked=False, content_checksum=True
    )
    out = benchmark(lz4.frame.decompress, z)
    assert len(out) == len(pages)
    _mbps(benchmark, len(pages))
