"""Moved: training the tiny default is :mod:`q8lib.tiny.train` (``python -m q8lib.tiny.train``). This module only re-exports it for code written against earlier q8lib versions."""
import sys
import warnings

from .tiny import train as _moved

warnings.warn("q8lib.train moved to q8lib.tiny.train; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = _moved.__all__


def __getattr__(name):
    return getattr(_moved, name)


if __name__ == "__main__":
    sys.exit(_moved.main())
