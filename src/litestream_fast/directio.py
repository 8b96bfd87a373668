"""Direct I/O for write-once files: replica objects, a restore's database.

Page cache writes of fresh pages cost about 3 ns a byte of kernel time on some VMs, where
memory that freed pages held goes back to the host and must be faulted in again (writing
704 MiB to a new file: 2.3 s of system time, against 0.12 s with O_DIRECT and 0.08 s to
overwrite cached pages). On any machine they also evict the application's pages for
bytes nobody reads soon, so replica objects always go out with O_DIRECT.

A file that is read back at once (a restored database: SQLite's integrity check, then
the application) is better left in the page cache where filling it is cheap: on a VM
whose memory stays warm (0.26 ns a byte), a 517 MiB restore with its quick check took
0.50-0.56 s buffered against 0.87-0.98 s with O_DIRECT, the check reading every page back
from the disk. Such a writer *probes*: its first ``PROBE_BYTES`` go through the page cache
and are timed (the thread's CPU time in ``write``), and only if they cost more than
``COLD_NS_PER_BYTE`` does the rest go direct.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
import time

#: Bytes staged before a write; an object at least this big goes out with O_DIRECT.
DIRECT_STAGE = 1 << 20
#: O_DIRECT offsets and lengths are multiples of this (the largest logical block size).
DIRECT_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)
#: A probing writer times this many bytes of buffered writes before it decides.
PROBE_BYTES = 16 << 20
#: Buffered writes costing more CPU than this per byte (cold memory) switch to O_DIRECT:
#: warm page cache measured 0.26 ns a byte here, cold 3 ns.
COLD_NS_PER_BYTE = 1.0
_stages = threading.local()


def _free_stages() -> list[mmap.mmap]:
    """This thread's staging buffers that no open writer holds."""
    return _stages.__dict__.setdefault("free", [])


class DirectWriter:
    """DirectWriter writes one file sequentially through a page-aligned staging buffer.

    A file smaller than ``DIRECT_STAGE`` is one ordinary write. A bigger one switches the
    descriptor (opened at offset 0, written only through this) to ``O_DIRECT`` and sends
    whole staging buffers straight to the device, then the unaligned tail through the
    page cache; the caller's fsync covers both and the device's cache. Where O_DIRECT is
    refused (tmpfs, some FUSE and network filesystems: EINVAL) or a write comes back
    short, the rest is written buffered. Buffered reads of the file afterwards are
    coherent (Linux drops cached pages an O_DIRECT write covers). One staging buffer per
    thread, reused by its next writer once this one is closed.

    With ``probe`` set, the first ``probe`` bytes are written buffered and timed, and the
    writer goes direct only if page cache writes proved slow (``COLD_NS_PER_BYTE``); then
    ``probed_ns_per_byte`` holds what was measured.
    """

    def __init__(self, fd: int, probe: int = 0) -> None:
        self.fd = fd
        free = _free_stages()
        self._buf = free.pop() if free else mmap.mmap(-1, DIRECT_STAGE)  # page-aligned
        self._stage = memoryview(self._buf)
        self._fill = 0
        self._direct = False
        self._refused = not _O_DIRECT  # set once buffered: O_DIRECT failed, or the tail
        self.size = 0
        self._probe_left = probe if not self._refused else 0
        self._probe_bytes = 0
        self._probe_ns = 0
        self.probed_ns_per_byte: float | None = None

    def write(self, chunk) -> None:
        mv = memoryview(chunk).cast("B")
        self.size += len(mv)
        while len(mv):
            k = min(len(mv), DIRECT_STAGE - self._fill)
            self._stage[self._fill : self._fill + k] = mv[:k]
            self._fill += k
            mv = mv[k:]
            if self._fill == DIRECT_STAGE:
                if self._probe_left > 0:
                    self._probe_flush()
                    continue
                self._try_direct()
                self._flush(DIRECT_STAGE)

    def close(self) -> None:
        """Write what is staged: the aligned part as it is, the tail buffered."""
        aligned = self._fill - self._fill % DIRECT_ALIGN if self._direct else 0
        if aligned:
            self._flush(aligned)
        if self._fill:
            self._go_buffered()
            self._flush(self._fill)
        self._stage.release()
        _free_stages().append(self._buf)  # for this thread's next writer

    def _probe_flush(self) -> None:
        """Write one whole stage buffered and time it; decide once the probe is done.

        Whole stages keep the file offset aligned for a switch to O_DIRECT."""
        t0 = time.thread_time_ns()
        self._flush(DIRECT_STAGE)
        self._probe_ns += time.thread_time_ns() - t0
        self._probe_bytes += DIRECT_STAGE
        self._probe_left -= DIRECT_STAGE
        if self._probe_left <= 0:
            self.probed_ns_per_byte = self._probe_ns / self._probe_bytes
            if self.probed_ns_per_byte <= COLD_NS_PER_BYTE:
                self._refused = True  # the page cache is cheap here: stay buffered

    def _try_direct(self) -> None:
        if self._direct or self._refused:
            return
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | _O_DIRECT)
        except OSError:
            self._refused = True
            return
        self._direct = True

    def _go_buffered(self) -> None:
        """Through the page cache from here to the end (the tail, or O_DIRECT failed)."""
        self._refused = True
        if self._direct:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
            self._direct = False

    def _flush(self, n: int) -> None:
        """Write the first ``n`` staged bytes and keep the rest at the buffer's start."""
        view = self._stage[:n]
        while len(view):
            try:
                w = os.write(self.fd, view)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._go_buffered()  # the filesystem takes O_DIRECT but not this write
                continue
            if w < len(view) and self._direct:
                self._go_buffered()  # the next offset would not be aligned
            view = view[w:]
        rest = self._fill - n
        if rest:
            self._stage[:rest] = self._stage[n : self._fill]
        self._fill = rest
