"""``python -m q8lib`` / ``q8lib``: command line entry point (the subcommands live in :mod:`q8lib.app.cli`)."""
from __future__ import annotations

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
