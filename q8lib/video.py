"""Moved: video files are :mod:`q8lib.app.video`, PSNR/SSIM :mod:`q8lib.metrics`. This module only re-exports it for code written against earlier q8lib versions."""
import warnings

from .app import video as _moved

warnings.warn("q8lib.video moved to q8lib.app.video; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = _moved.__all__


def __getattr__(name):
    return getattr(_moved, name)
