"""The errors q8lib raises for inputs it cannot use, all under one base class, :class:`Q8Error`.

Each message says what is wrong and what to do, in one line, and each is raised before any long
work starts (model loading, conversion, generation). The command line turns every ``Q8Error``
into ``q8lib <command>: error: <message>`` and exit status 2, without a traceback. The classes
also derive from the builtin that matches their meaning (``ValueError``, ``RuntimeError``,
``FileNotFoundError``), so ``except ValueError`` code written against earlier versions still works.
"""
from __future__ import annotations

__all__ = [
    "Q8Error", "SettingsError", "Q8CheckpointError", "ModelUnavailableError", "BackendUnavailableError",
    "MissingPackageError", "GPUOutOfMemoryError", "TinyDefaultMissingError", "UnsupportedModelError",
    "Q8Warning", "Q8FallbackWarning",
]


class Q8Error(Exception):
    """Base class of every error q8lib raises on purpose (bad input, missing model, package or device)."""


class SettingsError(Q8Error, ValueError):
    """An argument or setting q8lib cannot use (raised before any model is loaded)."""


class Q8CheckpointError(Q8Error, ValueError):
    """A checkpoint or model does not match what q8lib expects; the message names the file and key."""


class ModelUnavailableError(Q8Error, RuntimeError):
    """The requested model cannot be loaded here; the message says how to get it."""


class BackendUnavailableError(Q8Error, RuntimeError):
    """The requested backend or device cannot run here; the message says what is missing."""


class MissingPackageError(Q8Error, RuntimeError):
    """An optional package that the requested feature needs is not installed."""


class GPUOutOfMemoryError(Q8Error, RuntimeError):
    """CUDA ran out of memory; the message lists the memory options."""


class TinyDefaultMissingError(Q8Error, FileNotFoundError):
    """The trained tiny model is not in the package (say, a source checkout without its assets)."""


class UnsupportedModelError(Q8Error, TypeError):
    """The model given is not one q8lib converts (a diffusers ``LTXVideoTransformer3DModel``)."""


class Q8Warning(UserWarning):
    """Something q8lib worked around (the command line prints these as one ``q8lib: warning:`` line)."""


class Q8FallbackWarning(Q8Warning):
    """The Q8 transformer runs on the reference math because no fast backend can run here."""
