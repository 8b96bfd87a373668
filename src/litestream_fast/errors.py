"""Every exception litestream-fast raises, in one place.

One root, ``LitestreamError``; domain errors also subclass the matching builtin so callers
that only know Python's hierarchy still catch them. Both WAL backends (the Cython
``_walcore`` and the pure-Python ``_walcore_py``) raise these same types. The CLI turns any
``LitestreamError`` into a one-line message and exit status 1.
"""

from __future__ import annotations


class LitestreamError(Exception):
    """Root of every error litestream-fast raises on purpose."""


class WALError(LitestreamError):
    """A problem with a SQLite write-ahead log."""


class InvalidWALHeader(WALError, ValueError):
    """A WAL header with a bad magic, version, page size or header checksum."""


class MisalignedOffset(WALError, ValueError):
    """A scan was asked to start at an offset that is not a frame boundary."""


class ConfigError(LitestreamError, ValueError):
    """A configuration file, key or value that cannot be used; the message names the key."""


class ReplicaError(LitestreamError):
    """A replica (storage backend) failed or holds something unusable."""


class CorruptObject(ReplicaError):
    """A replica object that fails decompression, checksum or format checks.

    ``key`` names the object so an operator can find and inspect it.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"corrupt replica object {key}: {reason}")
        self.key = key
        self.reason = reason


class ReplicaDiverged(ReplicaError):
    """A replica holds WAL this database's shadow WAL does not: after a machine crash lost
    the shadow's unsynced tail, possibly with the application's. The replicator answers
    with a new generation, never by extending the diverged one."""


class ObjectNotFound(ReplicaError, FileNotFoundError):
    """A replica object that should exist does not."""

    def __init__(self, key: str) -> None:
        super().__init__(f"replica object not found: {key}")
        self.key = key


class RestoreError(LitestreamError):
    """A restore that cannot produce a correct database (gap, missing index, bad target)."""


class NoBackupFound(RestoreError):
    """No generation or snapshot matches what was asked for."""


class OutputExists(RestoreError, FileExistsError):
    """The restore's output path already exists; it is never overwritten."""


class IntegrityCheckFailed(RestoreError):
    """A restored database failed ``PRAGMA integrity_check``."""


class DatabaseError(LitestreamError):
    """A problem with the source database (missing, not WAL, SQLite too old)."""


class SQLiteTooOld(DatabaseError):
    """The SQLite linked in is older than 3.51.3 and has the WAL-reset corruption bug."""


class UsageError(LitestreamError, ValueError):
    """Command-line arguments that cannot be used together or do not parse (one-line message)."""
