# cython: language_level=3
"""Compiled kernels for SQLite WAL bytes: checksum, header parse, frame scan, CRC-64.

Built as the private module ``litestream_fast._walcore``; ``litestream_fast._walcore_py``
is its pure-Python twin with the same functions, signatures and results, and is the test
oracle. Every kernel takes any buffer (bytes, memoryview slice, read-only mmap) and plain
integers, checks lengths once at entry, runs its loop with the GIL released and returns
integers or tuples built after the loop. End of valid WAL data is a value (a stop code);
malformed input the caller should never pass is an exception from ``errors.py``.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free

from litestream_fast.errors import InvalidWALHeader, MisalignedOffset

# Stop codes of scan_frames: why the scan ended. All mean "end of the valid WAL".
cdef enum:
    C_STOP_EOF = 0                # the buffer ended exactly on a frame boundary
    C_STOP_SHORT_FRAME = 1        # a partial (torn) frame at the end of the buffer
    C_STOP_SALT_MISMATCH = 2      # a frame whose salts differ from the header's (stale or foreign)
    C_STOP_CHECKSUM_MISMATCH = 3  # a frame whose cumulative checksum does not match

STOP_EOF = C_STOP_EOF
STOP_SHORT_FRAME = C_STOP_SHORT_FRAME
STOP_SALT_MISMATCH = C_STOP_SALT_MISMATCH
STOP_CHECKSUM_MISMATCH = C_STOP_CHECKSUM_MISMATCH

cdef enum:
    WAL_HEADER_SIZE = 32
    FRAME_HEADER_SIZE = 24
    WAL_MAGIC_LE = 0x377f0682
    WAL_MAGIC_BE = 0x377f0683
    WAL_VERSION = 3007000


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline void _cksum(const uint8_t* p, Py_ssize_t n, bint big_endian,
                        uint32_t* s0, uint32_t* s1) noexcept nogil:
    # SQLite's walChecksumBytes: two running sums over 8-byte units. n % 8 == 0.
    cdef uint32_t a = s0[0]
    cdef uint32_t b = s1[0]
    cdef Py_ssize_t i
    if big_endian:
        for i in range(0, n, 8):
            a = a + _be32(p + i) + b
            b = b + _be32(p + i + 4) + a
    else:
        for i in range(0, n, 8):
            a = a + _le32(p + i) + b
            b = b + _le32(p + i + 4) + a
    s0[0] = a
    s1[0] = b


cdef inline bint _valid_page_size(uint32_t page_size) noexcept nogil:
    return 512 <= page_size <= 65536 and (page_size & (page_size - 1)) == 0


def wal_checksum(const uint8_t[::1] buf, uint32_t s0, uint32_t s1, bint big_endian):
    """wal_checksum returns SQLite's running WAL checksum (s0, s1) extended over ``buf``.

    ``len(buf)`` must be a multiple of 8. ``big_endian`` is true for magic 0x377f0683.
    """
    cdef Py_ssize_t n = buf.shape[0]
    if n % 8:
        raise ValueError(f"checksum input length {n} is not a multiple of 8")
    cdef uint32_t a = s0, b = s1
    if n:
        with nogil:
            _cksum(&buf[0], n, big_endian, &a, &b)
    return a, b


def parse_wal_header(const uint8_t[::1] buf):
    """parse_wal_header validates a 32-byte WAL header at the start of ``buf``.

    Returns (magic, version, page_size, checkpoint_seq, salt1, salt2, checksum1, checksum2).
    Raises InvalidWALHeader for a short buffer, bad magic or version, a page size that is
    not a power of two in 512..65536, or a header checksum that does not match.
    """
    if buf.shape[0] < WAL_HEADER_SIZE:
        raise InvalidWALHeader(f"wal header too short: {buf.shape[0]} bytes")
    cdef const uint8_t* p = &buf[0]
    cdef uint32_t magic = _be32(p)
    if magic != WAL_MAGIC_LE and magic != WAL_MAGIC_BE:
        raise InvalidWALHeader(f"invalid wal magic: 0x{magic:08x}")
    cdef uint32_t version = _be32(p + 4)
    if version != WAL_VERSION:
        raise InvalidWALHeader(f"unsupported wal version: {version}")
    cdef uint32_t page_size = _be32(p + 8)
    if not _valid_page_size(page_size):
        raise InvalidWALHeader(f"invalid wal page size: {page_size}")
    cdef uint32_t a = 0, b = 0
    _cksum(p, 24, magic == WAL_MAGIC_BE, &a, &b)
    cdef uint32_t c1 = _be32(p + 24), c2 = _be32(p + 28)
    if a != c1 or b != c2:
        raise InvalidWALHeader(
            f"wal header checksum mismatch: stored {c1:08x}{c2:08x}, computed {a:08x}{b:08x}")
    return magic, version, page_size, _be32(p + 12), _be32(p + 16), _be32(p + 20), c1, c2


def scan_frames(const uint8_t[::1] buf, Py_ssize_t offset, uint32_t page_size,
                uint32_t salt1, uint32_t salt2, uint32_t s0, uint32_t s1, bint big_endian):
    """scan_frames walks WAL frames in ``buf`` from ``offset`` and finds the last commit.

    ``buf`` is the whole WAL (or a prefix of it); ``offset`` a frame boundary
    (32 + k*(24+page_size)); (s0, s1) the running checksum after the frame before
    ``offset`` (the header checksum when offset is 32). A frame is valid when its salts
    equal (salt1, salt2) and its stored checksum equals the running one.

    Returns (commit_end, commit_frames, db_size, c0, c1, stop, valid_end):
    commit_end -- end offset of the last valid commit frame (``offset`` if none);
    commit_frames -- frames in [offset, commit_end);
    db_size -- database size in pages after that commit (0 if none);
    (c0, c1) -- running checksum at commit_end;
    stop -- STOP_* code saying why the scan ended;
    valid_end -- end of the last valid frame, committed or not (>= commit_end).
    """
    cdef Py_ssize_t n = buf.shape[0]
    if not _valid_page_size(page_size):
        raise InvalidWALHeader(f"invalid wal page size: {page_size}")
    cdef Py_ssize_t fsize = FRAME_HEADER_SIZE + page_size
    if offset < WAL_HEADER_SIZE or (offset - WAL_HEADER_SIZE) % fsize:
        raise MisalignedOffset(f"offset {offset} is not a frame boundary for page size {page_size}")
    cdef Py_ssize_t pos = offset, commit_end = offset, valid_end = offset
    cdef Py_ssize_t frames = 0, commit_frames = 0
    cdef uint32_t a = s0, b = s1, ca = s0, cb = s1, db_size = 0, commit
    cdef int stop = C_STOP_EOF
    cdef const uint8_t* base
    cdef const uint8_t* f
    if n > 0:
        base = &buf[0]
        with nogil:
            while True:
                if pos >= n:
                    stop = C_STOP_EOF
                    break
                if n - pos < fsize:
                    stop = C_STOP_SHORT_FRAME
                    break
                f = base + pos
                if _be32(f + 8) != salt1 or _be32(f + 12) != salt2:
                    stop = C_STOP_SALT_MISMATCH
                    break
                _cksum(f, 8, big_endian, &a, &b)
                _cksum(f + FRAME_HEADER_SIZE, page_size, big_endian, &a, &b)
                if a != _be32(f + 16) or b != _be32(f + 20):
                    stop = C_STOP_CHECKSUM_MISMATCH
                    break
                pos += fsize
                frames += 1
                valid_end = pos
                commit = _be32(f + 4)
                if commit != 0:
                    commit_end = pos
                    commit_frames = frames
                    db_size = commit
                    ca = a
                    cb = b
    return commit_end, commit_frames, db_size, ca, cb, stop, valid_end


def find_page_frame(const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end,
                    uint32_t page_size, uint32_t pgno):
    """find_page_frame returns the offset of the last frame for page ``pgno`` in [start, end).

    The range must hold whole frames starting at a frame boundary; returns -1 when no frame
    in it carries that page. The engine uses it to check that a frame it already shipped is
    still where it left it, and restore to find the newest copy of a page.
    """
    if not _valid_page_size(page_size):
        raise InvalidWALHeader(f"invalid wal page size: {page_size}")
    cdef Py_ssize_t fsize = FRAME_HEADER_SIZE + page_size
    if start < WAL_HEADER_SIZE or (start - WAL_HEADER_SIZE) % fsize:
        raise MisalignedOffset(f"offset {start} is not a frame boundary for page size {page_size}")
    if end > buf.shape[0]:
        end = buf.shape[0]
    cdef Py_ssize_t last = start + ((end - start) // fsize - 1) * fsize if end > start else start - fsize
    cdef Py_ssize_t found = -1, pos = last
    cdef const uint8_t* base
    if last >= start:
        base = &buf[0]
        with nogil:
            while pos >= start:
                if _be32(base + pos) == pgno:
                    found = pos
                    break
                pos -= fsize
    return found


cdef uint64_t _crc_table[8][256]
cdef bint _crc_ready = False


cdef void _crc_init() noexcept nogil:
    # CRC-64/ISO as Go's hash/crc64 (reflected polynomial 0xD800000000000000), slicing-by-8.
    cdef uint64_t poly = 0xD800000000000000ULL, crc
    cdef int i, j, k
    for i in range(256):
        crc = <uint64_t>i
        for j in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ poly
            else:
                crc >>= 1
        _crc_table[0][i] = crc
    for i in range(256):
        crc = _crc_table[0][i]
        for k in range(1, 8):
            crc = _crc_table[0][crc & 0xFF] ^ (crc >> 8)
            _crc_table[k][i] = crc


def crc64(const uint8_t[::1] buf, uint64_t crc=0):
    """crc64 returns CRC-64/ISO of ``buf`` continued from ``crc`` (Go's crc64.Update).

    crc64(b"123456789") == 0xb90956c775a41001; crc64(b, crc64(a)) == crc64(a + b).
    """
    global _crc_ready
    if not _crc_ready:
        _crc_init()
        _crc_ready = True
    cdef Py_ssize_t n = buf.shape[0], i = 0
    cdef uint64_t c = ~crc
    cdef const uint8_t* p
    if n:
        p = &buf[0]
        with nogil:
            while n - i >= 8:
                c ^= (<uint64_t>p[i] | (<uint64_t>p[i + 1] << 8) | (<uint64_t>p[i + 2] << 16)
                      | (<uint64_t>p[i + 3] << 24) | (<uint64_t>p[i + 4] << 32)
                      | (<uint64_t>p[i + 5] << 40) | (<uint64_t>p[i + 6] << 48)
                      | (<uint64_t>p[i + 7] << 56))
                c = (_crc_table[7][c & 0xFF] ^ _crc_table[6][(c >> 8) & 0xFF]
                     ^ _crc_table[5][(c >> 16) & 0xFF] ^ _crc_table[4][(c >> 24) & 0xFF]
                     ^ _crc_table[3][(c >> 32) & 0xFF] ^ _crc_table[2][(c >> 40) & 0xFF]
                     ^ _crc_table[1][(c >> 48) & 0xFF] ^ _crc_table[0][c >> 56])
                i += 8
            while i < n:
                c = _crc_table[0][(c ^ p[i]) & 0xFF] ^ (c >> 8)
                i += 1
    return ~c


# ---------------------------------------------------------------- LZ4 blocks, XXH32
#
# A restore decodes each 4 MiB block of an LZ4 frame straight into a reused buffer and
# hashes the output in the same GIL-free call (python-lz4 allocates a new object per
# block); snapshots and WAL segments are compressed the same way, into a reused buffer.
# The C sources are vendored under src/vendor/lz4 (BSD 2-Clause), built with a 256 KiB
# match table (LZ4_MEMORY_USAGE=18; liblz4's default is 16 KiB): on 4 MiB blocks of
# SQLite pages it finds more matches, which makes snapshots ~7% smaller at the same speed.

cdef extern from "lz4.h" nogil:
    int LZ4_decompress_safe(const char* src, char* dst, int compressedSize, int dstCapacity)
    int LZ4_compressBound(int inputSize)
    int LZ4_compress_fast_extState_fastReset(void* state, const char* src, char* dst,
                                             int srcSize, int dstCapacity, int acceleration)

# One compression state (the 256 KiB match table) per thread, allocated and initialised
# once and freed when the thread exits. A state per call cost a malloc, a memset of the
# table and, once glibc had trimmed the freed heap, a page fault per 4 KiB of it: at a
# 100 ms sync interval that was a tenth of the replicator's CPU. With a state reused,
# LZ4's fast reset only clears what the previous block dirtied.
cdef extern from *:
    """
    #define LZ4_STATIC_LINKING_ONLY
    #include <pthread.h>
    #include <stdlib.h>
    #include "lz4.h"
    static pthread_key_t lsf_lz4_key;
    static pthread_once_t lsf_lz4_once = PTHREAD_ONCE_INIT;
    static int lsf_lz4_key_ok = 0;
    static void lsf_lz4_make_key(void) {
        lsf_lz4_key_ok = pthread_key_create(&lsf_lz4_key, free) == 0;
    }
    /* The calling thread's compression state, or NULL when out of memory. */
    static void* lsf_lz4_thread_state(void) {
        void* s;
        pthread_once(&lsf_lz4_once, lsf_lz4_make_key);
        if (!lsf_lz4_key_ok) return NULL;
        s = pthread_getspecific(lsf_lz4_key);
        if (s == NULL) {
            s = malloc(LZ4_sizeofState());
            if (s == NULL) return NULL;
            LZ4_initStream(s, LZ4_sizeofState());
            if (pthread_setspecific(lsf_lz4_key, s) != 0) { free(s); return NULL; }
        }
        return s;
    }
    """
    void* lsf_lz4_thread_state() nogil

cdef extern from "xxhash.h" nogil:
    ctypedef struct XXH32_state_t:
        pass
    XXH32_state_t* XXH32_createState()
    int XXH32_freeState(XXH32_state_t* state)
    int XXH32_reset(XXH32_state_t* state, unsigned int seed)
    int XXH32_update(XXH32_state_t* state, const void* input, size_t length)
    unsigned int XXH32_digest(const XXH32_state_t* state)
    unsigned int c_xxh32 "XXH32"(const void* input, size_t length, unsigned int seed)


cdef class XXH32:
    """XXH32 with seed 0, fed incrementally: an LZ4 frame's content checksum."""

    cdef XXH32_state_t* _state

    def __cinit__(self):
        self._state = XXH32_createState()
        if self._state == NULL:
            raise MemoryError()
        XXH32_reset(self._state, 0)

    def __dealloc__(self):
        if self._state != NULL:
            XXH32_freeState(self._state)

    def update(self, const uint8_t[::1] buf):
        cdef Py_ssize_t n = buf.shape[0]
        if n:
            with nogil:
                XXH32_update(self._state, &buf[0], <size_t>n)

    def intdigest(self):
        return XXH32_digest(self._state)


def xxh32(const uint8_t[::1] buf):
    """xxh32 returns the XXH32 (seed 0) of ``buf``: LZ4 header and block checksums."""
    cdef Py_ssize_t n = buf.shape[0]
    cdef unsigned int h
    with nogil:
        h = c_xxh32(&buf[0] if n else NULL, <size_t>n, 0)
    return h


def lz4_decompress_into(const uint8_t[::1] src, uint8_t[::1] dst, XXH32 content=None):
    """lz4_decompress_into decodes one LZ4 block ``src`` into ``dst`` and, if ``content``
    is given, adds the decoded bytes to it. Returns the decoded length, or -1 when the
    block is malformed or does not fit in ``dst`` (the caller names the object)."""
    cdef Py_ssize_t ns = src.shape[0], nd = dst.shape[0]
    cdef int n = -1
    if ns > 0x7E000000 or nd > 0x7E000000:
        raise ValueError("lz4 block too large")
    if ns == 0:
        return -1  # an empty block is the frame's end mark, never a block to decode
    if nd == 0:
        return 0 if ns == 1 and src[0] == 0 else -1
    cdef XXH32_state_t* st = content._state if content is not None else NULL
    with nogil:
        n = LZ4_decompress_safe(<const char*>&src[0], <char*>&dst[0], <int>ns, <int>nd)
        if n > 0 and st != NULL:
            XXH32_update(st, &dst[0], <size_t>n)
    return n if n >= 0 else -1


def lz4_compress_bound(int n):
    """lz4_compress_bound is the largest compressed size of ``n`` input bytes."""
    return LZ4_compressBound(n)


def lz4_compress_block(const uint8_t[::1] src, uint8_t[::1] dst, XXH32 content=None):
    """lz4_compress_block compresses ``src`` into ``dst`` as one independent LZ4 block and,
    if ``content`` is given, adds ``src`` to it. Returns the compressed length, or 0 when
    the block would not be smaller than ``src`` (an LZ4 frame then stores it raw)."""
    cdef Py_ssize_t ns = src.shape[0], nd = dst.shape[0]
    cdef int m = 0
    cdef int cap
    cdef void* state
    if ns > 0x7E000000:
        raise ValueError("lz4 block too large")
    cdef XXH32_state_t* st = content._state if content is not None else NULL
    if ns == 0:
        return 0
    cap = <int>(nd if nd < ns - 1 else ns - 1)  # no room for a result that does not shrink
    state = lsf_lz4_thread_state()
    if state == NULL:
        raise MemoryError()
    with nogil:
        if cap > 0:
            m = LZ4_compress_fast_extState_fastReset(state, <const char*>&src[0],
                                                     <char*>&dst[0], <int>ns, cap, 1)
        if st != NULL:
            XXH32_update(st, &src[0], <size_t>ns)
    return m
