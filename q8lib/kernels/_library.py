r"""How q8lib's Triton launchers become ``torch.library`` ops that ``torch.compile`` can see into.

Each op is registered twice from one implementation (its launcher):

* ``q8lib::<name>``: an opaque ``custom_op`` with a fake implementation, for every device (the CPU
  under Triton's interpreter included). torch.compile keeps it as one node and calls back into
  Python to run it.
* ``q8lib::<name>_cuda``: a ``triton_op``. In eager mode it runs the same launcher; under
  torch.compile the launcher itself is traced once with fake tensors, its kernels recorded through
  :func:`launchable`, and inductor launches them from its generated code. On the H200 that cut the
  compiled 2B forward without a CUDA graph from 114.8 to 53.3 ms (benchmarks/NOTES_linear.md).
  Used for every kernel but the Triton GEMM. Inductor passes Python floats to these kernels as fp64 (Triton's JIT:
  fp32), so kernels cast float arguments to fp32 before they meet an e4m3 conversion.

:func:`dual_op` returns a caller that picks the registration by the device of the first tensor.
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

__all__ = ["dual_op", "opaque_op", "tracing", "launchable"]


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
