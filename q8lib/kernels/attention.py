"""FP8 attention for the ``triton`` backend (Hopper natively; Ada sm_89 by design, untested).

The math is :func:`q8lib.reference.fp8_attention_ref`: q and k rotated by the orthonormal
Hadamard matrix along the head dim, the softmax scale (times log2(e), so the kernel can use
``exp2``) folded into q, q/k quantized to e4m3 per token, v to e4m3 per channel, online softmax
over key blocks with ``P * 448`` cast to e4m3 for ``P @ V`` and the row sum kept in float32 from the
unquantized ``P``. Keys at positions ``>= key_lengths[b]`` (clamped to ``[1, Sk]``) are masked.

``torch.library`` ops (namespace ``q8lib``, with fake implementations; on CUDA ``triton_op``\s that inductor
launches from its own code, see :mod:`q8lib.kernels._library`), so the whole path traces under
``torch.compile(fullgraph=True)`` and replays in CUDA graphs:

* ``q8lib::attn_quant_qk``: producer for q or k, optionally fused with LTX's RMSNorm across heads
  and its interleaved RoPE, so q/k leave the producer once, in FP8.
* ``q8lib::attn_quant_v``: per-channel e4m3 v, written transposed (keys contiguous).
* ``q8lib::fp8_attention_fwd``: the attention kernel.
* ``q8lib::attn_norm_rope``: for SDPA attention, LTX's RMSNorm across heads + RoPE in one pass (float out).

:func:`attention` is the backend op on ``[B, H, S, D]`` tensors; :func:`fused_attention_core` is
what :func:`q8lib.attention.q8_attention_core` calls with the raw projections (``[B, S, H*D]``).
Unsupported inputs fall back to the reference with a one-time warning.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import reference as ref
from ..hadamard import hadamard_signs
from . import warn_fallback
from ._library import dual_op, launchable

__all__ = ["attention", "fused_attention_core", "quant_qk", "quant_v", "attention_fwd", "norm_rope", "unsupported_reason",
           "HEAD_DIMS", "SEQ_PAD"]

HEAD_DIMS = (32, 64, 128)  # powers of two the kernels are built for (LTX: 64 for 2B, 128 for 13B)
SEQ_PAD = 128  # q/k/v sequences are padded to this multiple (>= every BLOCK_M/BLOCK_N used)
LOG2E = 1.4426950408889634
FP8 = torch.float8_e4m3fn

try:
    import triton

    from . import _attn_triton as _k
except ImportError:  # the backend reports triton as missing; nothing here is called then
    triton = None
    _k = None


def _pad(n: int) -> int:
    return -(-n // SEQ_PAD) * SEQ_PAD


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"  # CPU tensors only run under TRITON_INTERPRET=1


# Tile configuration of the attention kernel:
# (BLOCK_M, BLOCK_N, num_warps, num_stages, fast_exp (inline ex2.approx.ftz), warp_specialize,
#  split: two BLOCK_M query sub-tiles a program).
# Picked on an H100 by benchmarks/bench_attention.py --sweep (see benchmarks/NOTES_attention.md).
_FWD_CONFIG = {64: (64, 64, 4, 3, False, False, False), 128: (64, 128, 4, 3, False, False, False)}
_FWD_CONFIG_CPU = (32, 32, 4, 1, False, False, False)  # interpreter: small tiles, no inline PTX


_FWD_CONFIG_ADA = (64, 64, 4, 2, False, False, False)  # sm_89: ~100 KB shared memory a SM; untested


def fwd_config(d: int, device: torch.device):
    if device.type == "cpu":
        return _FWD_CONFIG_CPU
    major, minor = torch.cuda.get_device_capability(device)
    return fwd_config_for(d, major * 10 + minor)


def fwd_config_for(d: int, capability: int):
    """The attention kernel's tile config for head dim ``d`` on GPUs of compute capability ``capability`` (89: sm_89)."""
    if capability < 90:
        return _FWD_CONFIG_ADA
    return _FWD_CONFIG.get(d, (64, 64, 4, 3, False, False, False))


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


# --------------------------------------------------------------------------------------------
# producers
# --------------------------------------------------------------------------------------------
def _hadamard_pm1(d: int, device: torch.device) -> torch.Tensor:
    """``[d, d]`` Sylvester Hadamard with entries +-1, exact in bf16 (float32 for the interpreter,
    whose bf16 dots are wrong); the producer scales by 1/sqrt(d)."""
    return hadamard_signs(d, torch.float32 if device.type == "cpu" else torch.bfloat16, device)


def qk_kind(D: int, norm: bool, rope: bool, quant: bool = True) -> str:
    """Tuning-table key of a q/k producer (see ``row_tune.json``): ``"qk/64/norm_rope"`` (FP8 producer),
    ``"qkn/64/norm_rope"`` (norm + RoPE only, the SDPA path), ..."""
    return f"{'qk' if quant else 'qkn'}/{D}/{'norm' if norm else 'nonorm'}_{'rope' if rope else 'norope'}"


# The norm + RoPE producer's launch where the table has no entry (measured near-best for the q/k producers on
# the H100); the FP8 producer keeps its tile-sized default there.
_QK_DEFAULT_TUNE = {"block_t": 2, "warps": 4, "stages": 1, "per_sm": 4}


def _qk_launch(x, weight, eps, cos, sin, s_pad, tune, quant):
    """Common launch arguments of the q/k producers for ``x [B, S, H, D]``: ``(grid, args, n_tiles, meta)``.
    ``s_pad``: the padded sequence the tiles cover (``None``: ``S`` rounded up to whole tiles)."""
    from .linear import _capability, _programs, _table_tune

    B, S, H, D = x.shape
    has_rope = cos is not None
    if tune is None and not _interpreting(x):
        tune = _table_tune(x.device, qk_kind(D, eps >= 0, has_rope, quant))
    cap = _capability(x.device.index or 0) if x.is_cuda else 90
    meta, per_sm = qk_meta(D, H, eps >= 0, weight is not None, has_rope, quant, tune, _interpreting(x), cap)
    block_t = meta["BLOCK_T"]
    if s_pad is None:  # the norm-only producer: tiles cover whole blocks of tokens, the tail is masked
        s_pad = -(-S // block_t) * block_t
    if s_pad % block_t:
        raise ValueError(f"block_t {block_t} must divide the padded sequence {s_pad}")
    if has_rope:
        scb = cos.stride(0) if cos.shape[0] > 1 else 0
        cs = (cos, sin, scb, cos.stride(1), cos.stride(2))
    else:
        cs = (x, x, 0, 0, 0)
    n_tiles = B * (s_pad // block_t)
    progs = _programs(x.device, n_tiles, per_sm)
    args = (x, x.stride(0), x.stride(1), x.stride(2), weight if weight is not None else x, *cs)
    return (progs,), args, n_tiles, meta


def qk_meta(D: int, H: int, norm: bool, weight: bool, rope: bool, quant: bool, tune: dict | None,
            interpret: bool = False, capability: int = 90):
    """``(meta, per_sm)`` of a q/k producer for ``H`` heads of ``D``: its constexprs, ``num_warps`` and
    ``num_stages``, and persistent programs per SM. ``tune``: a fixed launch or the table entry
    (``None``: the defaults; below sm_90 one pipeline stage, as with 3 the D=64 cross-attention and the
    D=128 producers need 106-180 KB of shared memory, over Ada's 99 KB). What :func:`_qk_launch`
    launches (``q8lib.kernels.targets`` compiles it too)."""
    hp = triton.next_power_of_2(H)
    tune = tune or ({} if quant else _QK_DEFAULT_TUNE)
    # default: ~64-128 (token, head) rows a tile (8192 elements) over 8 warps; with RoPE six [rows, D]
    # float32 tiles are live (x, its pair partner, cos, sin, weights), so half that
    per_tile = (4096 if rope else 8192) // D
    block_t = tune.get("block_t") or max(1, max(16, per_tile) // hp)
    if interpret:
        block_t = max(1, 32 // hp)
    meta = {"D": D, "HP": hp, "BLOCK_T": block_t, "HAS_NORM": norm, "HAS_WEIGHT": weight, "HAS_ROPE": rope,
            "num_warps": tune.get("warps") or (4 if D * hp * block_t <= 2048 else 8),
            "num_stages": tune.get("stages", 3 if capability >= 90 else 1)}
    return meta, tune.get("per_sm", 4)


def _launch_quant_qk(x, weight, eps, cos, sin, out_scale, out, out_scale_t, tune=None):
    """``x [B, S, H, D]`` -> fills ``out [B, H, Sp, D]`` e4m3 and ``out_scale_t [B, H, Sp]``.

    ``tune`` (benchmarks) fixes ``block_t`` (tokens a tile), ``warps``, ``stages`` and ``per_sm``
    (persistent programs per SM); else the measured table entry for this GPU, else the defaults.
    """
    B, S, H, D = x.shape
    grid, args, n_tiles, meta = _qk_launch(x, weight, eps, cos, sin, out.shape[2], tune, quant=True)
    launchable(_k._qk_quant_kernel, x)[grid](
        *args, _hadamard_pm1(D, x.device), out, out_scale_t,
        S, out.shape[2], H, float(eps), float(out_scale) / math.sqrt(D), n_tiles,
        GRID_ROUND=_interpreting(x), **meta,
    )


def _launch_norm_rope(x, weight, eps, cos, sin, out, tune=None):
    """``x [B, S, H, D]`` -> fills ``out [B, S, H, D]`` (contiguous) with norm + RoPE rows."""
    B, S, H, D = x.shape
    grid, args, n_tiles, meta = _qk_launch(x, weight, eps, cos, sin, None, tune, quant=False)
    launchable(_k._qk_norm_rope_kernel, x)[grid](*args, out, S, H, float(eps), n_tiles, **meta)


def _quant_qk_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor | None,
             sin: torch.Tensor | None, out_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k producer: ``x [B, S, H, D]`` (last stride 1) -> ``(x8 [B, H, Sp, D] e4m3, scale [B, H, Sp] fp32)``.

    ``eps >= 0``: RMSNorm over all ``H*D`` channels of a token first (``weight [H*D]`` or None);
    ``eps < 0``: no norm. ``cos``/``sin [B|1, S, H, D]``: LTX's interleaved RoPE. Then Hadamard
    along ``D``, times ``out_scale``, e4m3 per (token, head). ``Sp`` = ``S`` padded to 128; the
    padded rows are zero with scale 0.
    """
    B, S, H, D = x.shape
    out = torch.empty(B, H, _pad(S), D, device=x.device, dtype=FP8)
    scale = torch.empty(B, H, _pad(S), device=x.device, dtype=torch.float32)
    _launch_quant_qk(x, weight, eps, cos, sin, out_scale, out, scale)
    return out, scale


def _quant_qk_fake(x, weight, eps, cos, sin, out_scale):
    B, S, H, D = x.shape
    return x.new_empty(B, H, _pad(S), D, dtype=FP8), x.new_empty(B, H, _pad(S), dtype=torch.float32)


# triton_ops on CUDA like the row kernels (inductor launches them from its own code). They were opaque custom ops
# until the kernels cast their float arguments to fp32: inductor passes floats as fp64, and an fp64 value cast
# to e4m3 does not compile (triton 3.6, "Unsupported conversion from f64 to f8E4M3FN").
quant_qk = dual_op("attn_quant_qk", _quant_qk_impl, _quant_qk_fake)


def _norm_rope_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor | None,
              sin: torch.Tensor | None) -> torch.Tensor:
    """SDPA-path producer: ``x [B, S, H, D]`` (last stride 1) -> ``[B, S, H, D]`` contiguous in ``x.dtype``:
    RMSNorm across all ``H*D`` channels of a token (``eps >= 0``; ``weight [H*D]`` or None), then LTX's
    interleaved RoPE (``cos``/``sin [B|1, S, H, D]``), computed in float32 and rounded once."""
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x.numel():
        _launch_norm_rope(x, weight, eps, cos, sin, out)
    return out


def _norm_rope_fake(x, weight, eps, cos, sin):
    return x.new_empty(x.shape)


norm_rope = dual_op("attn_norm_rope", _norm_rope_impl, _norm_rope_fake)


def _launch_quant_v(v, out, vscale):
    """``v [B, S, H, D]`` -> fills ``out [B, H, D, Sp]`` e4m3 and ``vscale [B, H, D]``."""
    B, S, H, D = v.shape
    s_pad = out.shape[-1]
    interp = _interpreting(v)
    # amax over all keys (as the reference), in chunks of keys: enough programs to fill the GPU
    amax = torch.zeros(B, H, D, device=v.device, dtype=torch.float32)
    chunk, block_k, warps = v_tiles(interp)
    launchable(_k._v_amax_kernel, v)[(triton.cdiv(S, chunk), B * H)](
        v, v.stride(0), v.stride(1), v.stride(2), amax, S, H, D=D, BLOCK_K=block_k, CHUNK=chunk,
        num_warps=warps,
    )
    launchable(_k._v_quant_kernel, v)[(s_pad // block_k, B * H)](
        v, v.stride(0), v.stride(1), v.stride(2), amax, out, vscale, S, s_pad, H,
        D=D, BLOCK_K=block_k, GRID_ROUND=interp, num_warps=warps,
    )


def v_tiles(interpret: bool = False) -> tuple[int, int, int]:
    """``(CHUNK, BLOCK_K, num_warps)`` of the v producers: keys a ``_v_amax_kernel`` program folds, keys a
    tile (both kernels), warps (both); smaller in the interpreter."""
    return (256, 32, 4) if interpret else (512, 64, 4)


def _quant_v_impl(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v producer: ``v [B, S, H, D]`` -> ``(vt8 [B, H, D, Sp] e4m3, scale [B, H, D] fp32)``, per channel."""
    B, S, H, D = v.shape
    out = torch.empty(B, H, D, _pad(S), device=v.device, dtype=FP8)
    scale = torch.empty(B, H, D, device=v.device, dtype=torch.float32)
    _launch_quant_v(v, out, scale)
    return out, scale


def _quant_v_fake(v):
    B, S, H, D = v.shape
    return v.new_empty(B, H, D, _pad(S), dtype=FP8), v.new_empty(B, H, D, dtype=torch.float32)


quant_v = dual_op("attn_quant_v", _quant_v_impl, _quant_v_fake)


# --------------------------------------------------------------------------------------------
# attention kernel
# --------------------------------------------------------------------------------------------
def _launch_fwd(q8, qs, k8, ks, vt8, vs, key_lengths, sk, out, config=None):
    """Fill ``out [B, Sq, H, D]`` (last stride 1) with FP8 attention of the quantized operands."""
    B, H, sq_pad, D = q8.shape
    sq = out.shape[1]
    sk_pad = k8.shape[2]
    bm, bn, warps, stages, fast_exp, warp_spec, split = config or fwd_config(D, q8.device)
    rows = bm * (2 if split else 1)
    if SEQ_PAD % rows or SEQ_PAD % bn:
        raise ValueError(f"attention tile config {config} needs tiles dividing the sequence padding {SEQ_PAD}")
    grid = (triton.cdiv(sq, rows), B * H)
    lens = key_lengths if key_lengths is not None else qs  # dummy pointer when unused
    return launchable(_k._attn_fwd_kernel, q8)[grid](
        q8, qs, k8, ks, vt8, vs, lens,
        out, out.stride(0), out.stride(1), out.stride(2),
        H, sq, sq_pad, sk, sk_pad,
        D=D, BLOCK_M=bm, BLOCK_N=bn, HAS_LENS=key_lengths is not None, FAST_EXP=fast_exp, GRID_ROUND=_interpreting(q8), WARP_SPEC=warp_spec, SPLIT=split,
        num_warps=warps, num_stages=stages,
    )


def _attention_fwd_impl(q8: torch.Tensor, qs: torch.Tensor, k8: torch.Tensor, ks: torch.Tensor, vt8: torch.Tensor,
                  vs: torch.Tensor, key_lengths: torch.Tensor | None, sq: int, sk: int,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """FP8 attention of producer outputs -> ``[B, Sq, H, D]`` in ``out_dtype``.

    ``q8 [B, H, Sqp, D]``, ``qs [B, H, Sqp]`` (softmax scale * log2(e) folded in), ``k8 [B, H, Skp, D]``,
    ``ks [B, H, Skp]``, ``vt8 [B, H, D, Skp]``, ``vs [B, H, D]``, ``key_lengths [B]`` int32 or None.
    """
    B, H, _, D = q8.shape
    out = torch.empty(B, sq, H, D, device=q8.device, dtype=out_dtype)
    lens = None if key_lengths is None else key_lengths.to(torch.int32).contiguous()
    _launch_fwd(q8, qs, k8, ks, vt8, vs, lens, sk, out)
    return out


def _attention_fwd_fake(q8, qs, k8, ks, vt8, vs, key_lengths, sq, sk, out_dtype):
    B, H, _, D = q8.shape
    return q8.new_empty(B, sq, H, D, dtype=out_dtype)


attention_fwd = dual_op("fp8_attention_fwd", _attention_fwd_impl, _attention_fwd_fake)


def _fp8_bshd(q, k, v, key_lengths, sm_scale, qnorm=None, knorm=None, rope=None):
    """FP8 attention of ``[B, S, H, D]`` views -> ``[B, Sq, H, D]``; norms are ``(weight, eps)``."""
    D = q.shape[-1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    cos, sin = rope if rope is not None else (None, None)
    qw, qeps = qnorm if qnorm is not None else (None, -1.0)
    kw, keps = knorm if knorm is not None else (None, -1.0)
    q8, qs = quant_qk(q, qw, qeps, cos, sin, sm_scale * LOG2E)
    k8, ks = quant_qk(k, kw, keps, cos, sin, 1.0)
    vt8, vs = quant_v(v)
    return attention_fwd(q8, qs, k8, ks, vt8, vs, key_lengths, q.shape[1], k.shape[1], v.dtype)


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention(q, k, v, key_lengths=None, sm_scale=None, fp8=True):
    """Backend op: ``q, k, v [B, H, S, D]`` -> ``[B, H, Sq, D]``; FP8 kernel when ``fp8``, else SDPA."""
    if not fp8:
        return ref.sdpa_attention(q, k, v, key_lengths, sm_scale)
    reason = unsupported_reason(q, k, v)
    if reason is not None:
        warn_fallback("attention", reason)
        return ref.fp8_attention_ref(q, k, v, key_lengths, sm_scale)
    q, k, v = (_last_contiguous(t).transpose(1, 2) for t in (q, k, v))  # [B, S, H, D] views
    return _fp8_bshd(q, k, v, key_lengths, sm_scale).transpose(1, 2)


def _norm_params(norm):
    """``(weight, eps)`` for RMSNorm modules the producer can fuse; None otherwise."""
    eps = getattr(norm, "eps", None)
    if isinstance(norm, torch.nn.RMSNorm) or type(norm).__name__ == "RMSNorm":
        if eps is None or not hasattr(norm, "weight"):
            return None
        w = norm.weight
        return (None if w is None else w.detach(), float(eps))
    return None


def fused_attention_core(attn, query, key, value, image_rotary_emb=None, key_lengths=None, fp8=True):
    """``q8_attention_core`` for the triton backend. ``[B, S, H*D]`` in, ``[B, Sq, H*D]`` out.

    ``fp8``: norm_q/norm_k + RoPE + Hadamard + scale + e4m3 in one producer per operand, then the FP8
    kernel. Else norm_q/norm_k + RoPE in one producer per operand (float rows), then SDPA.
    Returns ``None`` when this path cannot take the module/inputs (the caller runs the generic path).
    """
    heads = attn.heads
    qn, kn = _norm_params(attn.norm_q), _norm_params(attn.norm_k)
    if qn is None or kn is None or query.shape[-1] % heads or key.shape[-1] != query.shape[-1]:
        return None
    q, k, v = (_last_contiguous(t).unflatten(2, (heads, -1)) for t in (query, key, value))
    if unsupported_reason(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) is not None:
        return None
    rope = None
    if image_rotary_emb is not None:
        cos, sin = image_rotary_emb
        if cos.shape[-2:] != query.shape[-2:] or key.shape[1] != query.shape[1]:
            return None
        rope = tuple(_last_contiguous(t).unflatten(2, (heads, -1)) for t in (cos, sin))
    if fp8:
        out = _fp8_bshd(q, k, v, key_lengths, None, qn, kn, rope)
    else:
        cos, sin = rope if rope is not None else (None, None)
        q, k = norm_rope(q, qn[0], qn[1], cos, sin), norm_rope(k, kn[0], kn[1], cos, sin)
        out = ref.sdpa_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_lengths).transpose(1, 2)
    return out.flatten(2, 3)
