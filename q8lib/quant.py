"""Symmetric row-wise 8-bit quantizers (the numerical reference for every kernel).

``quantize_rowwise(x)`` returns ``(q, scale)`` with ``x ≈ q.float() * scale[..., None]``:

* int8: ``scale = amax * (1 / 127)``, ``q = round_half_to_even(x * (127 / amax))``, in [-127, 127].
* fp8 e4m3 (``torch.float8_e4m3fn``): ``scale = amax * (1 / 448)``, ``q = e4m3(clamp(x * (448 / amax)))``
  (round to nearest even by the cast); values saturate at ±448 instead of becoming NaN.

``amax`` is the max of ``|x|`` over the last dim, computed in float32. An all-zero row gets
``scale = 0`` and ``q = 0`` (never NaN). Non-finite input raises ``ValueError``.

Rows whose ``amax`` is below ``2**-64`` (down to float32's smallest subnormal, ~1e-45) are first
multiplied by ``2**64``, which is exact in binary floating point: ``qmax / amax`` would otherwise
overflow to ``inf`` (from ``amax`` ~1e-36 on) and turn the row's zeros into NaN. Every kernel does the
same, so the codes of ordinary rows are unchanged and tiny rows keep their full relative precision.
"""
from __future__ import annotations

import torch

from .errors import SettingsError

__all__ = ["INT8", "FP8", "QMAX", "TINY_AMAX", "TINY_UPSCALE", "qdtype_from_name", "quantize_rowwise", "dequantize_rowwise", "check_finite"]

INT8 = torch.int8
FP8 = torch.float8_e4m3fn
QMAX = {INT8: 127.0, FP8: 448.0}
# Rows with amax below TINY_AMAX are scaled up by TINY_UPSCALE (a power of two: exact) before the
# reciprocal, so qmax / amax stays finite (see the module docstring). Kernels use the same constants.
TINY_AMAX = 2.0**-64
TINY_UPSCALE = 2.0**64
_NAMES = {"int8": INT8, "fp8": FP8, "fp8_e4m3": FP8, "float8_e4m3fn": FP8}


def qdtype_from_name(name) -> torch.dtype:
    """Map ``"int8"``/``"fp8"``/``"fp8_e4m3"`` (or the dtype itself) to the torch dtype."""
    if isinstance(name, torch.dtype):
        if name in QMAX:
            return name
        raise SettingsError(f"Unsupported 8-bit dtype {name}; use torch.int8 or torch.float8_e4m3fn.")
    try:
        return _NAMES[str(name).lower()]
    except KeyError:
        raise SettingsError(f"Unknown 8-bit dtype {name!r}; choose one of {sorted(_NAMES)}.") from None


def qdtype_name(dtype: torch.dtype) -> str:
    return "int8" if dtype == INT8 else "fp8_e4m3"


def host_sync_allowed(t: torch.Tensor) -> bool:
    """``False`` while torch.compile traces or a CUDA graph is captured on the current stream: then
    checks that read ``t``'s values back to the host (a sync) must be skipped."""
    return not (torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing()))


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN/inf (skipped where :func:`host_sync_allowed` says no)."""
    if not host_sync_allowed(x):
        return
    if not bool(torch.isfinite(x).all()):
        raise SettingsError(f"{what} contains NaN or inf; 8-bit quantization needs finite values.")


def quantize_rowwise(x: torch.Tensor, qdtype=INT8, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (shape ``[..., K]``) per row; returns ``q [..., K]`` and float32 ``scale [...]``."""
    qdtype = qdtype_from_name(qdtype)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[-1] < 1:
        what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise SettingsError(f"quantize_rowwise needs a floating-point tensor [..., K] with K >= 1, got {what}")
    if check:
        check_finite(x)
    qmax = QMAX[qdtype]
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    # times the float32 reciprocal, not "/ qmax": CUDA divides a tensor by a Python number that way and the CPU
    # exactly, and the two differ in the last bit for ~half the rows, so a model quantized on the CPU (the offload
    # path) would not be the one quantized on the GPU. A multiply rounds the same on every device.
    scale = amax * (1.0 / qmax)
    up = torch.where(amax < TINY_AMAX, TINY_UPSCALE, 1.0)
    inv = torch.where(amax > 0, qmax / (amax * up), torch.zeros_like(amax))
    y = ((xf * up[..., None]) * inv[..., None]).clamp_(-qmax, qmax)
    q = torch.round(y).to(INT8) if qdtype == INT8 else y.to(FP8)
    return q, scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_rowwise`: ``q * scale[..., None]`` in ``dtype``."""
    return (q.float() * scale.float()[..., None]).to(dtype)
