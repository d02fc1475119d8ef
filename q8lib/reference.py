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
    "fp8_tensor_attention_ref",
    "fp8_tensor_applies",
    "fp8_tensor_kv_ref",
    "fp8_tensor_q_scale",
    "norm_bound_scale",
    "quantize_static",
    "quantize_per_tensor",
    "int8_attention_ref",
    "int8_qk_quantize_ref",
    "int8_attention_codes_ref",
    "pv_dtype",
    "sdpa_attention",
    "key_lengths_to_mask",
    "apply_rotary_emb",
    "apply_split_rotary_emb",
    "apply_any_rotary_emb",
    "is_split_rope",
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


def check_head_gates(x: torch.Tensor, head_gate: torch.Tensor) -> None:
    """``ValueError`` unless ``head_gate`` is ``[..., H]`` with ``x``'s leading dims and device, ``H`` dividing
    ``x``'s row length ``K``."""
    H = head_gate.shape[-1] if head_gate.dim() else 0
    if head_gate.shape[:-1] != x.shape[:-1] or H < 1 or x.shape[-1] % H or head_gate.device != x.device:
        raise ValueError(f"head gates of shape {tuple(head_gate.shape)} on {head_gate.device} do not fit rows of shape "
                         f"{tuple(x.shape)} on {x.device}: expected [..., H] with the rows' leading dims and device, "
                         "H dividing the row length")


def head_gates_ref(x: torch.Tensor, head_gate: torch.Tensor) -> torch.Tensor:
    """``x [..., K]`` with each of ``H`` heads' ``K / H`` consecutive channels times its gate ``head_gate [..., H]``
    (gated attention's output, LTX-2.3), computed in float32 and rounded to ``x.dtype`` (kept in float32 for e4m3
    codes, ``attention="fp8_tensor"``'s output: rounding the gated codes again would add an error the kernel does
    not make)."""
    check_head_gates(x, head_gate)
    out = x.float() * head_gate.float().repeat_interleave(x.shape[-1] // head_gate.shape[-1], -1)
    return out if x.dtype == torch.float8_e4m3fn else out.to(x.dtype)


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


def apply_split_rotary_emb(x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """LTX-2's "split" RoPE on ``x [B, S, H*D]`` with ``(cos, sin) [B or 1, H, S, D/2]``: within each head the
    first and second halves of the channels are the two parts of each rotated pair (diffusers'
    ``apply_split_rotary_emb``, same float32 math)."""
    cos, sin = freqs
    b, s = x.shape[:2]
    h, r = cos.shape[1], cos.shape[-1]
    x1, x2 = x.reshape(b, s, h, 2, r).float().unbind(-2)  # [B, S, H, D/2] each
    c, si = cos.transpose(1, 2), sin.transpose(1, 2)  # [B, S, H, D/2]
    out = torch.stack([x1 * c - x2 * si, x2 * c + x1 * si], dim=-2)
    return out.reshape(b, s, h * 2 * r).to(x.dtype)


def is_split_rope(freqs) -> bool:
    """Whether RoPE tables are LTX-2's split layout ``[B|1, H, S, D/2]`` (4-D) rather than the interleaved
    ``[B, S, H*D]`` (3-D) of LTX-Video and LTX-2's interleaved configs."""
    return freqs is not None and freqs[0].dim() == 4


def apply_any_rotary_emb(x: torch.Tensor, freqs) -> torch.Tensor:
    """Interleaved or split RoPE, as the tables' layout says (:func:`is_split_rope`)."""
    return apply_split_rotary_emb(x, freqs) if is_split_rope(freqs) else apply_rotary_emb(x, freqs)


def attention_inputs(attn, query, key, value, image_rotary_emb=None, key_rotary_emb=None):
    """``norm_q``/``norm_k`` and RoPE as diffusers' LTX processors apply them (interleaved or LTX-2's split
    tables; the keys' own tables ``key_rotary_emb`` where they differ from the queries', as in LTX-2's a2v/v2a
    cross-attention), then heads split: ``[B, S, H*D]`` projections -> ``q, k, v [B, H, S, D]``."""
    query, key = attn.norm_q(query), attn.norm_k(key)
    if image_rotary_emb is not None:
        query = apply_any_rotary_emb(query, image_rotary_emb)
        key = apply_any_rotary_emb(key, image_rotary_emb if key_rotary_emb is None else key_rotary_emb)
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


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` -> ``(e4m3 codes with x's shape, descale [] float32)``, one scale for the whole tensor:
    ``codes * descale ~ x`` and the largest ``|x|`` lands on e4m3's 448 (an all-zero tensor: zero codes)."""
    amax = x.detach().abs().amax().float()
    inv = torch.where(amax > 0, QMAX[FP8] / amax, torch.zeros_like(amax))
    codes = (x.float() * inv).clamp(-QMAX[FP8], QMAX[FP8]).to(FP8)
    return codes, amax * (1.0 / QMAX[FP8])


#: ``attention="fp8_tensor"`` runs FP8 only with at least this many queries and keys; elsewhere (LTX-2's audio and
#: audio-video attentions, short text) SDPA in the model dtype. FP8's passes over k and v cost ~1 / queries of the
#: attention's time: with 126 audio queries over 6144 video keys ~5 ms a forward for a nearly free attention; with 6144
#: queries over 1024 text keys the engine should win (not yet a measured A/B; benchmarks/NOTES_attention.md, session
#: 13). Read at call time (tests lower them to exercise FP8 on tiny models).
FP8_TENSOR_MIN_QUERIES = 2048
FP8_TENSOR_MIN_KEYS = 1024


def fp8_tensor_applies(num_queries: int, num_keys: int) -> bool:
    """Whether ``attention="fp8_tensor"`` runs FP8 (not SDPA) for ``num_queries`` queries over ``num_keys`` keys
    (:data:`FP8_TENSOR_MIN_QUERIES`, :data:`FP8_TENSOR_MIN_KEYS`)."""
    return num_queries >= FP8_TENSOR_MIN_QUERIES and num_keys >= FP8_TENSOR_MIN_KEYS


def norm_bound_scale(weight: torch.Tensor | None, width: int, device=None) -> torch.Tensor:
    """``attention="fp8_tensor"``'s static scale for q (``[]`` float32; codes = ``q * scale``) when q comes out of an
    RMSNorm over ``width`` channels with ``weight`` (LTX's ``norm_q``, across all heads): a normalized row's squares
    sum to at most ``width * max(weight^2)``, so no entry exceeds ``sqrt(width) * max|weight|``, and RoPE (a rotation
    of channel pairs) keeps that bound. ``448 / bound`` never saturates and needs no pass over q. e4m3 is a
    floating-point grid: entries far below the bound keep their 3 mantissa bits down to 2^-6 * bound / 448."""
    wmax = torch.ones((), device=device) if weight is None else weight.detach().abs().amax().float()
    return QMAX[FP8] / (wmax.clamp_min(1e-30) * math.sqrt(width))


def fp8_tensor_q_scale(attn) -> torch.Tensor | None:
    """:func:`norm_bound_scale` for an attention module whose ``norm_q`` is an RMSNorm across all of its ``H * D``
    query channels (LTX-Video's and LTX-2's); ``None`` otherwise (q's scale then comes from its amax)."""
    norm, width = getattr(attn, "norm_q", None), getattr(getattr(attn, "to_q", None), "out_features", None)
    if type(norm).__name__ != "RMSNorm" or width is None:
        return None
    w = getattr(norm, "weight", None)
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    n = math.prod(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape
    if n != width or (w is not None and w.numel() != width):
        return None
    return norm_bound_scale(w, width, w.device if w is not None else None)


def quantize_static(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` -> ``(e4m3 codes of x * scale, saturated, descale [] = 1 / scale)`` for a scale known in advance."""
    scale = scale.float()
    return (x.float() * scale).clamp(-QMAX[FP8], QMAX[FP8]).to(FP8), 1.0 / scale


def fp8_tensor_attention_ref(q, k, v, key_lengths=None, sm_scale: float | None = None, k_smooth: bool = True,
                             codes: bool = False, q_scale: torch.Tensor | None = None):
    """FP8 attention with one scale per tensor (``attention="fp8_tensor"``): what cuDNN's FP8 SDPA engine computes
    behind q8lib's producers, emulated in float32 (the GPU path is :mod:`q8lib.kernels.cudnn_attention`).

    1. ``k_smooth``: the mean key over the valid keys is subtracted from every key (exact under softmax: each
       query row's scores move by one constant), which takes a shared offset out of the keys' range.
    2. ``q, k, v [B, H, S, D]`` are each quantized to e4m3 with one scale (:func:`quantize_per_tensor`; q with
       ``q_scale`` instead where given: the norm's static bound, :func:`fp8_tensor_q_scale`); masked keys and
       values are zeroed first, so padding (often most of a text sequence) takes no part in the scales.
    3. ``P = exp(s - rowmax)`` is stored as e4m3 of ``P * 448``; the row sum is kept in float32.
    4. The output is written in e4m3 with ``v``'s scale (``|O| <= amax(v)``: a convex combination of v's rows).
    Keys at positions ``>= key_lengths[b]`` (clamped to ``[1, Sk]``) are masked. Returns ``[B, H, Sq, D]`` in
    ``v.dtype``, or with ``codes=True`` the output's e4m3 codes and their descale ``[]`` (what ``to_out`` can take).
    No rotation of q/k: measured on outlier inputs it does not help per-tensor scales
    (``benchmarks/results/accuracy/cudnn_fp8_emulation_cpu.json``), while K smoothing does.
    """
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    q8, dq = quantize_per_tensor(q) if q_scale is None else quantize_static(q, q_scale)
    k8, dk, v8, dv = fp8_tensor_kv_ref(k, v, key_lengths, k_smooth)
    s = (q8.float() @ k8.float().transpose(-1, -2)) * (dq * dk * sm_scale)
    if key_lengths is not None:
        s = s.masked_fill(~key_lengths_to_mask(key_lengths, k.shape[-2]), -math.inf)
    p = torch.exp(s - s.amax(-1, keepdim=True))
    pv = (p * P_SCALE).to(FP8).float() @ v8.float()
    o_codes = (pv / (P_SCALE * p.sum(-1, keepdim=True))).clamp(-QMAX[FP8], QMAX[FP8]).to(FP8)
    return (o_codes, dv) if codes else (o_codes.float() * dv).to(v.dtype)


def fp8_tensor_kv_ref(k, v, key_lengths=None, k_smooth: bool = True):
    """k and v ``[B, H, Sk, D]`` as :func:`fp8_tensor_attention_ref` quantizes them: ``(k8, dk, v8, dv)``, padding
    (keys past ``key_lengths``) as +0 codes, k smoothed by the mean of the valid keys (per ``(b, h, d)``)."""
    valid = _valid_keys(key_lengths, k.shape[0], k.shape[-2], k.device) > 0
    kf = torch.where(valid, k.float(), 0.0)
    if k_smooth:
        kf = torch.where(valid, kf - kf.sum(dim=-2, keepdim=True) / valid.sum(dim=-2, keepdim=True), 0.0)
    return (*quantize_per_tensor(kf), *quantize_per_tensor(torch.where(valid, v.float(), 0.0)))


# INT8 attention (issue #14, benchmarks/NOTES_attention.md "Session 6"): keys share one int8 scale per block of
# this many keys (the kernel's key tile), queries have one per token.
INT8_KEY_BLOCK = 64
LOG2E = 1.4426950408889634


def pv_dtype(v_dtype: torch.dtype) -> torch.dtype:
    """The 16-bit type of ``P`` and ``V`` in INT8 attention's ``P @ V``: fp16 for fp16 ``v``, else bf16 (bf16 and
    fp32 ``v``: bf16 has fp32's range, so no ``v`` can overflow it)."""
    return torch.float16 if v_dtype == torch.float16 else torch.bfloat16


def _valid_keys(key_lengths, B, Sk, device):
    """``[B, 1, Sk, 1]`` float mask of the keys below ``key_lengths`` (clamped to ``[1, Sk]``); all ones without."""
    if key_lengths is None:
        return torch.ones(B, 1, Sk, 1, device=device)
    return key_lengths_to_mask(key_lengths.to(device), Sk)[:, :, 0, :, None].float()


def int8_qk_quantize_ref(q, k, key_lengths=None, q_scale: float = 1.0, block: int = INT8_KEY_BLOCK):
    """q/k of INT8 attention: ``q [B, H, Sq, D]``, ``k [B, H, Sk, D]`` (after norm + RoPE) -> ``(q8, qs, k8, ks)``.

    1. K smoothing: the mean key over the valid keys (``key_lengths``) of each (batch, head) is subtracted
       (softmax is invariant to it: it adds the same logit to every key of a query row).
    2. q/k channel balancing: ``q_c / λ_c`` and ``k_c · λ_c`` with ``λ_c = sqrt(amax_c(q) / amax_c(k))`` per
       (batch, head, channel), amaxes over tokens (valid keys), of the smoothed k; ``λ_c = 1`` where either is 0.
       ``q · k`` is unchanged; both then span the same range in every channel.
    3. ``q_scale`` (the softmax scale, times log2(e) for an exp2 kernel) multiplies q.
    4. int8: q per token (``qs [B, H, Sq]``), k per block of ``block`` keys (``ks [B, H, ceil(Sk / block)]``,
       one scale over the block's valid keys; invalid keys get code 0), as :func:`q8lib.quant.quantize_rowwise`.
    """
    B, H, Sk, D = k.shape
    qf, kf = q.float(), k.float()
    valid = _valid_keys(key_lengths, B, Sk, k.device)
    mean = (kf * valid).sum(-2, keepdim=True) / valid.sum(-2, keepdim=True)
    ks_ = (kf - mean) * valid
    qamax, kamax = qf.abs().amax(-2, keepdim=True), ks_.abs().amax(-2, keepdim=True)
    lam = torch.where((qamax > 0) & (kamax > 0), (qamax / kamax).sqrt(), torch.ones_like(qamax))
    q8, qs = quantize_rowwise(qf * (q_scale / lam), INT8)
    nb = -(-Sk // block)
    kb = F.pad(ks_ * lam, (0, 0, 0, nb * block - Sk)).reshape(B, H, nb, block * D)
    k8, ks = quantize_rowwise(kb, INT8)
    return q8, qs, k8.reshape(B, H, nb * block, D)[:, :, :Sk], ks


def int8_attention_codes_ref(q8, qs, k8, ks, v, key_lengths=None, block: int = INT8_KEY_BLOCK):
    """Attention from INT8 codes (one key block, float32): ``s = (q8 · k8) * qs * ks`` is the logit in log2 units
    (``qs`` holds the softmax scale times log2(e)), keys ``>= key_lengths[b]`` masked, ``P = exp2(s - max)``;
    ``P * 448`` rounded to :func:`pv_dtype` (the kernel shares the FP8 kernel's softmax step, which scales P to
    448: it cancels in the normalization, and keeps P >= 1.4e-7 out of fp16's subnormals) times ``v`` rounded
    likewise, accumulated in float32, divided by the row sum of the unrounded P. ``v [B, H, Sk, D]`` ->
    float32 ``[B, H, Sq, D]``."""
    Sk = k8.shape[-2]
    t = q8.double() @ k8.double().transpose(-1, -2)  # exact, as int32 accumulation
    kscale = ks.repeat_interleave(block, -1)[..., :Sk]
    s = t.float() * (qs[..., None] * kscale[..., None, :])
    if key_lengths is not None:
        s = s.masked_fill(key_lengths_to_mask(key_lengths.to(s.device), Sk) == 0, -math.inf)
    p = torch.exp2(s - s.amax(-1, keepdim=True))
    dt = pv_dtype(v.dtype)
    p16 = (p * P_SCALE).to(dt).float()
    return (p16 @ v.to(dt).float()) / (P_SCALE * p.sum(-1, keepdim=True))


def int8_attention_ref(q, k, v, key_lengths=None, sm_scale: float | None = None):
    """INT8 attention on ``q, k, v [B, H, S, D]`` (after norm + RoPE) as the kernels compute it: q/k through
    :func:`int8_qk_quantize_ref` (K smoothing, channel balancing, int8 q per token, k per 64-key block), then
    :func:`int8_attention_codes_ref` (exp2 softmax, 16-bit ``P @ V`` with float32 accumulation). No rotation:
    any head size works. Returns ``[B, H, Sq, D]`` in ``q.dtype``."""
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    q8, qs, k8, ks = int8_qk_quantize_ref(q, k, key_lengths, sm_scale * LOG2E)
    return int8_attention_codes_ref(q8, qs, k8, ks, v, key_lengths).to(q.dtype)
