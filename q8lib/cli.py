"""Moved: the command line is :mod:`q8lib.app.cli`. This module only re-exports it for code written against earlier q8lib versions."""
import sys
import warnings

from .app import cli as _moved

warnings.warn("q8lib.cli moved to q8lib.app.cli; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = _moved.__all__
main = _moved.main


def __getattr__(name):
    return getattr(_moved, name)


if __name__ == "__main__":
    sys.exit(_moved.main())
