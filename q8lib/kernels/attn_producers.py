"""Producers of q8lib's FP8 attention (Triton kernels + launchers + ``torch.library`` ops + reference twins).

Layouts (``Sp`` = sequence padded to :data:`SEQ_PAD`; padded rows are zeros with scale 0, so the attention
kernel loads them without masks and they contribute nothing):

* ``_qk_quant_kernel`` (op ``q8lib::attn_quant_qk``): ``x [B, S, H, D]`` (last stride 1) -> optional RMSNorm
  across heads (LTX's ``norm_q``/``norm_k``), optional interleaved RoPE, Hadamard rotation along ``D``, times
  ``out_scale`` (softmax scale * log2(e) for q, 1 for k), e4m3 per (token, head): ``x8 [B, H, Sp, D]`` and
  float32 scales ``[B, H, Sp]``.
* ``_qk_norm_rope_kernel`` (op ``q8lib::attn_norm_rope``): the same norm + RoPE written back as float rows
  ``[B, S, H, D]`` (the SDPA path: one pass instead of inductor's reduction + elementwise kernels).
* ``_v_amax_kernel`` + ``_v_quant_kernel`` (op ``q8lib::attn_quant_v``): ``v [B, S, H, D]`` -> per-channel
  ``amax [B, H, D]`` -> e4m3 ``vt8 [B, H, D, Sp]``, keys contiguous: the K-major B operand Hopper's FP8
  ``wgmma`` needs for ``P @ V``.

Reference twins: :func:`quant_qk_ref`, :func:`norm_rope_ref`, :func:`quant_v_ref`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import reference as ref
from ..hadamard import hadamard_signs, hadamard_transform
from ..quant import quantize_rowwise
from ._jit import batch_head, head_rows, to_e4m3
from ._library import capability, dual_op, interpreting, launchable, programs, table_entry
from .qk_rows import dot_pm1, norm_rope_halves, norm_rope_rows

__all__ = ["SEQ_PAD", "pad_seq", "qk_kind", "qk_table_entry", "qk_meta", "rope_layout", "v_tiles", "launch_quant_qk",
           "launch_norm_rope", "launch_quant_v", "quant_qk", "norm_rope", "quant_v", "quant_qk_ref", "norm_rope_ref",
           "quant_v_ref", "norm_rope_f32"]

SEQ_PAD = 128  # q/k/v sequences are padded to this multiple (>= every BLOCK_M/BLOCK_N used)
FP8 = torch.float8_e4m3fn


def pad_seq(n: int) -> int:
    return -(-n // SEQ_PAD) * SEQ_PAD


@triton.jit
def _qk_quant_kernel(
    X, sxb, sxs, sxh,  # [B, S, H, D], stride over D is 1
    W,  # [H * D] RMSNorm weight (HAS_NORM and HAS_WEIGHT)
    COS, SIN, scb, scs, sch,  # [B|1, S, H, D] RoPE tables (HAS_ROPE)
    HAD,  # [D, D] Sylvester Hadamard, entries +-1 (bf16 on the GPU, float32 in the interpreter); 1/sqrt(D) is in out_scale
    OUT, OUTS,  # [B, H, Sp, D] e4m3 and [B, H, Sp] float32
    S, S_PAD, H, eps, out_scale, n_tiles,
    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr, GRID_ROUND: tl.constexpr,
    ROPE_SPLIT: tl.constexpr,
):
    """Persistent: each program loads the Hadamard matrix once and walks tiles of BLOCK_T tokens."""
    # float arguments arrive as fp64 when inductor launches the kernel; fp64 has no conversion to e4m3
    eps, out_scale = tl.cast(eps, tl.float32), tl.cast(out_scale, tl.float32)
    r, head, d, head_ok = head_rows(H, HP, BLOCK_T, D)  # rows of a tile: (token, head) pairs, heads padded to HP
    dh = tl.arange(0, D // 2)
    if ROPE_SPLIT:  # the rows come as halves: H's top and bottom halves multiply them
        h_top = tl.load(HAD + dh[:, None] * D + d[None, :])
        h_bot = tl.load(HAD + (dh + D // 2)[:, None] * D + d[None, :])
    else:
        hmat = tl.load(HAD + d[:, None] * D + d[None, :])
    n_tblk = S_PAD // BLOCK_T
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b = tile // n_tblk
        tok = (tile % n_tblk) * BLOCK_T + r // HP
        row_ok = (tok < S) & head_ok
        y = tl.zeros([BLOCK_T * HP, D], tl.float32)
        if ROPE_SPLIT:
            x1, x2 = norm_rope_halves(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, row_ok, H, eps,
                                       D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT)
            y = dot_pm1(x2, h_bot, dot_pm1(x1, h_top, y, GRID_ROUND), GRID_ROUND)
        else:
            x = norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, row_ok, H, eps,
                                D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT, HAS_ROPE)
            y = dot_pm1(x, hmat, y, GRID_ROUND)
        y = y * out_scale
        amax = tl.max(tl.abs(y), axis=1)
        up = tl.where(amax < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # tiny rows: q8lib.quant.TINY_*
        inv = tl.where(amax > 0, 448.0 / (amax * up), 0.0)
        q = to_e4m3(tl.minimum(tl.maximum((y * up[:, None]) * inv[:, None], -448.0), 448.0), GRID_ROUND)
        obase = (b * H + head).to(tl.int64) * S_PAD + tok
        tl.store(OUT + obase[:, None] * D + d[None, :], q, mask=head_ok[:, None])
        tl.store(OUTS + obase, amax * (1.0 / 448.0), mask=head_ok)


@triton.jit
def _qk_norm_rope_kernel(
    X, sxb, sxs, sxh,  # [B, S, H, D], stride over D is 1
    W, COS, SIN, scb, scs, sch,  # as in _qk_quant_kernel
    OUT,  # [B, S, H, D] contiguous, x's dtype (or e4m3: OUT_FP8)
    QSCALE,  # [] float32: OUT_FP8's one scale for the whole tensor
    S, H, eps, n_tiles,
    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr, ROPE_SPLIT: tl.constexpr,
    OUT_FP8: tl.constexpr, GRID_ROUND: tl.constexpr,
):
    """norm_q/norm_k + RoPE for the SDPA path in one pass (the float rows, no rotation or quantization); with
    ``OUT_FP8`` the rows times ``QSCALE`` as e4m3 (``attention="fp8_tensor"``'s q, whose scale is static)."""
    eps = tl.cast(eps, tl.float32)  # fp64 when inductor launches the kernel
    qs = 1.0
    if OUT_FP8:
        qs = tl.load(QSCALE).to(tl.float32)
    r, head, d, head_ok = head_rows(H, HP, BLOCK_T, D)
    n_tblk = tl.cdiv(S, BLOCK_T)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b = tile // n_tblk
        tok = (tile % n_tblk) * BLOCK_T + r // HP
        row_ok = (tok < S) & head_ok
        orow = OUT + ((b.to(tl.int64) * S + tok) * H + head)[:, None] * D
        if ROPE_SPLIT:
            x1, x2 = norm_rope_halves(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, row_ok, H, eps,
                                       D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT)
            dh = tl.arange(0, D // 2)[None, :]
            tl.store(orow + dh, _row_out(x1, qs, OUT, OUT_FP8, GRID_ROUND), mask=row_ok[:, None])
            tl.store(orow + D // 2 + dh, _row_out(x2, qs, OUT, OUT_FP8, GRID_ROUND), mask=row_ok[:, None])
        else:
            x = norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, row_ok, H, eps,
                                D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT, HAS_ROPE)
            tl.store(orow + d[None, :], _row_out(x, qs, OUT, OUT_FP8, GRID_ROUND), mask=row_ok[:, None])


@triton.jit
def _row_out(x, qs, OUT, OUT_FP8: tl.constexpr, GRID_ROUND: tl.constexpr):
    """Float32 rows as ``OUT`` stores them: rounded to its float dtype, or times ``qs`` as saturated e4m3."""
    if OUT_FP8:
        return to_e4m3(tl.minimum(tl.maximum(x * qs, -448.0), 448.0), GRID_ROUND)
    return x.to(OUT.dtype.element_ty)


@triton.jit
def _v_amax_kernel(
    V, svb, svs, svh,  # [B, S, H, D], stride over D is 1
    AMAX,  # [B, H, D] float32, zero-filled: each program folds in its chunk's max with an atomic
    S, H,
    D: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_k = tl.program_id(0)
    bh, b, h = batch_head(H)
    d = tl.arange(0, D)
    amax = tl.zeros([D], tl.float32)
    for k0 in range(pid_k * CHUNK, tl.minimum(pid_k * CHUNK + CHUNK, S), BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(V + b.to(tl.int64) * svb + k.to(tl.int64)[:, None] * svs + h * svh + d[None, :],
                    mask=(k < S)[:, None], other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=0))
    tl.atomic_max(AMAX + bh * D + d, amax)


@triton.jit
def _v_quant_kernel(
    V, svb, svs, svh,  # [B, S, H, D], stride over D is 1
    AMAX,  # [B, H, D] float32
    OUT, OUTS,  # [B, H, D, Sp] e4m3 and [B, H, D] float32 scales
    S, S_PAD, H,
    D: tl.constexpr, BLOCK_K: tl.constexpr, GRID_ROUND: tl.constexpr,
):
    pid_k = tl.program_id(0)
    bh, b, h = batch_head(H)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.arange(0, D)
    v = tl.load(V + b.to(tl.int64) * svb + k.to(tl.int64)[:, None] * svs + h * svh + d[None, :],
                mask=(k < S)[:, None], other=0.0).to(tl.float32)
    amax = tl.load(AMAX + bh * D + d)
    up = tl.where(amax < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # tiny channels: q8lib.quant.TINY_*
    inv = tl.where(amax > 0, 448.0 / (amax * up), 0.0)
    q = to_e4m3(tl.minimum(tl.maximum((v * up[None, :]) * inv[None, :], -448.0), 448.0), GRID_ROUND)
    optr = OUT + (bh * D + d).to(tl.int64)[:, None] * S_PAD + k[None, :]
    tl.store(optr, tl.trans(q), mask=(k < S_PAD)[None, :])
    if pid_k == 0:
        tl.store(OUTS + bh * D + d, amax * (1.0 / 448.0))


# ------------------------------------------------------------------------------------------------
# Launchers, ops, fakes


# --------------------------------------------------------------------------------------------
# producers
# --------------------------------------------------------------------------------------------
def _hadamard_pm1(d: int, device: torch.device) -> torch.Tensor:
    """``[d, d]`` Sylvester Hadamard with entries +-1, exact in bf16 (float32 for the interpreter,
    whose bf16 dots are wrong); the producer scales by 1/sqrt(d)."""
    return hadamard_signs(d, torch.float32 if device.type == "cpu" else torch.bfloat16, device)


def rope_layout(cos: torch.Tensor, shape) -> str:
    """``"interleaved"`` for tables ``[B|1, S, H, D]`` (LTX-Video), ``"split"`` for ``[B|1, H, S, D/2]`` (LTX-2's
    released checkpoints), for rows ``shape = (B, S, H, D)``; ``ValueError`` for anything else."""
    B, S, H, D = shape
    if cos.dim() == 4 and cos.shape[0] in (1, B):
        if tuple(cos.shape[1:]) == (S, H, D):
            return "interleaved"
        if tuple(cos.shape[1:]) == (H, S, D // 2) and D % 2 == 0:
            return "split"
    raise ValueError(f"RoPE tables of shape {tuple(cos.shape)} fit neither [B|1, S, H, D] (interleaved) nor "
                     f"[B|1, H, S, D/2] (split) for rows {tuple(shape)}")


def qk_kind(D: int, norm: bool, rope: bool, quant: bool = True, split: bool = False) -> str:
    """Tuning-table key of a q/k producer (see ``row_tune.json``): ``"qk/64/norm_rope"`` (FP8 producer),
    ``"qkn/64/norm_rope"`` (norm + RoPE only, the SDPA path), ``"qk/128/norm_rope_split"`` (LTX-2's split RoPE
    tables: a different load pattern, so its own entry), ..."""
    rope_key = ("rope_split" if split else "rope") if rope else "norope"
    return f"{'qk' if quant else 'qkn'}/{D}/{'norm' if norm else 'nonorm'}_{rope_key}"


def qk_table_entry(cap: int, D: int, norm: bool, rope: bool, quant: bool, split: bool,
                   dtype: torch.dtype = torch.bfloat16) -> dict | None:
    """The measured launch of a q/k producer on ``sm_<cap>`` (``row_tune.json``); split-RoPE forms without an entry
    of their own take the interleaved form's (the same tile shapes), else ``None`` (the defaults). The entries were
    measured on bf16 rows: float32 rows take the defaults (the 13B's tuned tile spills on float32 rows at sm_90)."""
    if dtype == torch.float32:
        return None
    entry = table_entry(cap, qk_kind(D, norm, rope, quant, split))
    return entry if entry is not None or not split else table_entry(cap, qk_kind(D, norm, rope, quant))


# The norm + RoPE producer's launch where the table has no entry (measured near-best for the q/k producers on
# the H100); the FP8 producer keeps its tile-sized default there.
_QK_DEFAULT_TUNE = {"block_t": 2, "warps": 4, "stages": 1, "per_sm": 4}


def _qk_launch(x, weight, eps, cos, sin, s_pad, tune, quant):
    """Common launch arguments of the q/k producers for ``x [B, S, H, D]``: ``(grid, args, n_tiles, meta)``.
    ``s_pad``: the padded sequence the tiles cover (``None``: ``S`` rounded up to whole tiles)."""
    B, S, H, D = x.shape
    has_rope = cos is not None
    split = has_rope and rope_layout(cos, x.shape) == "split"
    if tune is None and not interpreting(x):
        tune = qk_table_entry(capability(x.device.index or 0), D, eps >= 0, has_rope, quant, split, x.dtype)
    cap = capability(x.device.index or 0) if x.is_cuda else 90
    meta, per_sm = qk_meta(D, H, eps >= 0, weight is not None, has_rope, quant, tune, interpreting(x), cap, split)
    block_t = meta["BLOCK_T"]
    if s_pad is None:  # the norm-only producer: tiles cover whole blocks of tokens, the tail is masked
        s_pad = -(-S // block_t) * block_t
    if s_pad % block_t:
        raise ValueError(f"block_t {block_t} must divide the padded sequence {s_pad}")
    if has_rope:
        if sin.shape != cos.shape or sin.stride() != cos.stride():
            raise ValueError(f"RoPE cos/sin must share shape and strides, got {tuple(cos.shape)} and {tuple(sin.shape)}")
        scb = cos.stride(0) if cos.shape[0] > 1 else 0
        # (scb, scs, sch): interleaved tables are [B|1, S, H, D], split ones [B|1, H, S, D/2]
        cs = (cos, sin, scb, *((cos.stride(2), cos.stride(1)) if split else (cos.stride(1), cos.stride(2))))
    else:
        cs = (x, x, 0, 0, 0)
    n_tiles = B * (s_pad // block_t)
    progs = programs(x.device, n_tiles, per_sm)
    args = (x, x.stride(0), x.stride(1), x.stride(2), weight if weight is not None else x, *cs)
    return (progs,), args, n_tiles, meta


def qk_meta(D: int, H: int, norm: bool, weight: bool, rope: bool, quant: bool, tune: dict | None,
            interpret: bool = False, capability: int = 90, rope_split: bool = False):
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
            "ROPE_SPLIT": rope and rope_split,
            "num_warps": tune.get("warps") or (4 if D * hp * block_t <= 2048 else 8),
            "num_stages": tune.get("stages", 3 if capability >= 90 else 1)}
    return meta, tune.get("per_sm", 4)


def launch_quant_qk(x, weight, eps, cos, sin, out_scale, out, out_scale_t, tune=None):
    """``x [B, S, H, D]`` -> fills ``out [B, H, Sp, D]`` e4m3 and ``out_scale_t [B, H, Sp]``.

    ``tune`` (benchmarks) fixes ``block_t`` (tokens a tile), ``warps``, ``stages`` and ``per_sm``
    (persistent programs per SM); else the measured table entry for this GPU, else the defaults.
    """
    B, S, H, D = x.shape
    grid, args, n_tiles, meta = _qk_launch(x, weight, eps, cos, sin, out.shape[2], tune, quant=True)
    launchable(_qk_quant_kernel, x)[grid](
        *args, _hadamard_pm1(D, x.device), out, out_scale_t,
        S, out.shape[2], H, float(eps), float(out_scale) / math.sqrt(D), n_tiles,
        GRID_ROUND=interpreting(x), **meta,
    )


def launch_norm_rope(x, weight, eps, cos, sin, out, tune=None, qscale=None):
    """``x [B, S, H, D]`` -> fills ``out [B, S, H, D]`` (contiguous) with norm + RoPE rows; an e4m3 ``out`` takes
    them times ``qscale`` (``[]`` float32)."""
    B, S, H, D = x.shape
    grid, args, n_tiles, meta = _qk_launch(x, weight, eps, cos, sin, None, tune, quant=False)
    fp8 = out.dtype == FP8
    # every constexpr passed: inductor's wrap_triton (torch 2.11) does not fill in the kernel's defaults
    meta |= {"OUT_FP8": fp8, "GRID_ROUND": fp8 and interpreting(x)}
    launchable(_qk_norm_rope_kernel, x)[grid](*args, out, qscale if fp8 else out, S, H, float(eps), n_tiles, **meta)


def _quant_qk_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor | None,
             sin: torch.Tensor | None, out_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k producer: ``x [B, S, H, D]`` (last stride 1) -> ``(x8 [B, H, Sp, D] e4m3, scale [B, H, Sp] fp32)``.

    ``eps >= 0``: RMSNorm over all ``H*D`` channels of a token first (``weight [H*D]`` or None);
    ``eps < 0``: no norm. ``cos``/``sin [B|1, S, H, D]``: LTX's interleaved RoPE (``[B|1, H, S, D/2]``: LTX-2's
    split RoPE, :func:`rope_layout`). Then Hadamard
    along ``D``, times ``out_scale``, e4m3 per (token, head). ``Sp`` = ``S`` padded to 128; the
    padded rows are zero with scale 0.
    """
    B, S, H, D = x.shape
    out = torch.empty(B, H, pad_seq(S), D, device=x.device, dtype=FP8)
    scale = torch.empty(B, H, pad_seq(S), device=x.device, dtype=torch.float32)
    launch_quant_qk(x, weight, eps, cos, sin, out_scale, out, scale)
    return out, scale


def _quant_qk_fake(x, weight, eps, cos, sin, out_scale):
    B, S, H, D = x.shape
    return x.new_empty(B, H, pad_seq(S), D, dtype=FP8), x.new_empty(B, H, pad_seq(S), dtype=torch.float32)


# triton_ops on CUDA like the row kernels (inductor launches them from its own code). They were opaque custom ops
# until the kernels cast their float arguments to fp32: inductor passes floats as fp64, and an fp64 value cast
# to e4m3 does not compile (triton 3.6, "Unsupported conversion from f64 to f8E4M3FN").
quant_qk = dual_op("attn_quant_qk", _quant_qk_impl, _quant_qk_fake)


def _norm_rope_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor | None,
              sin: torch.Tensor | None) -> torch.Tensor:
    """SDPA-path producer: ``x [B, S, H, D]`` (last stride 1) -> ``[B, S, H, D]`` contiguous in ``x.dtype``:
    RMSNorm across all ``H*D`` channels of a token (``eps >= 0``; ``weight [H*D]`` or None), then LTX's
    interleaved RoPE (``cos``/``sin [B|1, S, H, D]``; ``[B|1, H, S, D/2]``: split), computed in float32 and rounded
    once."""
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x.numel():
        launch_norm_rope(x, weight, eps, cos, sin, out)
    return out


def _norm_rope_fake(x, weight, eps, cos, sin):
    return x.new_empty(x.shape)


norm_rope = dual_op("attn_norm_rope", _norm_rope_impl, _norm_rope_fake)


def launch_quant_v(v, out, vscale):
    """``v [B, S, H, D]`` -> fills ``out [B, H, D, Sp]`` e4m3 and ``vscale [B, H, D]``."""
    B, S, H, D = v.shape
    s_pad = out.shape[-1]
    interp = interpreting(v)
    # amax over all keys (as the reference), in chunks of keys: enough programs to fill the GPU
    amax = torch.zeros(B, H, D, device=v.device, dtype=torch.float32)
    chunk, block_k, warps = v_tiles(interp)
    launchable(_v_amax_kernel, v)[(triton.cdiv(S, chunk), B * H)](
        v, v.stride(0), v.stride(1), v.stride(2), amax, S, H, D=D, BLOCK_K=block_k, CHUNK=chunk,
        num_warps=warps,
    )
    launchable(_v_quant_kernel, v)[(s_pad // block_k, B * H)](
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
    out = torch.empty(B, H, D, pad_seq(S), device=v.device, dtype=FP8)
    scale = torch.empty(B, H, D, device=v.device, dtype=torch.float32)
    launch_quant_v(v, out, scale)
    return out, scale


def _quant_v_fake(v):
    B, S, H, D = v.shape
    return v.new_empty(B, H, D, pad_seq(S), dtype=FP8), v.new_empty(B, H, D, dtype=torch.float32)


quant_v = dual_op("attn_quant_v", _quant_v_impl, _quant_v_fake)


# ------------------------------------------------------------------------------------------------
# Reference twins (same layouts; the kernels compute these up to float32 rounding)
def norm_rope_f32(x, weight, eps, cos, sin):
    """norm + RoPE of ``x [B, S, H, D]`` in float32 (the producers' math before any rounding)."""
    B, S, H, D = x.shape
    y = x.float().flatten(2)
    if eps >= 0:
        y = ref.rms_norm_ref(y, None if weight is None else weight.float(), eps)
    if cos is not None and rope_layout(cos, x.shape) == "split":
        y = ref.apply_split_rotary_emb(y, (cos.float(), sin.float()))
    elif cos is not None:
        y = ref.apply_rotary_emb(y, (cos.float().flatten(2), sin.float().flatten(2)))
    return y.unflatten(2, (H, D))


def _pad_rows(t: torch.Tensor, s_pad: int) -> torch.Tensor:
    """Zero rows appended along dim 2 up to ``s_pad``."""
    return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 3) + (0, s_pad - t.shape[2]))


def quant_qk_ref(x, weight, eps, cos, sin, out_scale):
    """Twin of :func:`quant_qk`: norm (``eps >= 0``) + RoPE + Hadamard along ``D`` + ``out_scale`` + e4m3 per
    (token, head) -> ``(x8 [B, H, Sp, D], scale [B, H, Sp])``, padded rows zero with scale 0."""
    y = hadamard_transform(norm_rope_f32(x, weight, eps, cos, sin)) * out_scale
    q, s = quantize_rowwise(y.transpose(1, 2), FP8)
    sp = pad_seq(x.shape[1])
    return _pad_rows(q.view(torch.int8), sp).view(FP8), _pad_rows(s[..., None], sp)[..., 0]


def norm_rope_ref(x, weight, eps, cos, sin):
    """Twin of :func:`norm_rope`: ``[B, S, H, D]`` -> norm across heads + RoPE in float32, rounded once."""
    return norm_rope_f32(x, weight, eps, cos, sin).to(x.dtype)


def quant_v_ref(v):
    """Twin of :func:`quant_v`: e4m3 per (batch, head, channel) over all keys -> ``(vt8 [B, H, D, Sp], scale
    [B, H, D])``, keys contiguous, padded keys zero."""
    q, s = quantize_rowwise(v.float().permute(0, 2, 3, 1), FP8)
    sp = pad_seq(v.shape[1])
    return torch.nn.functional.pad(q.view(torch.int8), (0, sp - v.shape[1])).view(FP8), s
