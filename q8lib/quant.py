"""Symmetric row-wise 8-bit quantizers (the numerical reference for every kernel).

``quantize_rowwise(x)`` returns ``(q, scale)`` with ``x ≈ q.float() * scale[..., None]``:

* int8: ``scale = amax / 127``, ``q = round_half_to_even(x * (127 / amax))``, in [-127, 127].
* fp8 e4m3 (``torch.float8_e4m3fn``): ``scale = amax / 448``, ``q = e4m3(clamp(x * (448 / amax)))``
  (round to nearest even by the cast); values saturate at ±448 instead of becoming NaN.

``amax`` is the max of ``|x|`` over the last dim, computed in float32. An all-zero row gets
``scale = 0`` and ``q = 0`` (never NaN). Non-finite input raises ``ValueError``.
"""
from __future__ import annotations

import torch

__all__ = ["INT8", "FP8", "QMAX", "qdtype_from_name", "quantize_rowwise", "dequantize_rowwise", "check_finite"]

INT8 = torch.int8
FP8 = torch.float8_e4m3fn
QMAX = {INT8: 127.0, FP8: 448.0}
_NAMES = {"int8": INT8, "fp8": FP8, "fp8_e4m3": FP8, "float8_e4m3fn": FP8}


def qdtype_from_name(name) -> torch.dtype:
    """Map ``"int8"``/``"fp8"``/``"fp8_e4m3"`` (or the dtype itself) to the torch dtype."""
    if isinstance(name, torch.dtype):
        if name in QMAX:
            return name
        raise ValueError(f"Unsupported 8-bit dtype {name}; use torch.int8 or torch.float8_e4m3fn.")
    try:
        return _NAMES[str(name).lower()]
    except KeyError:
        raise ValueError(f"Unknown 8-bit dtype {name!r}; choose one of {sorted(_NAMES)}.") from None


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
        raise ValueError(f"{what} contains NaN or inf; 8-bit quantization needs finite values.")


def quantize_rowwise(x: torch.Tensor, qdtype=INT8, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (shape ``[..., K]``) per row; returns ``q [..., K]`` and float32 ``scale [...]``."""
    qdtype = qdtype_from_name(qdtype)
    if check:
        check_finite(x)
    qmax = QMAX[qdtype]
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    scale = amax / qmax
    inv = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    y = (xf * inv[..., None]).clamp_(-qmax, qmax)
    q = torch.round(y).to(INT8) if qdtype == INT8 else y.to(FP8)
    return q, scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_rowwise`: ``q * scale[..., None]`` in ``dtype``."""
    return (q.float() * scale.float()[..., None]).to(dtype)
