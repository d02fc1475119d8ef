"""Optional backend ``q8_kernels``: the int8 GEMM of the original ``q8_kernels`` package (Ada, sm_89).

Registered whenever this module is imported (the backend registry imports it); it is *available*
only when ``q8_kernels`` is installed and a CUDA GPU is visible, and it is never required. Only the
8-bit GEMM is taken from the package (``q8_kernels.functional.linear.q8_linear`` with int8 operands,
per-token and per-channel scales, fp32 bias and optional fused GELU); every other op runs on the
``triton`` backend when that is available, else the reference math.

Before its first GEMM on a device the adapter checks the package's result against
:func:`q8lib.reference.q8_matmul_ref` on a small random problem; if they disagree (another scale
convention, a broken build) it warns once and uses q8lib's GEMM instead. Untested here: no
machine with ``q8_kernels`` (CUDA extension built for sm_89) was available.
"""
from __future__ import annotations

import warnings

import torch

from . import reference as ref
from .backends import Backend, get_backend, register_backend
from .quant import INT8, quantize_rowwise

__all__ = ["Q8KernelsBackend"]


def _q8_linear():
    """The package's GEMM entry point, or ``None`` if the package is not importable."""
    try:
        from q8_kernels.functional.linear import q8_linear
    except Exception:  # noqa: BLE001 - missing package or an extension built for another GPU/torch
        return None
    return q8_linear


class Q8KernelsBackend(Backend):
    name = "q8_kernels"
    priority = 5  # below "triton": "auto" picks it only where triton is unavailable; name it to use it

    def __init__(self):
        self._checked: dict = {}  # device -> bool (package GEMM agrees with the reference)

    def unavailable_reason(self):
        if _q8_linear() is None:
            return "the optional 'q8_kernels' package is not installed (or does not import)"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
        return None

    def supports_device(self, device):
        return device.type == "cuda"

    def _other(self):
        """Where the non-GEMM ops run: triton if available, else the reference."""
        try:
            return get_backend("triton")
        except Exception:  # noqa: BLE001
            return Backend()

    def _agrees(self, device) -> bool:
        key = str(device)
        if key not in self._checked:
            g = torch.Generator(device="cpu").manual_seed(0)
            xq, xs = quantize_rowwise(torch.randn(64, 256, generator=g), INT8)
            wq, ws = quantize_rowwise(torch.randn(128, 256, generator=g) / 16, INT8)
            b = torch.randn(128, generator=g)
            args = [t.to(device) for t in (xq, wq, b, xs, ws)]
            try:
                got = _q8_linear()(args[0], args[1], args[2], args[3], args[4], True, torch.float32).float().cpu()
                want = ref.q8_matmul_ref(xq, xs, wq, ws, b, "gelu_tanh", torch.float32)
                ok = bool(((got - want).norm() / want.norm()) < 1e-2)
            except Exception as e:  # noqa: BLE001
                ok, want = False, e
            if not ok:
                warnings.warn("q8lib: q8_kernels' GEMM does not match q8lib's reference math on this device; "
                              "using q8lib's own GEMM instead", stacklevel=3)
            self._checked[key] = ok
        return self._checked[key]

    # ops ----------------------------------------------------------------------------------------
    def quantize_activation(self, x, qdtype, hadamard_block=None):
        return self._other().quantize_activation(x, qdtype, hadamard_block)

    def rms_norm(self, x, weight=None, eps=1e-6, scale=None, shift=None):
        return self._other().rms_norm(x, weight, eps, scale, shift)

    def rms_norm_quantize(self, x, weight, eps, scale, shift, qdtype, hadamard_block=None):
        return self._other().rms_norm_quantize(x, weight, eps, scale, shift, qdtype, hadamard_block)

    def gelu_quantize(self, x, qdtype, hadamard_block=None):
        return self._other().gelu_quantize(x, qdtype, hadamard_block)

    def gated_quantize(self, x, head_gate, qdtype, hadamard_block=None):
        return self._other().gated_quantize(x, head_gate, qdtype, hadamard_block)

    def add_quantize(self, x, residual, gate, qdtype, hadamard_block=None, norm=False, weight=None, eps=1e-6,
                     scale=None, shift=None):
        return self._other().add_quantize(x, residual, gate, qdtype, hadamard_block, norm, weight, eps, scale, shift)

    def attention(self, q, k, v, key_lengths=None, sm_scale=None, mode="fp8"):
        return self._other().attention(q, k, v, key_lengths, sm_scale, mode)

    def attention_core(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8",
                       key_rotary_emb=None):
        return self._other().attention_core(attn, query, key, value, image_rotary_emb, key_lengths, mode,
                                            key_rotary_emb)

    def gemm_fuses_gelu(self, qdtype, device):
        return qdtype == INT8 or self._other().gemm_fuses_gelu(qdtype, device)

    def matmul(self, x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
        """int8 operands go to the package's GEMM (after the one-time agreement check); fp8 to q8lib's."""
        if x_q.dtype != INT8 or w_q.dtype != INT8 or activation not in ref.ACTIVATIONS or not self._agrees(x_q.device):
            return self._other().matmul(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)
        lead = x_q.shape[:-1]
        y = _q8_linear()(x_q.reshape(-1, x_q.shape[-1]), w_q, None if bias is None else bias.float(),
                         x_scale.reshape(-1).float(), w_scale.float(), activation == "gelu_tanh", out_dtype)
        return y.reshape(*lead, w_q.shape[0])


register_backend(Q8KernelsBackend())
