"""Moved: end-to-end generation is :mod:`q8lib.app` (``settings``, ``loading``, ``prompts``, ``measure``, ``run``).
This module only re-exports its names for code written against earlier q8lib versions."""
import warnings

from . import app, errors, models
from .app import loading, measure, prompts, run, settings
from .tiny import default_pipeline as _tiny_default

warnings.warn("q8lib.pipeline moved to q8lib.app; import from there (this module only re-exports it for earlier code)",
              FutureWarning, stacklevel=2)
__all__ = app.__all__
_PLACES = (app, settings, loading, prompts, measure, run, errors, models)


def _default_pipeline(seed: int = 0):
    """Earlier ``q8lib.pipeline.default_pipeline(seed)``, which ignored ``seed``: :func:`q8lib.tiny.default_pipeline`."""
    return _tiny_default()


def __getattr__(name):
    if name == "default_pipeline":
        return _default_pipeline
    for place in _PLACES:
        if hasattr(place, name):
            return getattr(place, name)
    raise AttributeError(f"module 'q8lib.pipeline' has no attribute {name!r} (q8lib.pipeline moved to q8lib.app)")
