"""``python -m litestream_fast`` runs the same CLI as ``litestream-fast``."""

from litestream_fast.cli import main

if __name__ == "__main__":
    main()
