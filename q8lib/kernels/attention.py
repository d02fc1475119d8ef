"""FP8 and INT8 attention for the ``triton`` backend (Hopper natively; Ada sm_89 by design, untested).

The math is :func:`q8lib.reference.fp8_attention_ref`: q and k rotated by the orthonormal
Hadamard matrix along the head dim, the softmax scale (times log2(e), so the kernel can use
``exp2``) folded into q, q/k quantized to e4m3 per token, v to e4m3 per channel, online softmax
over key blocks with ``P * 448`` cast to e4m3 for ``P @ V`` and the row sum kept in float32 from the
unquantized ``P``. Keys at positions ``>= key_lengths[b]`` (clamped to ``[1, Sk]``) are masked.

``torch.library`` ops (namespace ``q8lib``, with fake implementations; on CUDA ``triton_op`` ops that inductor
launches from its own code, see :mod:`q8lib.kernels._library`), so the whole path traces under
``torch.compile(fullgraph=True)`` and replays in CUDA graphs:

* ``q8lib::attn_quant_qk``: producer for q or k, optionally fused with LTX's RMSNorm across heads
  and its interleaved RoPE, so q/k leave the producer once, in FP8.
* ``q8lib::attn_quant_v``: per-channel e4m3 v, written transposed (keys contiguous).
* ``q8lib::fp8_attention_fwd``: the attention kernel.
* ``q8lib::attn_norm_rope``: for SDPA attention, LTX's RMSNorm across heads + RoPE in one pass (float out).
* ``q8lib::attn_int8_quant_qk`` + ``q8lib::int8_attention_fwd``: INT8 attention (``mode="int8"``), the math of
  :func:`q8lib.reference.int8_attention_ref`: K smoothing, q/k channel balancing, int8 q per token and k per
  64-key block, bf16/fp16 ``P @ V`` with float32 accumulation (:mod:`.int8_producers`, :mod:`.int8_attention`).

:func:`attention` is the backend op on ``[B, H, S, D]`` tensors; :func:`fused_attention_core` is
what :func:`q8lib.attention.q8_attention_core` calls with the raw projections (``[B, S, H*D]``).
Unsupported inputs fall back to the reference with a one-time warning.
"""
from __future__ import annotations

import math

import torch

from .. import reference as ref
from ..backends import attention_mode
from ._library import warn_fallback
from .attn_producers import SEQ_PAD, norm_rope, quant_qk, quant_v, rope_layout
from .cudnn_attention import fp8_tensor_attention, fp8_tensor_codes, norm_rope_e4m3
from .fp8_attention import attention_fwd
from .int8_attention import int8_attention_fwd
from .int8_producers import int8_quant_qk

__all__ = ["attention", "fused_attention_core", "fused_attention_codes", "quant_qk", "quant_v", "attention_fwd",
           "norm_rope", "int8_quant_qk", "int8_attention_fwd", "unsupported_reason", "HEAD_DIMS", "SEQ_PAD"]

HEAD_DIMS = (32, 64, 128)  # powers of two the kernels are built for (LTX: 64 for 2B, 128 for 13B)
LOG2E = 1.4426950408889634


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernels cannot take these ``[B, H, S, D]`` tensors (``None``: they can)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q/k/v must be [B, H, S, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    D = q.shape[-1]
    if D not in HEAD_DIMS or k.shape[-1] != D or v.shape[-1] != D:
        return f"head_dim {D} (v: {v.shape[-1]}) is not one of {HEAD_DIMS}"
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        return "q/k/v batch, head or key counts differ (no GQA support)"
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"dtype {q.dtype} is not bf16/fp16/fp32"
    if k.shape[2] == 0 or q.shape[2] == 0:
        return "empty sequence"
    return None


def _producer_args(D, sm_scale, qnorm, knorm, rope):
    """``(q's scale, q weight, q eps, k weight, k eps, cos, sin)`` as the producers take them: the softmax scale
    times log2(e); norms ``(weight, eps)`` or None (eps -1: no norm); RoPE ``(cos, sin)`` or None."""
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    qw, qeps = qnorm if qnorm is not None else (None, -1.0)
    kw, keps = knorm if knorm is not None else (None, -1.0)
    return (sm_scale * LOG2E, qw, qeps, kw, keps) + (rope if rope is not None else (None, None))


def _fp8_bshd(q, k, v, key_lengths, sm_scale, qnorm=None, knorm=None, rope=None, key_rope=None):
    """FP8 attention of ``[B, S, H, D]`` views -> ``[B, Sq, H, D]``; norms are ``(weight, eps)``; ``key_rope``: the
    keys' RoPE tables (default: ``rope``)."""
    qscale, qw, qeps, kw, keps, cos, sin = _producer_args(q.shape[-1], sm_scale, qnorm, knorm, rope)
    kcos, ksin = (cos, sin) if key_rope is None else key_rope
    q8, qs = quant_qk(q, qw, qeps, cos, sin, qscale)
    k8, ks = quant_qk(k, kw, keps, kcos, ksin, 1.0)
    vt8, vs = quant_v(v)
    return attention_fwd(q8, qs, k8, ks, vt8, vs, key_lengths, q.shape[1], k.shape[1], v.dtype)


def _int8_bshd(q, k, v, key_lengths, sm_scale, qnorm=None, knorm=None, rope=None):
    """INT8 attention of ``[B, S, H, D]`` views -> ``[B, Sq, H, D]``; ``v`` is read in place."""
    qscale, qw, qeps, kw, keps, cos, sin = _producer_args(q.shape[-1], sm_scale, qnorm, knorm, rope)
    q8, qs, k8, ks = int8_quant_qk(q, k, qw, qeps, kw, keps, cos, sin, key_lengths, qscale)
    return int8_attention_fwd(q8, qs, k8, ks, v, key_lengths, q.shape[1], v.dtype)


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


_FALLBACK = {"fp8": ref.fp8_attention_ref, "int8": ref.int8_attention_ref}


def attention(q, k, v, key_lengths=None, sm_scale=None, mode="fp8"):
    """Backend op: ``q, k, v [B, H, S, D]`` -> ``[B, H, Sq, D]``; ``mode`` (:func:`q8lib.backends.attention_mode`):
    the FP8 or INT8 kernels, cuDNN's FP8 engine (``"fp8_tensor"``, :mod:`.cudnn_attention`), or SDPA."""
    mode = attention_mode(mode)
    # cuDNN's engine: its own rules and errors
    if mode == "fp8_tensor" and ref.fp8_tensor_applies(q.shape[-2], k.shape[-2]):
        return fp8_tensor_attention(q, k, v, key_lengths, sm_scale)
    if mode in ("sdpa", "fp8_tensor"):  # (fp8_tensor with few queries or keys: SDPA)
        return ref.sdpa_attention(q, k, v, key_lengths, sm_scale)
    reason = unsupported_reason(q, k, v)
    if reason is not None:
        warn_fallback("attention", reason)
        return _FALLBACK[mode](q, k, v, key_lengths, sm_scale)
    q, k, v = (_last_contiguous(t).transpose(1, 2) for t in (q, k, v))  # [B, S, H, D] views
    run = _fp8_bshd if mode == "fp8" else _int8_bshd
    return run(q, k, v, key_lengths, sm_scale).transpose(1, 2)


def _split_tables(cos, sin, shape) -> bool:
    """Whether ``(cos, sin)`` are split-RoPE tables ``[B|1, H, S, D/2]`` for rows ``shape = (B, S, H, D)``."""
    try:
        return rope_layout(cos, shape) == "split" and sin.shape == cos.shape
    except ValueError:
        return False


def _norm_params(norm):
    """``(weight, eps)`` for RMSNorm modules the producer can fuse; None otherwise."""
    eps = getattr(norm, "eps", None)
    if isinstance(norm, torch.nn.RMSNorm) or type(norm).__name__ == "RMSNorm":
        if eps is None or not hasattr(norm, "weight"):
            return None
        w = norm.weight
        return (None if w is None else w.detach(), float(eps))
    return None


def _producer_tables(freqs, shape, mode):
    """RoPE tables as the producers take them for rows ``shape = (B, S, H, D)``: split ``[B|1, H, S, D/2]`` (FP8 and
    SDPA producers) or interleaved ``[B, S, H, D]`` views; ``None`` when they cannot take them."""
    cos, sin = freqs
    if ref.is_split_rope(freqs):  # LTX-2's split tables
        if mode == "int8" or not _split_tables(cos, sin, shape):
            return None
        return tuple(_last_contiguous(t) for t in (cos, sin))
    if cos.shape[-2:] != (shape[1], shape[2] * shape[3]) or sin.shape != cos.shape:
        return None
    return tuple(_last_contiguous(t).unflatten(2, (shape[2], -1)) for t in (cos, sin))


def _producer_inputs(attn, query, key, value, image_rotary_emb, key_rotary_emb, mode):
    """``(q, k, v [B, S, H, D] views, q norm, k norm, rope, key_rope)`` as the producers take them, or ``None``
    when they cannot take this module/these inputs."""
    heads = attn.heads
    qn, kn = _norm_params(attn.norm_q), _norm_params(attn.norm_k)
    if qn is None or kn is None or query.shape[-1] % heads or key.shape[-1] != query.shape[-1]:
        return None
    q, k, v = (_last_contiguous(t).unflatten(2, (heads, -1)) for t in (query, key, value))
    if unsupported_reason(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) is not None:
        return None
    if image_rotary_emb is None and key_rotary_emb is not None:
        return None
    rope = key_rope = None if image_rotary_emb is None else _producer_tables(image_rotary_emb, q.shape, mode)
    if key_rotary_emb is not None:  # the keys' own tables (FP8 and SDPA producers take q and k separately)
        key_rope = None if mode == "int8" else _producer_tables(key_rotary_emb, k.shape, mode)
    elif rope is not None and key.shape[1] != query.shape[1]:
        return None
    if image_rotary_emb is not None and (rope is None or key_rope is None):
        return None
    return q, k, v, qn, kn, rope, key_rope


def _norm_rope_rows(q, k, qn, kn, rope, key_rope):
    """The SDPA path's producers: norm_q/norm_k + RoPE, one pass per operand, float ``[B, S, H, D]`` rows."""
    cos, sin = rope if rope is not None else (None, None)
    kcos, ksin = key_rope if key_rope is not None else (None, None)
    return norm_rope(q, qn[0], qn[1], cos, sin), norm_rope(k, kn[0], kn[1], kcos, ksin)


def fused_attention_core(attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8",
                         key_rotary_emb=None):
    """``q8_attention_core`` for the triton backend. ``[B, S, H*D]`` in, ``[B, Sq, H*D]`` out; ``key_rotary_emb``:
    the keys' own RoPE tables where they differ from the queries' (LTX-2's a2v/v2a cross-attention; FP8 and SDPA).

    ``mode="fp8"``: norm_q/norm_k + RoPE + Hadamard + scale + e4m3 in one producer per operand, then the FP8
    kernel. ``"int8"``: norm_q/norm_k + RoPE in the INT8 producers (statistics pass, then smoothing, balancing,
    scale and int8 codes), then the INT8 kernel reading ``value`` in place. ``"sdpa"``: norm_q/norm_k + RoPE in
    one producer per operand (float rows), then SDPA; ``"fp8_tensor"``: the same producers, then cuDNN's FP8
    engine where there are enough queries and keys (:func:`q8lib.reference.fp8_tensor_applies`; SDPA otherwise).
    Returns ``None`` when this path cannot take the module/inputs (the caller runs the generic path).
    """
    mode = attention_mode(mode)
    inputs = _producer_inputs(attn, query, key, value, image_rotary_emb, key_rotary_emb, mode)
    if inputs is None:
        return None
    q, k, v, qn, kn, rope, key_rope = inputs
    if mode == "fp8":
        out = _fp8_bshd(q, k, v, key_lengths, None, qn, kn, rope, key_rope)
    elif mode == "int8":
        out = _int8_bshd(q, k, v, key_lengths, None, qn, kn, rope)
    elif mode == "fp8_tensor" and ref.fp8_tensor_applies(q.shape[1], k.shape[1]):
        codes, descale = _fp8_tensor_codes(q, k, v, qn, kn, rope, key_rope, key_lengths)
        out = (codes.float() * descale).to(v.dtype)
    else:
        q, k = _norm_rope_rows(q, k, qn, kn, rope, key_rope)
        out = ref.sdpa_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_lengths).transpose(1, 2)
    return out.flatten(2, 3)


def _fp8_tensor_codes(q, k, v, qn, kn, rope, key_rope, key_lengths):
    """``fp8_tensor`` from the producers' inputs: q straight to e4m3 with its norm's static scale (one producer pass),
    k's norm + RoPE in float, then :func:`fp8_tensor_codes` -> ``(codes [B, Sq, H, D], descale [])``."""
    H, D = q.shape[2], q.shape[3]
    cos, sin = rope if rope is not None else (None, None)
    kcos, ksin = key_rope if key_rope is not None else (None, None)
    qscale = ref.norm_bound_scale(qn[0], H * D, q.device)
    q8 = norm_rope_e4m3(q, qn[0], qn[1], cos, sin, qscale)
    k = norm_rope(k, kn[0], kn[1], kcos, ksin)
    return fp8_tensor_codes(q8, 1.0 / qscale, k, v, key_lengths)


def fused_attention_codes(attn, query, key, value, image_rotary_emb=None, key_lengths=None, key_rotary_emb=None):
    """``attention="fp8_tensor"`` up to the e4m3 output: :func:`fused_attention_core`'s producers and cuDNN's engine,
    ``[B, S, H*D]`` in, ``(codes [B, Sq, H*D] e4m3, descale [] float32)`` out (no decoding pass: ``to_out`` takes
    the codes); ``None`` when the producers cannot take the module/inputs."""
    inputs = _producer_inputs(attn, query, key, value, image_rotary_emb, key_rotary_emb, "fp8_tensor")
    if inputs is None or not ref.fp8_tensor_applies(query.shape[1], key.shape[1]):
        return None
    codes, descale = _fp8_tensor_codes(*inputs, key_lengths)
    return codes.flatten(2, 3), descale
