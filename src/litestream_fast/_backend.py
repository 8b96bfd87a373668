"""Choose the WAL kernel backend: the compiled ``_walcore`` or its pure-Python twin.

``LITESTREAM_FAST_NO_EXTENSIONS=1`` selects the Python twin on purpose. Otherwise the
compiled module is required in spirit: if it cannot be imported we fall back, but log one
loud warning, because a replicator silently running fifty times slower falls behind.
``BACKEND`` ("cython" or "python") says which one is loaded.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

log = logging.getLogger("litestream_fast")

NO_EXTENSIONS_ENV = "LITESTREAM_FAST_NO_EXTENSIONS"


def _load() -> tuple[ModuleType, str, str | None]:
    if os.environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0"):
        from litestream_fast import _walcore_py

        return _walcore_py, "python", None
    try:
        from litestream_fast import _walcore  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        from litestream_fast import _walcore_py

        return _walcore_py, "python", str(exc)
    return _walcore, "cython", None


core, BACKEND, IMPORT_ERROR = _load()

if IMPORT_ERROR is not None:  # pragma: no cover
    log.warning(
        "compiled WAL core not available (%s); using the slow pure-Python backend. "
        "Reinstall litestream-fast with a C compiler, or set %s=1 to silence this.",
        IMPORT_ERROR,
        NO_EXTENSIONS_ENV,
    )
