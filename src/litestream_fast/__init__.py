"""litestream-fast: streaming replication for SQLite, byte-compatible with Litestream v0.3.

The library never reads argv or config files; ``litestream_fast.cli`` does that.
``BACKEND`` says which WAL kernel backend is loaded ("cython" or "python").
"""

from litestream_fast._backend import BACKEND

__version__ = "0.1.0"

__all__ = ["BACKEND", "__version__"]
