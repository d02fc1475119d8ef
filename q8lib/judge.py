"""Moved: the judge of the tiny default is :mod:`q8lib.tiny.judge`. This module only re-exports it for code written against earlier q8lib versions."""
import warnings

from .tiny import judge as _moved

warnings.warn("q8lib.judge moved to q8lib.tiny.judge; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = _moved.__all__


def __getattr__(name):
    return getattr(_moved, name)
