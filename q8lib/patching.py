"""Moved: the diffusers patch audit is :mod:`q8lib.tutorial.patching`. This module only re-exports it for code written against earlier q8lib versions."""
import warnings

from .tutorial import patching as _moved

warnings.warn("q8lib.patching moved to q8lib.tutorial.patching; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = _moved.__all__


def __getattr__(name):
    return getattr(_moved, name)
