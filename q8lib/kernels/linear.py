"""The ``triton`` backend's linear ops (same signatures and math as :mod:`q8lib.reference`).

* ``quantize_activation`` / ``rms_norm_quantize`` / ``gelu_quantize`` / ``add_quantize`` / ``gated_quantize``: one
  Triton pass per row (gated residual add, norm + AdaLN modulation, GELU or per-head attention gates, Hadamard
  rotation, amax, 8-bit store), ``row_quant.py``.
* ``matmul``: the 8-bit GEMM with the scale/bias/GELU epilogue. On Hopper (sm_90+) fp8 goes to
  cuBLAS' row-wise scaled GEMM (``torch._scaled_mm`` with fast accumulation; fastest measured,
  see benchmarks/NOTES_linear.md); int8, and fp8 elsewhere (Ada, sm_89: by design, untested
  here), go to the Triton GEMM in ``gemm.py`` (on sm_90+ its persistent, warp-specialized TMA form).
  ``Q8LIB_GEMM=triton|triton_tma|scaled_mm|int_mm`` (or :func:`set_gemm_impl`) overrides the choice (benchmarks).

Every kernel is a ``torch.library`` op (namespace ``q8lib``). The row ops are registered by
:func:`~q8lib.kernels._library.dual_op`: on CUDA a ``triton_op`` whose launcher torch.compile traces,
so inductor launches the kernel from its own code instead of calling back into Python for every
launch; elsewhere an opaque custom op with a fake implementation. The Triton GEMM is registered the same way. Inputs the
kernels cannot take (row length not a power of two, too long, odd dtypes, non-CUDA tensors
outside the Triton interpreter) fall back to the reference math with a one-time warning.
Unlike the reference, the kernels do not check inputs for NaN/inf (that needs a host sync).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference as ref
from ..quant import FP8, INT8, qdtype_from_name
from ._library import runs_here, warn_fallback
from .gemm import gemm_impl, gemm_op, set_gemm_impl
from .row_quant import (FP8_OUT, FLOAT_OUT, INT8_OUT, add_ref, add_row_quant_op, gated_row_quant_op, plan, rot_code,
                        row_quant_op)

__all__ = ["quantize_activation", "gated_quantize", "rms_norm", "rms_norm_quantize", "gelu_quantize", "add_quantize",
           "matmul",
           "gemm_impl", "set_gemm_impl"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# what the quantizers also read: e4m3 codes (attention="fp8_tensor"'s output, its descale applied by the caller)
_CODE_DTYPES = _FLOAT_DTYPES + (torch.float8_e4m3fn,)


def _row_reason(x: torch.Tensor, hadamard_block, rotate=True, dtypes=_FLOAT_DTYPES) -> str | None:
    if not runs_here(x):
        return f"tensor on {x.device} (Triton needs CUDA or TRITON_INTERPRET=1)"
    if x.dtype not in dtypes:
        return f"input dtype {x.dtype}"
    p = plan(x.shape[-1], hadamard_block, rotate)
    return p if isinstance(p, str) else None


def _row(op, x, weight, scale, shift, eps, norm, gelu, qdtype, hadamard_block, rotate=True):
    q = qdtype_from_name(qdtype) if qdtype is not None else None
    qmode = {INT8: INT8_OUT, FP8: FP8_OUT}.get(q, FLOAT_OUT)
    return row_quant_op(x, weight, scale, shift, float(eps), norm, gelu, rot_code(rotate, hadamard_block), qmode)


# ------------------------------------------------------------------------------------------------
# Public row ops (backend API)
def quantize_activation(x, qdtype, hadamard_block=None):
    """``x [..., K]`` (float or e4m3 codes) -> Hadamard-rotated, per-token quantized ``(q [..., K], scale [...]
    fp32)``."""
    reason = _row_reason(x, hadamard_block, dtypes=_CODE_DTYPES)
    if reason:
        warn_fallback("quantize_activation", reason)
        return ref.quantize_activation_ref(x, qdtype, hadamard_block)
    return _row("quantize_activation", x, None, None, None, 1e-6, False, False, qdtype, hadamard_block)


def gated_quantize(x, head_gate, qdtype, hadamard_block=None):
    """``x [..., K]`` times per-head gates ``head_gate [..., H]`` (each over ``K / H`` consecutive channels), rotated
    and quantized per token -> ``(q [..., K], scale [...])``: gated attention's output quantized for ``to_out`` in
    the same pass that applies the gates. Differs from the reference only in keeping the gated rows in float32."""
    ref.check_head_gates(x, head_gate)
    reason = _row_reason(x, hadamard_block, dtypes=_CODE_DTYPES) or (None if head_gate.dtype in _FLOAT_DTYPES else
                                                f"head gate dtype {head_gate.dtype}")
    if reason:
        warn_fallback("gated_quantize", reason)
        return ref.quantize_activation_ref(ref.head_gates_ref(x, head_gate), qdtype, hadamard_block)
    q = qdtype_from_name(qdtype)
    return gated_row_quant_op(x, head_gate, rot_code(True, hadamard_block), INT8_OUT if q == INT8 else FP8_OUT)


def rms_norm(x, weight=None, eps=1e-6, scale=None, shift=None):
    """``x / rms(x) [* weight] [* (1 + scale) + shift]`` -> ``x.dtype`` (``scale``/``shift`` broadcast to x)."""
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if torch.compiler.is_compiling():
        # plain torch ops: inductor fuses the norm with its neighbours (RoPE, casts), an opaque kernel can't
        return ref.rms_norm_ref(x, weight, eps, scale, shift)
    reason = _row_reason(x, None, rotate=False)
    if reason:
        warn_fallback("rms_norm", reason)
        return ref.rms_norm_ref(x, weight, eps, scale, shift)
    return _row("rms_norm", x, weight, scale, shift, eps, True, False, None, None, rotate=False)[0]


def rms_norm_quantize(x, weight, eps, scale, shift, qdtype, hadamard_block=None):
    """Fused RMSNorm + AdaLN modulation + rotation + quantization of ``x [..., K]`` -> ``(q, scale)``.

    Differs from the two-step reference only in skipping the rounding of the normed rows to
    ``x.dtype`` before rotation (the kernel keeps them in float32).
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    reason = _row_reason(x, hadamard_block)
    if reason:
        warn_fallback("rms_norm_quantize", reason)
        return ref.quantize_activation_ref(ref.rms_norm_ref(x, weight, eps, scale, shift), qdtype, hadamard_block)
    return _row("rms_norm_quantize", x, weight, scale, shift, eps, True, False, qdtype, hadamard_block)


def gelu_quantize(x, qdtype, hadamard_block=None):
    """tanh-GELU + rotation + quantization of ``x [..., K]`` (the FFN hidden) -> ``(q, scale)``."""
    reason = _row_reason(x, hadamard_block)
    if reason:
        warn_fallback("gelu_quantize", reason)
        return ref.quantize_activation_ref(F.gelu(x.float(), approximate="tanh").to(x.dtype), qdtype, hadamard_block)
    return _row("gelu_quantize", x, None, None, None, 1e-6, False, True, qdtype, hadamard_block)


def add_quantize(x, residual, gate, qdtype, hadamard_block=None, norm=False, weight=None, eps=1e-6,
                 scale=None, shift=None):
    """Gated residual add fused with the next quantizer: ``h = x + residual * gate`` (``gate`` optional,
    broadcast like the AdaLN modulation), then ``h`` (``norm=False``) or ``RMSNorm(h)·(1+scale)+shift``
    (``norm=True``) rotated and quantized. Returns ``(h [..., K] in x.dtype, q [..., K], scale [...])``.

    One pass instead of two: ``h`` is written once and never read back for the quantizer.
    """
    reason = _row_reason(x, hadamard_block) or (None if residual.shape == x.shape else "residual shape differs")
    if reason:
        warn_fallback("add_quantize", reason)
        h = add_ref(x, residual, gate)
        if norm:
            return (h,) + tuple(rms_norm_quantize(h, weight, eps, scale, shift, qdtype, hadamard_block))
        return (h,) + tuple(quantize_activation(h, qdtype, hadamard_block))
    q = qdtype_from_name(qdtype)
    return add_row_quant_op(x, residual, gate, weight, scale, shift, float(eps), norm, rot_code(True, hadamard_block),
                            INT8_OUT if q == INT8 else FP8_OUT)


def _gemm_reason(x_q, w_q, w_scale, bias, out_dtype) -> str | None:
    if not (runs_here(x_q) and runs_here(w_q)):
        return f"tensors on {x_q.device}/{w_q.device} (Triton needs CUDA or TRITON_INTERPRET=1)"
    if x_q.dtype not in (INT8, FP8):
        return f"8-bit dtype {x_q.dtype}"
    if out_dtype not in _FLOAT_DTYPES:
        return f"output dtype {out_dtype}"
    if x_q.shape[-1] % 16:
        return f"inner dim {x_q.shape[-1]} not a multiple of 16"
    if w_q.stride(-1) != 1 or w_scale.dtype != torch.float32:
        return "weight not K-contiguous or weight scales not float32"
    return None


def matmul(x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
    """``act((x_q @ w_qᵀ) * x_scale[..., None] * w_scale + bias)`` -> ``out_dtype``.

    ``x_q [..., K]``, ``x_scale [...]``, ``w_q [N, K]``, ``w_scale [N]`` fp32, ``bias [N]`` -> ``[..., N]``.
    """
    if activation not in ref.ACTIVATIONS:
        raise ValueError(f"activation must be one of {ref.ACTIVATIONS}, got {activation!r}")
    if x_q.dtype != w_q.dtype:
        raise TypeError(f"activation dtype {x_q.dtype} and weight dtype {w_q.dtype} differ")
    if x_q.shape[-1] != w_q.shape[-1]:
        raise ValueError(f"inner dims differ: activations {tuple(x_q.shape)}, weight {tuple(w_q.shape)}")
    reason = _gemm_reason(x_q, w_q, w_scale, bias, out_dtype)
    if reason:
        warn_fallback("matmul", reason)
        return ref.q8_matmul_ref(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)
    lead, K, N = x_q.shape[:-1], x_q.shape[-1], w_q.shape[0]
    x2 = x_q.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    xs = x_scale.reshape(-1).float()
    gelu = activation == "gelu_tanh"
    impl = gemm_impl(x_q.dtype, x_q.device)
    if impl == "scaled_mm" and N % 16 == 0 and out_dtype in (torch.bfloat16, torch.float16):
        # cuBLAS row-wise fp8: fp32 scales [M, 1] x [1, N]; its bias must be in the output dtype
        y = torch._scaled_mm(x2, w_q.t(), scale_a=xs.view(-1, 1), scale_b=w_scale.view(1, -1),
                             bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype,
                             use_fast_accum=True)
        if gelu:
            y = F.gelu(y.float(), approximate="tanh").to(out_dtype)
    elif impl == "int_mm" and x2.shape[0] > 16 and K % 8 == 0 and N % 8 == 0:
        acc = torch._int_mm(x2, w_q.t())
        y = acc.float() * xs[:, None] * w_scale
        if bias is not None:
            y = y + bias.float()
        y = (F.gelu(y, approximate="tanh") if gelu else y).to(out_dtype)
    else:
        y = gemm_op(x2, xs, w_q, w_scale, bias, gelu, out_dtype)
    return y.reshape(*lead, N)
