"""Moved: the moving-shapes data is :mod:`q8lib.tiny.shapes`. This module only re-exports it for code written against earlier q8lib versions."""
import warnings

from .tiny import shapes as _moved

warnings.warn("q8lib.shapes moved to q8lib.tiny.shapes; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = _moved.__all__


def __getattr__(name):
    return getattr(_moved, name)
