"""Import every command module so each registers itself on the ``cli`` group."""

# Command modules are added here as they exist.
from litestream_fast.cli import replicate  # noqa: F401,E402
