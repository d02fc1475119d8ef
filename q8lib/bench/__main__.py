"""``python -m q8lib.bench``: the transformer benchmark (:func:`q8lib.bench.transformer.main`)."""
import sys

from .transformer import main

if __name__ == "__main__":
    sys.exit(main())
