"""Pure-PyTorch reference math for every Q8 op: runs on any device, defines what the kernels
must compute, and serves as the CPU backend.

Shapes use ``M`` for tokens (any leading dims flattened), ``K`` for input and ``N`` for output
features, ``B, H, S, D`` for batch, heads, sequence and head dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import SettingsError
from .hadamard import hadamard_transform
from .quant import FP8, INT8, QMAX, dequantize_rowwise, quantize_rowwise

__all__ = [
    "quantize_activation_ref",
    "q8_matmul_ref",
    "q8_linear_ref",
    "rms_norm_ref",
    "fp8_attention_ref",
    "sdpa_attention",
    "key_lengths_to_mask",
    "apply_rotary_emb",
    "attention_inputs",
    "gelu_quantize_ref",
    "add_quantize_ref",
]

ACTIVATIONS = (None, "gelu_tanh")


def quantize_activation_ref(x: torch.Tensor, qdtype=INT8, hadamard_block: int | None = None, rotate: bool = True):
    """Rotate ``x [..., K]`` along K (unless ``rotate=False``) and quantize per token.

    Returns ``(q [..., K], scale [...] float32)``.
    """
    xr = hadamard_transform(x.float(), hadamard_block) if rotate else x.float()
    return quantize_rowwise(xr, qdtype)


def q8_matmul_ref(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``act((x_q @ w_q.T) * x_scale[:, None] * w_scale[None] + bias)`` cast to ``out_dtype``.

    ``x_q [..., K]``, ``x_scale [...]``, ``w_q [N, K]``, ``w_scale [N]``, ``bias [N]`` -> ``[..., N]``.
    Products of 8-bit values are summed exactly (float64 on CPU, like int32 accumulation) or in
    float32 elsewhere; scales, bias and GELU are applied in float32.
    """
    if activation not in ACTIVATIONS:
        raise SettingsError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x_q.dtype != w_q.dtype:
        raise TypeError(f"activation dtype {x_q.dtype} and weight dtype {w_q.dtype} differ")
    if x_q.shape[-1] != w_q.shape[-1]:
        raise SettingsError(f"inner dims differ: activations {tuple(x_q.shape)}, weight {tuple(w_q.shape)}")
    acc_dtype = torch.float64 if x_q.device.type == "cpu" else torch.float32
    acc = x_q.to(acc_dtype) @ w_q.to(acc_dtype).T
    y = acc.float() * x_scale.float()[..., None] * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    if activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    return y.to(out_dtype)


def q8_linear_ref(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    hadamard_block: int | None = None,
    rotate: bool = True,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The whole Q8 linear: ``dequant(Q(x H) · Q(W H)ᵀ) + bias`` (``w_q`` already holds ``Q(W H)``)."""
    x_q, x_s = quantize_activation_ref(x, w_q.dtype, hadamard_block, rotate)
    return q8_matmul_ref(x_q, x_s, w_q, w_scale, bias, activation, out_dtype or x.dtype)


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) [* weight] [* (1 + scale) + shift]`` in float32, returned as ``x.dtype``.

    ``x [..., D]``; ``weight [D]``; ``scale``/``shift`` broadcast to ``x`` (AdaLN modulation, e.g.
    ``[B, 1, D]`` per sample or ``[B, S, D]`` per token).
    """
    if eps <= 0:
        raise SettingsError(f"eps must be > 0, got {eps}")
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    if scale is not None:
        y = y * (1 + scale.float())
    if shift is not None:
        y = y + shift.float()
    return y.to(x.dtype)


def gelu_quantize_ref(x: torch.Tensor, qdtype=INT8, hadamard_block: int | None = None):
    """tanh-GELU of ``x [..., K]`` (rounded to ``x.dtype``, as an unfused GEMM would store it), then
    :func:`quantize_activation_ref` -> ``(q [..., K], scale [...])``."""
    return quantize_activation_ref(F.gelu(x.float(), approximate="tanh").to(x.dtype), qdtype, hadamard_block)


def add_quantize_ref(x, residual, gate, qdtype=INT8, hadamard_block=None, norm=False, weight=None, eps=1e-6,
                     scale=None, shift=None):
    """``h = x + residual * gate`` (``gate`` optional), then ``h`` or ``rms_norm_ref(h, weight, eps, scale,
    shift)`` rotated and quantized. Returns ``(h [..., K] in x.dtype, q [..., K], scale [...])``."""
    h = x + residual * gate if gate is not None else x + residual
    y = rms_norm_ref(h, weight, eps, scale, shift) if norm else h
    return (h, *quantize_activation_ref(y, qdtype, hadamard_block))


def apply_rotary_emb(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """LTX's interleaved RoPE on ``x [B, S, H*D]`` with ``(cos, sin) [B, S, H*D]`` (same math as diffusers)."""
    cos, sin = freqs
    x_real, x_imag = x.unflatten(2, (-1, 2)).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(2)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def attention_inputs(attn, query, key, value, image_rotary_emb=None):
    """``norm_q``/``norm_k`` and RoPE as diffusers' LTX processor applies them, then heads split:
    ``[B, S, H*D]`` projections -> ``q, k, v [B, H, S, D]``."""
    query, key = attn.norm_q(query), attn.norm_k(key)
    if image_rotary_emb is not None:
        query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
    return tuple(t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))


def key_lengths_to_mask(key_lengths: torch.Tensor, sk: int) -> torch.Tensor:
    """``[B]`` lengths -> boolean ``[B, 1, 1, Sk]`` mask (True = attend); lengths are clamped to ``[1, Sk]``."""
    lengths = key_lengths.clamp(1, sk)
    return (torch.arange(sk, device=key_lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


def sdpa_attention(q, k, v, key_lengths: torch.Tensor | None = None, sm_scale: float | None = None):
    """Plain scaled-dot-product attention on ``[B, H, S, D]`` with right-padded key lengths ``[B]``."""
    mask = None if key_lengths is None else key_lengths_to_mask(key_lengths, k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sm_scale)


# How P (softmax probabilities in [0, 1]) is stored in e4m3: multiplied by this constant so
# that the largest entries use the top of the e4m3 range (max 448) and small ones stay normal.
P_SCALE = 448.0


def fp8_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None = None,
    sm_scale: float | None = None,
    rotate: bool = True,
    block_n: int | None = None,
    p_scale: float = P_SCALE,
) -> torch.Tensor:
    """FP8 attention exactly as the fast kernel computes it (all steps in float32 otherwise).

    1. ``q, k [B, H, S, D]`` are rotated by the Hadamard matrix along ``D`` (``q kᵀ`` unchanged),
       the softmax scale is folded into q, and both are quantized to e4m3 per token (row scales).
    2. ``v`` is quantized to e4m3 per channel (scale per ``(b, h, d)`` over all keys).
    3. Online softmax over key blocks of ``block_n`` (``None``: one block): ``p = exp(s - m)``,
       the row sum ``l`` accumulates the float32 ``p``, and ``p * p_scale`` is cast to e4m3 for
       the ``P @ V`` product. Keys at positions ``>= key_lengths[b]`` are masked out.
    Returns ``[B, H, Sq, D]`` in ``q.dtype``.

    Why this P/l choice (measured, benchmarks/NOTES_attention.md): summing the e4m3 P into ``l``
    instead, or scaling P per block, changed the error against exact attention by < 0.2% of itself
    (e4m3 is floating point, so only P < 3.5e-5 leaves its normal range). The Triton kernel computes
    the same thing with ``exp2`` (log2(e) folded into q's scale) and gets ``P * 448`` straight from
    ``exp2(s - m + log2 448)``.
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[-2]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    qf, kf = q.float(), k.float()
    if rotate:
        qf, kf = hadamard_transform(qf), hadamard_transform(kf)
    q8, qs = quantize_rowwise(qf * sm_scale, FP8)
    k8, ks = quantize_rowwise(kf, FP8)
    v8t, vs = quantize_rowwise(v.float().transpose(-1, -2), FP8)  # per channel: rows of vᵀ
    qd = q8.float() * qs[..., None]
    kd = k8.float() * ks[..., None]
    vd = v8t.float().transpose(-1, -2)  # scale vs [B, H, D] applied at the end
    valid = None
    if key_lengths is not None:
        valid = key_lengths_to_mask(key_lengths, Sk)[:, :, 0, :]  # [B, 1, Sk]
    bn = Sk if block_n is None else block_n
    m = torch.full((B, H, Sq), -math.inf, device=q.device)
    l = torch.zeros((B, H, Sq), device=q.device)
    acc = torch.zeros((B, H, Sq, D), device=q.device)
    for start in range(0, Sk, bn):
        s = qd @ kd[:, :, start : start + bn].transpose(-1, -2)
        if valid is not None:
            s = s.masked_fill(~valid[..., None, start : start + bn], -math.inf)
        m_new = torch.maximum(m, s.amax(-1))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        alpha = torch.exp(m - m_safe)
        p = torch.exp(s - m_safe[..., None])
        l = l * alpha + p.sum(-1)
        p8 = (p * p_scale).to(FP8).float()
        acc = acc * alpha[..., None] + p8 @ vd[:, :, start : start + bn]
        m = m_new
    out = acc * vs[:, :, None, :] / (p_scale * l[..., None])
    return out.to(q.dtype)
