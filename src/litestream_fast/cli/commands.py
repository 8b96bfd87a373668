"""Import every command module so each registers itself on the ``cli`` group."""

from litestream_fast.cli import (  # noqa: F401
    inspect,
    replicate,
    restore,
    status,
    verify,
)
