"""Q8 modules that replace ``nn.Linear``, diffusers' GELU projection and RMSNorm at runtime.

They hold their 8-bit state as buffers (so ``load_state_dict(assign=True)`` and ``.to(device)``
work) and compute through the backend registry. ``.to(dtype)`` never converts the 8-bit weights
or their float32 scales: only the device moves.
"""
from __future__ import annotations

import torch
from torch import nn

from .backends import resolve_backend
from .errors import SettingsError
from .hadamard import check_hadamard_size, hadamard_transform
from .quant import QMAX, qdtype_from_name, quantize_rowwise

__all__ = ["Q8Linear", "Q8GELU", "Q8RMSNorm", "quantize_weight"]


def quantize_weight(weight: torch.Tensor, qdtype="int8", hadamard_block: int | None = None):
    """``W [N, K]`` -> ``(Q(W H) [N, K], scale [N] float32)``, rotated along K, one scale per output channel."""
    check_hadamard_size(weight.shape[-1], hadamard_block)
    return quantize_rowwise(hadamard_transform(weight.float(), hadamard_block), qdtype)


class _KeepDtype(nn.Module):
    """Mixin: ``_apply`` moves these buffers between devices but never changes their dtype."""

    _fixed_dtype_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        saved = {n: getattr(self, n) for n in self._fixed_dtype_buffers if getattr(self, n, None) is not None}
        out = super()._apply(fn, recurse)
        for name, t in saved.items():
            device = fn(torch.empty(0, device=t.device)).device  # where fn sends tensors
            self._buffers[name] = t.to(device)
        return out


class Q8Linear(_KeepDtype):
    """``y = act(dequant(Q(x H) · Q(W H)ᵀ) + bias)``, per-token x per-channel scales.

    Buffers: ``weight [N, K]`` int8 or float8_e4m3fn holding ``Q(W H)``, ``scales [N]`` float32,
    ``bias [N]`` float32 (the key names of the earlier public Q8 checkpoint).
    Input ``[..., K]`` in bf16/fp16/fp32 -> output ``[..., N]`` in the input dtype.
    """

    _fixed_dtype_buffers = ("weight", "scales", "bias")

    def __init__(self, in_features, out_features, bias=True, qdtype="int8", hadamard_block=None,
                 activation=None, backend="auto", device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qdtype = qdtype_from_name(qdtype)
        check_hadamard_size(in_features, hadamard_block)
        self.hadamard_block = hadamard_block
        self.activation = activation
        self.backend = backend
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=self.qdtype, device=device))
        self.register_buffer("scales", torch.zeros(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, qdtype="int8", hadamard_block=None, activation=None, backend="auto"):
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, qdtype, hadamard_block,
                activation, backend, device="meta")
        w_q, w_s = quantize_weight(linear.weight.detach(), qdtype, hadamard_block)
        m.weight, m.scales = w_q, w_s
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m

    def forward(self, x: torch.Tensor, x_scale: torch.Tensor | None = None, out_dtype=None) -> torch.Tensor:
        """``x [..., K]`` float, or already-quantized ``x`` with its ``x_scale [...]`` (fused producers)."""
        backend = resolve_backend(self.backend, self.weight.device)
        if x_scale is None:
            out_dtype = out_dtype or x.dtype
            x, x_scale = backend.quantize_activation(x, self.qdtype, self.hadamard_block)
        return backend.matmul(x, x_scale, self.weight, self.scales, self.bias, self.activation,
                              out_dtype or torch.bfloat16)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 ``W`` this layer represents (rotated back), for inspection and tests."""
        w = self.weight.float() * self.scales[:, None]
        return hadamard_transform(w, self.hadamard_block)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, qdtype={self.qdtype}, "
                f"hadamard_block={self.hadamard_block}, activation={self.activation}, backend={self.backend!r}")


class Q8GELU(nn.Module):
    """Drop-in for diffusers' ``GELU`` (``proj`` + tanh-GELU): the GELU runs in the GEMM epilogue."""

    def __init__(self, proj: Q8Linear):
        super().__init__()
        if proj.activation != "gelu_tanh":
            raise SettingsError("Q8GELU needs a Q8Linear with activation='gelu_tanh'")
        self.proj = proj

    @classmethod
    def from_gelu(cls, gelu, qdtype="int8", hadamard_block=None, backend="auto"):
        if getattr(gelu, "approximate", None) != "tanh":
            raise SettingsError(f"only tanh-approximate GELU is supported, got approximate={gelu.approximate!r}")
        return cls(Q8Linear.from_linear(gelu.proj, qdtype, hadamard_block, "gelu_tanh", backend))

    def forward(self, x):
        return self.proj(x)


class Q8RMSNorm(nn.Module):
    """RMSNorm with eps, optional affine weight, optional AdaLN ``scale``/``shift`` (``[..., D]`` in and out)."""

    def __init__(self, dim, eps=1e-6, elementwise_affine=False, backend="auto", device=None):
        super().__init__()
        if eps <= 0:
            raise SettingsError(f"RMSNorm eps must be > 0, got {eps}")
        self.dim, self.eps, self.backend = dim, eps, backend
        self.weight = nn.Parameter(torch.ones(dim, device=device)) if elementwise_affine else None

    @classmethod
    def from_norm(cls, norm, backend="auto"):
        weight = getattr(norm, "weight", None)
        dim = weight.shape[0] if weight is not None else (norm.dim[0] if hasattr(norm.dim, "__len__") else norm.dim)
        m = cls(dim, norm.eps, weight is not None, backend, device="meta")
        if weight is not None:
            m.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        return m

    def forward(self, x, scale=None, shift=None):
        backend = resolve_backend(self.backend, x.device)
        return backend.rms_norm(x, self.weight, self.eps, scale, shift)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}, backend={self.backend!r}"
