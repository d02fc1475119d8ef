"""The ``triton`` backend: Triton kernels for NVIDIA GPUs (Hopper sm_90 natively; Ada sm_89 by design).

One file per kernel, each with its launcher, its ``torch.library`` op + fake and its reference twin:
``row_quant.py`` (norm/GELU/residual + Hadamard + 8-bit quantization of rows), ``gemm.py`` (8-bit GEMMs),
``attn_producers.py`` (q/k/v producers of FP8 attention and the SDPA path's norm + RoPE),
``fp8_attention.py`` (the FP8 attention kernel), ``int8_producers.py`` + ``int8_attention.py`` (INT8 attention);
shared device functions in ``_jit.py`` and, for the q/k producers' rows (norm across heads + RoPE), ``qk_rows.py``;
op registration and launch plumbing in ``_library.py``. The backend ops with their input checks are ``linear.py`` and ``attention.py``;
:class:`TritonBackend` binds them to the backend interface of :mod:`q8lib.backends`. Each op falls back to the reference math, with a one-time
warning naming the op and the reason, when a shape or dtype is not supported.
"""
from __future__ import annotations

import torch

from ..backends import Backend, register_backend
from ._library import _WARNED, warn_fallback  # noqa: F401  (re-exported: tests reset the one-time warnings)


def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the 'triton' package is not installed (pip install triton)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < 89:
        return f"needs an sm_89+ GPU (Ada or Hopper) for FP8/INT8 tensor cores; found sm_{major}{minor}"
    return None


class TritonBackend(Backend):
    """Each op is the function of the same name in :mod:`q8lib.kernels.linear` or
    :mod:`q8lib.kernels.attention`, imported once when the backend is first resolved (not inside a
    torch.compile trace, where an import would break the graph)."""

    name = "triton"
    priority = 10
    fused_blocks = True

    def __init__(self):
        self._linear = self._attention = None

    def unavailable_reason(self):
        reason = _triton_reason()
        if reason is None and self._linear is None:
            from . import attention, linear

            self._linear, self._attention = linear, attention
        return reason

    def supports_device(self, device):
        return device.type == "cuda"

    def quantize_activation(self, x, qdtype, hadamard_block=None):
        return self._linear.quantize_activation(x, qdtype, hadamard_block)

    def matmul(self, x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
        return self._linear.matmul(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)

    def gemm_fuses_gelu(self, qdtype, device):
        # cuBLAS (fp8 on Hopper) and torch._int_mm have no GELU epilogue; the Triton GEMM has
        return self._linear.gemm_impl(qdtype, device) == "triton"

    def gated_quantize(self, x, head_gate, qdtype, hadamard_block=None):
        return self._linear.gated_quantize(x, head_gate, qdtype, hadamard_block)

    def gelu_quantize(self, x, qdtype, hadamard_block=None):
        return self._linear.gelu_quantize(x, qdtype, hadamard_block)

    def rms_norm(self, x, weight=None, eps=1e-6, scale=None, shift=None):
        return self._linear.rms_norm(x, weight, eps, scale, shift)

    def rms_norm_quantize(self, x, weight, eps, scale, shift, qdtype, hadamard_block=None):
        return self._linear.rms_norm_quantize(x, weight, eps, scale, shift, qdtype, hadamard_block)

    def add_quantize(self, x, residual, gate, qdtype, hadamard_block=None, norm=False, weight=None, eps=1e-6,
                     scale=None, shift=None):
        return self._linear.add_quantize(x, residual, gate, qdtype, hadamard_block, norm, weight, eps, scale, shift)

    def attention_unavailable_reason(self, mode):
        if mode != "fp8_tensor":
            return None
        from .cudnn_attention import cudnn_unavailable_reason  # the only mode with a package of its own

        return cudnn_unavailable_reason()

    def attention(self, q, k, v, key_lengths=None, sm_scale=None, mode="fp8"):
        return self._attention.attention(q, k, v, key_lengths, sm_scale, mode)

    def attention_codes(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, key_rotary_emb=None):
        return self._attention.fused_attention_codes(attn, query, key, value, image_rotary_emb, key_lengths,
                                                     key_rotary_emb)

    def attention_core(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8",
                       key_rotary_emb=None):
        out = self._attention.fused_attention_core(attn, query, key, value, image_rotary_emb, key_lengths, mode,
                                                   key_rotary_emb)
        if out is None:  # a module layout the producers do not take: torch norm + RoPE, then the same kernel
            return super().attention_core(attn, query, key, value, image_rotary_emb, key_lengths, mode,
                                          key_rotary_emb)
        return out


register_backend(TritonBackend())
