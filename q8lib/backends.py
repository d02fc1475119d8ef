"""Backend registry: who computes the Q8 ops.

A backend implements the five ops below on some devices. ``reference`` (pure PyTorch, every
device) always exists; faster ones (``triton``, ``q8_kernels``) register themselves when their
module is imported and report why they are unavailable otherwise. Modules ask for a backend by
name; ``"auto"`` picks the fastest one that supports the tensor's device.
"""
from __future__ import annotations

import torch

from . import reference as ref
from .errors import BackendUnavailableError

__all__ = ["Backend", "BackendUnavailableError", "register_backend", "get_backend", "resolve_backend", "list_backends"]


class Backend:
    """Base class; the default methods are the reference math. Subclasses override what they speed up."""

    name = "reference"
    priority = 0  # "auto" tries higher priorities first

    def unavailable_reason(self) -> str | None:
        """``None`` if usable in this process, else a sentence naming what is missing."""
        return None

    def supports_device(self, device: torch.device) -> bool:
        return True

    # --- ops --------------------------------------------------------------------------------
    def quantize_activation(self, x, qdtype, hadamard_block=None):
        """``x [..., K]`` -> rotated, per-token quantized ``(q [..., K], scale [...] fp32)``."""
        return ref.quantize_activation_ref(x, qdtype, hadamard_block)

    def matmul(self, x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
        """8-bit GEMM with the scale/bias/activation epilogue: ``[..., K] x [N, K] -> [..., N]``."""
        return ref.q8_matmul_ref(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)

    def rms_norm(self, x, weight=None, eps=1e-6, scale=None, shift=None):
        """RMSNorm with optional affine weight and AdaLN modulation ``* (1 + scale) + shift``."""
        return ref.rms_norm_ref(x, weight, eps, scale, shift)

    def rms_norm_quantize(self, x, weight, eps, scale, shift, qdtype, hadamard_block=None):
        """Fused RMSNorm + modulation + rotation + quantization -> ``(q, scale)``."""
        return self.quantize_activation(self.rms_norm(x, weight, eps, scale, shift), qdtype, hadamard_block)

    def attention(self, q, k, v, key_lengths=None, sm_scale=None, fp8=True):
        """``[B, H, S, D]`` attention; FP8 with Hadamard-rotated q/k when ``fp8``, else SDPA."""
        if fp8:
            return ref.fp8_attention_ref(q, k, v, key_lengths, sm_scale)
        return ref.sdpa_attention(q, k, v, key_lengths, sm_scale)

    def __repr__(self) -> str:
        return f"<q8lib backend {self.name!r}>"


_REGISTRY: dict[str, Backend] = {}
_RESOLVED: dict[tuple[str, torch.device], Backend] = {}
_OPTIONAL = {"triton": "q8lib.kernels", "q8_kernels": "q8lib.q8_kernels_backend"}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    _RESOLVED.clear()
    return backend


def _import_optional() -> None:
    import importlib

    for name, module in _OPTIONAL.items():
        if name not in _REGISTRY:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:  # the backend module itself is not written/installed
                if e.name != module:
                    raise


def list_backends() -> dict[str, str | None]:
    """Name -> ``None`` if available, else the reason it is not."""
    _import_optional()
    return {name: b.unavailable_reason() for name, b in sorted(_REGISTRY.items())}


def get_backend(name: str) -> Backend:
    """Return the named backend or raise :class:`BackendUnavailableError` saying what is missing."""
    _import_optional()
    if name not in _REGISTRY:
        raise BackendUnavailableError(f"Unknown q8lib backend {name!r}; known: {sorted(_REGISTRY)}.")
    backend = _REGISTRY[name]
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"q8lib backend {name!r} is unavailable: {reason}")
    return backend


def resolve_backend(name: str, device: torch.device | str) -> Backend:
    """``"auto"`` -> the highest-priority available backend supporting ``device``; else :func:`get_backend`.

    Cached per (name, device): modules call this on every forward.
    """
    key = (name, torch.device(device))
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(name, key[1])
    return _RESOLVED[key]


def _resolve(name: str, device: torch.device) -> Backend:
    if name != "auto":
        backend = get_backend(name)
        if not backend.supports_device(torch.device(device)):
            raise BackendUnavailableError(f"q8lib backend {name!r} does not run on device {device}.")
        return backend
    _import_optional()
    for backend in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if backend.unavailable_reason() is None and backend.supports_device(device):
            return backend
    return _REGISTRY["reference"]


register_backend(Backend())
