"""Import every command module so each registers itself on the ``cli`` group at once
(``cli`` itself imports them lazily; tests that call ``cli.commands`` directly use this)."""

from litestream_fast.cli import (  # noqa: F401
    inspect,
    replicate,
    restore,
    status,
    verify,
)
