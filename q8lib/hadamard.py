"""Orthonormal Hadamard rotations.

Why: a linear layer computes ``x @ W.T``. For an orthonormal ``H`` (``H @ H.T == I``),
``(x @ H) @ (W @ H).T == x @ W.T``, so we may quantize the rotated operands instead of the
originals. The rotation spreads a few large "outlier" channels over all channels, which
shrinks the per-row max and therefore the 8-bit quantization step.

We use the Sylvester construction scaled by ``1/sqrt(n)``: symmetric, orthonormal and its own
inverse. ``block_size`` applies it block-diagonally (``I_{n/b} (x) H_b``), which is cheaper
to fuse into kernels; ``None`` rotates over the whole last dimension (the layout of the earlier
public Q8 checkpoints).
"""
from __future__ import annotations

import functools
import math

import torch

from .errors import SettingsError

__all__ = ["hadamard_matrix", "hadamard_signs", "hadamard_transform", "check_hadamard_size"]


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def check_hadamard_size(n: int, block_size: int | None = None) -> int:
    """Return the rotation size used for a last dim of ``n``; raise ``ValueError`` if unsupported."""
    size = n if block_size is None else block_size
    if not _is_power_of_two(size):
        raise SettingsError(
            f"Hadamard rotation needs a power-of-two size, got {size} "
            f"(last dim {n}, block_size {block_size}). Pick a power-of-two block_size that divides {n}."
        )
    if n % size:
        raise SettingsError(f"Hadamard block_size {size} does not divide the last dim {n}.")
    return size


@functools.lru_cache(maxsize=32)
def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``[n, n]`` orthonormal Sylvester Hadamard matrix (entries ``±1/sqrt(n)``)."""
    check_hadamard_size(n)
    return _sylvester(n).to(dtype=dtype, device=device)


def hadamard_signs(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The unnormalised ``[n, n]`` Sylvester matrix (entries ±1, exact in any float dtype), cached per
    size, dtype and device; ``hadamard_matrix(n) == hadamard_signs(n, ...) / sqrt(n)``.

    Not cached while torch.compile traces (Dynamo, or fake tensors in a ``triton_op``'s launcher): the cache
    would keep a fake tensor that later eager calls cannot read, and Dynamo cannot trace the cache lookup; there
    the matrix is built from tensor ops (log2(n) doublings) that the trace records."""
    if torch.compiler.is_compiling():
        return _built_signs(n, dtype, device)
    from torch._guards import detect_fake_mode

    if detect_fake_mode() is not None:
        return _built_signs(n, dtype, device)
    return _cached_signs(n, dtype, device)


def _built_signs(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sylvester's construction, ``H_2k = [[H_k, H_k], [H_k, -H_k]]``, in tensor ops."""
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.lru_cache(maxsize=64)
def _cached_signs(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (_sylvester(n) * math.sqrt(n)).round().to(dtype=dtype, device=device)


def hadamard_transform(x: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    """Rotate ``x`` (shape ``[..., n]``) by the orthonormal Hadamard matrix along its last dim.

    Computes ``x @ H`` in float32 (float64 for float64 input) and returns ``x.dtype``. ``block_size``
    rotates each contiguous block of that many channels independently. The transform is its own inverse.

    How: Sylvester's matrix factors as ``H_b = H_A ⊗ H_B`` (``b = A·B``), so a block viewed as
    ``X [A, B]`` rotates as ``H_A X H_B``: two small matrix products, ``b·(A+B)`` multiply-adds a block,
    5-8x faster on CPUs than the ``b·log2(b)``-add butterfly written as ~log2(b) separate tensor ops.
    On a CUDA device with TF32 matmuls allowed, the butterfly runs instead (TF32 would round the inputs).
    """
    n = x.shape[-1]
    b = check_hadamard_size(n, block_size)
    if b == 1:  # H_1 = [1]: no rotation (hadamard_block=1)
        return x.clone()
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.is_cuda and work == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return _butterfly(x, b, work)
    log_b = b.bit_length() - 1
    A = 1 << (log_b // 2)
    B = b // A
    y = x.to(work).reshape(-1, A, B)
    y = torch.matmul(torch.matmul(hadamard_signs(A, work, x.device), y), hadamard_signs(B, work, x.device))
    return (y.reshape(x.shape) * (1.0 / math.sqrt(b))).to(x.dtype)


def _butterfly(x: torch.Tensor, b: int, work: torch.dtype) -> torch.Tensor:
    """``hadamard_transform`` as the fast Walsh-Hadamard butterfly (``b·log2(b)`` adds a block)."""
    y = x.to(work).reshape(-1, b)
    h = 1
    while h < b:
        y = y.view(-1, b // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return (y.reshape(x.shape) * (1.0 / math.sqrt(b))).to(x.dtype)
