"""``python -m shopcardd_backend.cli``: the same command as ``shopcardd-backend``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
