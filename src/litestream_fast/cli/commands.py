"""Import every command module so each registers itself on the ``cli`` group."""

# Command modules are added here as they exist.
