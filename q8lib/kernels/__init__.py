"""The ``triton`` backend: Triton kernels for NVIDIA GPUs (Hopper sm_90 natively; Ada sm_89 by design).

Ops live in ``q8lib.kernels.linear`` (quantization, 8-bit GEMMs, fused norms) and
``q8lib.kernels.attention`` (FP8 attention). Each op falls back to the reference math, with a
one-time warning naming the op and the reason, when a shape or dtype is not supported.
"""
from __future__ import annotations

import importlib
import warnings

import torch

from ..backends import Backend, register_backend

_WARNED: set = set()


def warn_fallback(op: str, reason: str) -> None:
    """One warning per (op, reason): the kernel cannot take this input, the reference runs instead."""
    if (op, reason) not in _WARNED:
        _WARNED.add((op, reason))
        warnings.warn(f"q8lib triton backend: {op} falls back to the reference math ({reason})", stacklevel=3)


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


_MODS: dict = {}  # imported op modules: a plain dict lookup is traceable by torch.compile, importlib is not


def _ops(name):
    if name not in _MODS:
        try:
            _MODS[name] = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            _MODS[name] = None
    return _MODS[name]


class TritonBackend(Backend):
    name = "triton"
    priority = 10

    def unavailable_reason(self):
        return _triton_reason()

    def supports_device(self, device):
        return device.type == "cuda"

    def _call(self, module, op, *args, **kwargs):
        mod = _ops(module)
        fn = getattr(mod, op, None) if mod is not None else None
        if fn is None:
            warn_fallback(op, "no Triton kernel for this op yet")
            return getattr(super(), op)(*args, **kwargs)
        return fn(*args, **kwargs)

    def quantize_activation(self, x, qdtype, hadamard_block=None):
        return self._call("linear", "quantize_activation", x, qdtype, hadamard_block)

    def matmul(self, x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
        return self._call("linear", "matmul", x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)

    def rms_norm(self, x, weight=None, eps=1e-6, scale=None, shift=None):
        return self._call("linear", "rms_norm", x, weight, eps, scale, shift)

    def rms_norm_quantize(self, x, weight, eps, scale, shift, qdtype, hadamard_block=None):
        return self._call("linear", "rms_norm_quantize", x, weight, eps, scale, shift, qdtype, hadamard_block)

    def attention(self, q, k, v, key_lengths=None, sm_scale=None, fp8=True):
        return self._call("attention", "attention", q, k, v, key_lengths, sm_scale, fp8)


register_backend(TritonBackend())
