r"""How q8lib's Triton launchers become ``torch.library`` ops that ``torch.compile`` can see into.

Each op is registered twice from one implementation (its launcher):

* ``q8lib::<name>``: an opaque ``custom_op`` with a fake implementation, for every device (the CPU
  under Triton's interpreter included). torch.compile keeps it as one node and calls back into
  Python to run it.
* ``q8lib::<name>_cuda``: a ``triton_op``. In eager mode it runs the same launcher; under
  torch.compile the launcher itself is traced once with fake tensors, its kernels recorded through
  :func:`launchable`, and inductor launches them from its generated code. On the H200 that cut the
  compiled 2B forward without a CUDA graph from 114.8 to 53.3 ms (benchmarks/NOTES_linear.md).
  Used for every q8lib kernel. Inductor passes Python floats to these kernels as fp64 (Triton's JIT: fp32), so
  kernels cast float arguments to fp32 before they meet an e4m3 conversion.

:func:`dual_op` returns a caller that picks the registration by the device of the first tensor.

Also here, because every kernel file needs them: the one-time fallback warning, where Triton can run, the
GPU's capability and SM count, persistent-grid sizing and the measured launch table (``row_tune.json``).
"""
from __future__ import annotations

import functools
import json
import os
import warnings

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from ..errors import Q8FallbackWarning

__all__ = ["dual_op", "opaque_op", "tracing", "launchable", "warn_fallback", "interpreting", "runs_here",
           "capability", "sm_count", "programs", "tune_table", "table_entry", "table_tune"]

_WARNED: set = set()


def warn_fallback(op: str, reason: str) -> None:
    """One warning per (op, reason): the kernel cannot take this input, the reference runs instead."""
    if (op, reason) not in _WARNED:
        _WARNED.add((op, reason))
        warnings.warn(Q8FallbackWarning(f"q8lib triton backend: {op} falls back to the reference math ({reason})"),
                      stacklevel=3)


# Read once: torch.compile traces the launchers, and module globals trace as constants.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def interpreting(t: torch.Tensor) -> bool:
    """``t`` is a CPU tensor: a kernel launched on it runs in the interpreter (small tiles, no inline PTX)."""
    return t.device.type == "cpu"


def runs_here(t: torch.Tensor) -> bool:
    """Triton can run on ``t``'s device: CUDA, or the CPU through Triton's interpreter."""
    return t.is_cuda or (t.device.type == "cpu" and _INTERPRET)


@functools.lru_cache(maxsize=8)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


_CAPABILITY: dict = {}  # a dict, not lru_cache: traceable by torch.compile


def capability(index: int) -> int:
    """Compute capability of CUDA device ``index`` as one number (90: sm_90)."""
    if index not in _CAPABILITY:
        major, minor = torch.cuda.get_device_capability(index)
        _CAPABILITY[index] = major * 10 + minor
    return _CAPABILITY[index]


def programs(device: torch.device, n_tiles: int, per_sm: int) -> int:
    """Programs of a tile grid: ``per_sm`` persistent programs per SM (each loops over tiles), or one
    program per tile for ``per_sm == 0``; a few in Triton's CPU interpreter (still exercising the loop)."""
    if device.type != "cuda":
        return min(n_tiles, 4)
    return n_tiles if per_sm == 0 else min(n_tiles, per_sm * sm_count(device.index or 0))


# Launch settings measured per GPU architecture and op kind: ``benchmarks/sweep_rows.py --table`` times every
# launch form on the device and writes the fastest per kind here. Kinds missing from the table (other GPUs,
# other row lengths) use each launcher's default.
TUNE_FILE = os.path.join(os.path.dirname(__file__), "row_tune.json")


@functools.lru_cache(maxsize=1)
def tune_table() -> dict:
    try:
        with open(TUNE_FILE) as f:
            return json.load(f)
    except FileNotFoundError:  # a trimmed install: every kind keeps the default launch
        return {}


def table_entry(cap: int, key: str):
    """The measured launch form for ``key`` on GPUs of compute capability ``cap`` (90: sm_90), or ``None``."""
    return tune_table().get(f"sm_{cap}", {}).get(key)


def table_tune(device: torch.device, key: str):
    """The measured launch form for ``key`` on this GPU's architecture, or ``None`` (CPU)."""
    if device.type != "cuda":
        return None
    return table_entry(capability(device.index or 0), key)


def tracing(t: torch.Tensor) -> bool:
    """``True`` while torch.compile traces a launcher (``t`` is a fake tensor): nothing runs then."""
    return is_fake(t)


def launchable(kernel, t: torch.Tensor):
    """``kernel`` as the launcher should call it: recorded through ``wrap_triton`` while tracing, itself otherwise."""
    return wrap_triton(kernel) if tracing(t) else kernel


def opaque_op(name: str, fn, fake):
    """Register ``fn`` as the opaque custom op ``q8lib::<name>`` with the fake implementation ``fake``."""
    op = torch.library.custom_op(f"q8lib::{name}", fn, mutates_args=())
    op.register_fake(fake)
    return op


def dual_op(name: str, fn, fake):
    """Register ``fn`` as ``q8lib::<name>`` (custom op with ``fake``) and ``q8lib::<name>_cuda`` (triton op);
    return a function that calls the CUDA one for CUDA tensors and the other one elsewhere."""
    opaque = opaque_op(name, fn, fake)
    visible = triton_op(f"q8lib::{name}_cuda", fn, mutates_args=())

    def call(*args):
        first = next(a for a in args if isinstance(a, torch.Tensor))
        return (visible if first.is_cuda else opaque)(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = fn.__doc__
    call.opaque, call.visible = opaque, visible
    return call
