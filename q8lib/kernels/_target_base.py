"""What :mod:`q8lib.kernels.targets` and :mod:`q8lib.kernels.attn_targets` share: the compile spec and the
shapes it is built at (no kernels imported here)."""
from __future__ import annotations

import dataclasses

import torch

from ..quant import FP8, INT8

__all__ = ["LTX_MODELS", "SHARED_LIMIT", "Spec"]

# Opt-in maximum of shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin): what a kernel may ask for.
SHARED_LIMIT = {89: 99 * 1024, 90: 227 * 1024}

# LTX-Video's transformer widths: hidden size, heads x head dim, feed-forward inner width (4x hidden).
LTX_MODELS = {"2b": {"dim": 2048, "heads": 32, "head_dim": 64, "ffn": 8192},
              "13b": {"dim": 4096, "heads": 32, "head_dim": 128, "ffn": 16384}}
# Representative runtime sizes (they only decide argument types and 16-divisibility): 2 samples (CFG) of
# 6144 video tokens (768x512, 121 frames), 128 text tokens.
_BATCH, _TOKENS, _TEXT = 2, 6144, 128
_PTR = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float16: "*fp16", INT8: "*i8", FP8: "*fp8e4nv"}
_NAME = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16", INT8: "i8", FP8: "e4m3"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One kernel launch form to compile.

    ``args``: the runtime (non-constexpr) arguments in kernel order, pointers as Triton pointer types
    (``"*bf16"``; torch allocations are 16-byte aligned) and integers/floats as representative values, from
    which :func:`signature` derives types and divisibility as Triton's JIT does. ``source``: where the launch
    form comes from (table entry, default, autotune config). ``autotuned``: one of several autotune configs
    (one that does not fit is skipped by the autotuner, not launched). ``dots``: the kernel issues ``tl.dot``
    at these constexprs; ``wgmma``: its sm_90 PTX is expected to use ``wgmma`` (else ``mma.sync``).
    """
    label: str
    kernel: str  # "module:function"
    args: dict
    constexprs: dict
    num_warps: int
    num_stages: int | None  # None: Triton's default (3), as a launch without num_stages
    source: str
    dots: bool = False
    wgmma: bool = False
    autotuned: bool = False
