"""Producers of q8lib's INT8 attention (Triton kernels + launcher + ``torch.library`` op + reference twin).

The math is :func:`q8lib.reference.int8_qk_quantize_ref` on q and k after LTX's RMSNorm across heads and its
interleaved RoPE (both optional; the same row code as the FP8 producers, :func:`.qk_rows.norm_rope_rows`):
K smoothing over the valid keys, q/k channel balancing, the softmax scale * log2(e) folded into q, int8 q per
(token, head) and int8 k per block of :data:`KEY_BLOCK` keys per head. No Hadamard rotation (the cheapest scheme
that meets issue #14's accuracy targets, benchmarks/NOTES_attention.md "Session 6"). ``v`` needs no producer: the
kernel reads it where the projection wrote it.

Two passes over each operand (smoothing and balancing need statistics over all tokens first):

* ``_qk_stats_kernel``: per (batch, head, chunk of :data:`STATS_CHUNK` tokens, channel) the max, min and sum of the
  normed, rotated (RoPE) rows over the valid tokens (``key_lengths`` for k), folded by torch into
  ``(max, min, sum)`` float32 ``[B, H, Sp / 64, D]`` per 64-token block. Chunks, not whole blocks, a program:
  one program a block gave 114 programs at [2, 3630] (fewer than the H200's 132 SMs), each walking its block 2
  tokens at a time, and took 5.2 ms of a 50 ms 2B forward.
* :func:`balance_from_stats` (torch, small tensors): the key mean, ``λ``, q's and k's per-channel factors and the
  amax of every k block after smoothing and balancing: ``max_c λ_c * max(max - mean, mean - min)``, the same
  float32 value the quantize pass meets (rounding is monotone), so k's block scales need no third pass.
* ``_qk_int8_kernel``: the rows again, ``(x - shift) * factor``, int8 codes with a per-row scale (q) or the
  block's scale (k); rows past the valid tokens (padding to ``attn_producers.SEQ_PAD``, masked keys) are zero.

Op ``q8lib::attn_int8_quant_qk`` -> ``(q8 [B, H, Sqp, D] int8, qs [B, H, Sqp] fp32, k8 [B, H, Skp, D] int8,
ks [B, H, Skp / 64] fp32)``; reference twin :func:`quant_qk_int8_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import reference as ref
from ._jit import head_rows
from ._library import capability, dual_op, interpreting, launchable, programs
from .attn_producers import norm_rope_f32, _pad_rows, _qk_launch, pad_seq, qk_meta, rope_layout
from .qk_rows import norm_rope_rows

__all__ = ["KEY_BLOCK", "STATS_CHUNK", "PRODUCER_TUNE", "producer_meta", "balance_from_stats", "launch_int8_quant_qk",
           "int8_quant_qk", "quant_qk_int8_ref"]

KEY_BLOCK = ref.INT8_KEY_BLOCK  # keys sharing one int8 scale: the attention kernel's key tile
STATS_CHUNK = 16  # tokens a program of the statistics pass reduces (a quarter of a key block)
# Launch of both producers: the norm + RoPE producer's measured H100 form (attn_producers._QK_DEFAULT_TUNE); the
# int8 producers are that kernel plus a shift, a factor and a rounding. Not timed on a GPU yet.
PRODUCER_TUNE = {"block_t": 2, "warps": 4, "stages": 1, "per_sm": 4}


@triton.jit
def _qk_stats_kernel(
    X, sxb, sxs, sxh,  # [B, S, H, D], stride over D is 1
    W, COS, SIN, scb, scs, sch,  # as in attn_producers._qk_quant_kernel
    LENS,  # [B] int32 valid tokens (HAS_LENS; clamped to [1, S])
    ST,  # [3, B, H, NB, D] float32: max, min, sum over the valid tokens of each KB-token chunk
    S, B, H, NB, eps, n_items,
    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr, KB: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr, HAS_LENS: tl.constexpr,
):
    """Persistent: each program walks (batch, block) items, a block in sub-tiles of BLOCK_T tokens x HP heads."""
    eps = tl.cast(eps, tl.float32)  # fp64 when inductor launches the kernel
    r, head, d, head_ok = head_rows(H, HP, BLOCK_T, D)
    hh = tl.arange(0, HP)
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
        b = item // NB
        blk = item % NB
        limit = S
        if HAS_LENS:
            limit = tl.minimum(tl.maximum(tl.load(LENS + b), 1), S)
        mx = tl.full([HP, D], float("-inf"), tl.float32)
        mn = tl.full([HP, D], float("inf"), tl.float32)
        sm = tl.zeros([HP, D], tl.float32)
        for t0 in range(0, KB, BLOCK_T):
            tok = blk * KB + t0 + r // HP
            x = norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, (tok < S) & head_ok,
                                H, eps, D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT, HAS_ROPE)
            ok = ((tok < limit) & head_ok)[:, None]
            # rows are (token, head) pairs, token-major: [BLOCK_T, HP, D] groups each head's tokens
            mx = tl.maximum(mx, tl.max(tl.reshape(tl.where(ok, x, float("-inf")), (BLOCK_T, HP, D)), axis=0))
            mn = tl.minimum(mn, tl.min(tl.reshape(tl.where(ok, x, float("inf")), (BLOCK_T, HP, D)), axis=0))
            sm += tl.sum(tl.reshape(tl.where(ok, x, 0.0), (BLOCK_T, HP, D)), axis=0)
        off = ((b * H + hh).to(tl.int64) * NB + blk)[:, None] * D + d[None, :]
        plane = B * H * NB * D
        m2 = (hh < H)[:, None]
        tl.store(ST + off, mx, mask=m2)
        tl.store(ST + plane + off, mn, mask=m2)
        tl.store(ST + 2 * plane + off, sm, mask=m2)


@triton.jit
def _qk_int8_kernel(
    X, sxb, sxs, sxh,  # [B, S, H, D], stride over D is 1
    W, COS, SIN, scb, scs, sch,  # as in attn_producers._qk_quant_kernel
    SHIFT, FAC,  # [B, H, D] float32: subtracted (HAS_SHIFT), then multiplied
    LENS,  # [B] int32 valid tokens (HAS_LENS); rows past them are written as zeros
    BAMAX,  # [B, H, S_PAD / KB] float32 amax of each block (PER_BLOCK)
    OUT, OUTS,  # [B, H, S_PAD, D] int8; [B, H, S_PAD] float32 row scales (not PER_BLOCK)
    S, S_PAD, H, eps, n_tiles,
    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr, KB: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_LENS: tl.constexpr, PER_BLOCK: tl.constexpr,
):
    """Persistent, tiles of BLOCK_T tokens x HP heads (as ``_qk_quant_kernel``); int8 codes per row or per block."""
    eps = tl.cast(eps, tl.float32)  # fp64 when inductor launches the kernel
    r, head, d, head_ok = head_rows(H, HP, BLOCK_T, D)
    n_tblk = S_PAD // BLOCK_T
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b = tile // n_tblk
        tok = (tile % n_tblk) * BLOCK_T + r // HP
        limit = S
        if HAS_LENS:
            limit = tl.minimum(tl.maximum(tl.load(LENS + b), 1), S)
        x = norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, (tok < S) & head_ok,
                            H, eps, D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT, HAS_ROPE)
        bh = (b * H + head).to(tl.int64)
        coff = bh[:, None] * D + d[None, :]
        if HAS_SHIFT:
            x = x - tl.load(SHIFT + coff, mask=head_ok[:, None], other=0.0)
        y = x * tl.load(FAC + coff, mask=head_ok[:, None], other=0.0)
        y = tl.where((tok < limit)[:, None], y, 0.0)
        if PER_BLOCK:
            amax = tl.load(BAMAX + bh * (S_PAD // KB) + tok // KB, mask=head_ok, other=0.0)
        else:
            amax = tl.max(tl.abs(y), axis=1)
        up = tl.where(amax < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # tiny rows: q8lib.quant.TINY_*
        inv = tl.where(amax > 0, 127.0 / (amax * up), 0.0)
        v = tl.minimum(tl.maximum((y * up[:, None]) * inv[:, None], -127.0), 127.0)
        v = (v + 12582912.0) - 12582912.0  # round half to even, as torch.round (row_quant does the same)
        obase = bh * S_PAD + tok
        tl.store(OUT + obase[:, None] * D + d[None, :], v.to(tl.int8), mask=head_ok[:, None])
        if not PER_BLOCK:
            tl.store(OUTS + obase, amax * (1.0 / 127.0), mask=head_ok)  # as quant.quantize_rowwise


# ------------------------------------------------------------------------------------------------
# Launcher, op, fake
def producer_meta(D: int, H: int, norm: bool, weight: bool, rope: bool, interpret: bool = False,
                  capability: int = 90, stats: bool = False):
    """``(meta, per_sm)`` of the INT8 quantize producer (``stats``: the statistics one), what the launcher
    launches and ``q8lib.kernels.targets`` compiles: :data:`PRODUCER_TUNE` through ``attn_producers.qk_meta``,
    ``BLOCK_T`` at most :data:`KEY_BLOCK` (statistics: :data:`STATS_CHUNK`), and 8 warps from 2048 (statistics:
    three ``[heads, D]`` float32 accumulators) or 8192 (quantize) elements a tile on: with 4, ptxas spilled
    4-756 bytes (sm_89/sm_90, 32 heads of 64 or 128, triton 3.9)."""
    meta, per_sm = qk_meta(D, H, norm, weight, rope, False, PRODUCER_TUNE, interpret, capability)
    del meta["ROPE_SPLIT"]  # interleaved RoPE only (_launch_args refuses split tables)
    meta["BLOCK_T"] = min(meta["BLOCK_T"], STATS_CHUNK if stats else KEY_BLOCK)
    if meta["HP"] * D * (1 if stats else meta["BLOCK_T"]) >= (2048 if stats else 8192):
        meta["num_warps"] = max(meta["num_warps"], 8)
    return meta, per_sm


def _launch_args(x, weight, eps, cos, sin, stats=False):
    """``(kernel args up to SIN's strides, meta, per_sm)`` for ``x [B, S, H, D]``."""
    B, S, H, D = x.shape
    cap = capability(x.device.index or 0) if x.is_cuda else 90
    if cos is not None and rope_layout(cos, x.shape) != "interleaved":
        raise ValueError("the INT8 producers take interleaved RoPE tables [B|1, S, H, D] only (INT8 attention is not "
                         "built for LTX-2's split RoPE)")
    _, args, _, _ = _qk_launch(x, weight, eps, cos, sin, pad_seq(S), PRODUCER_TUNE, False)
    meta, per_sm = producer_meta(D, H, eps >= 0, weight is not None, cos is not None, interpreting(x), cap, stats)
    return args, meta, per_sm


def _stats(x, weight, eps, cos, sin, lens):
    """``(max, min, sum)``, each ``[B, H, Sp / KEY_BLOCK, D]``, per key block (folded from per-chunk statistics)."""
    B, S, H, D = x.shape
    nb = pad_seq(S) // KEY_BLOCK
    split = KEY_BLOCK // STATS_CHUNK
    st = torch.empty(3, B, H, nb * split, D, device=x.device, dtype=torch.float32)
    args, meta, per_sm = _launch_args(x, weight, eps, cos, sin, stats=True)
    n_items = B * nb * split
    launchable(_qk_stats_kernel, x)[(programs(x.device, n_items, per_sm),)](
        *args, lens if lens is not None else x, st, S, B, H, nb * split, float(eps), n_items,
        KB=STATS_CHUNK, HAS_LENS=lens is not None, **meta)
    st = st.view(3, B, H, nb, split, D)
    return st[0].amax(3), st[1].amin(3), st[2].sum(3)


def balance_from_stats(qst, kst, key_lengths, sk: int, out_scale: float):
    """From the producers' statistics (``(max, min, sum)``, each ``[B, H, NB, D]``, per block) -> ``(shift, kfac, qfac,
    kblock_amax)``: the key mean ``[B, H, D]``, k's factor ``λ``, q's factor ``out_scale / λ`` and the amax
    ``[B, H, NBk]`` of each k block after smoothing and balancing (0 for blocks without valid keys)."""
    n = torch.full((kst[2].shape[0],), float(sk), device=kst[2].device) if key_lengths is None else \
        key_lengths.clamp(1, sk).float()
    shift = kst[2].sum(2) / n[:, None, None]
    lo, hi = kst[0] - shift[:, :, None], shift[:, :, None] - kst[1]  # -inf for blocks without valid keys
    kamax = torch.maximum(lo.amax(2), hi.amax(2))
    qamax = torch.maximum(qst[0].amax(2), -qst[1].amin(2))
    lam = torch.where((qamax > 0) & (kamax > 0), (qamax / kamax).sqrt(), torch.ones_like(qamax))
    bamax = (torch.maximum(lo, hi) * lam[:, :, None]).amax(-1).clamp_min(0.0)
    return shift, lam, out_scale / lam, bamax


def _quant(x, weight, eps, cos, sin, shift, fac, lens, bamax, out, outs):
    """The quantize pass; ``shift``/``lens``/``bamax`` (k) or ``outs`` (q) may be None."""
    B, S, H, D = x.shape
    args, meta, per_sm = _launch_args(x, weight, eps, cos, sin)
    n_tiles = B * (out.shape[2] // meta["BLOCK_T"])
    launchable(_qk_int8_kernel, x)[(programs(x.device, n_tiles, per_sm),)](
        *args, *(t if t is not None else fac for t in (shift, fac, lens, bamax)), out,
        outs if outs is not None else fac, S, out.shape[2], H, float(eps), n_tiles,
        KB=KEY_BLOCK, HAS_SHIFT=shift is not None, HAS_LENS=lens is not None, PER_BLOCK=bamax is not None, **meta)


def launch_int8_quant_qk(q, k, qweight, qeps, kweight, keps, cos, sin, key_lengths, out_scale, q8, qs, k8):
    """Fill ``q8 [B, H, Sqp, D]``, ``qs [B, H, Sqp]``, ``k8 [B, H, Skp, D]``; returns ``ks [B, H, Skp / 64]``."""
    lens = None if key_lengths is None else key_lengths.to(torch.int32).contiguous()
    qst = _stats(q, qweight, qeps, cos, sin, None)
    kst = _stats(k, kweight, keps, cos, sin, lens)
    shift, kfac, qfac, bamax = balance_from_stats(qst, kst, lens, k.shape[1], out_scale)
    _quant(q, qweight, qeps, cos, sin, None, qfac.contiguous(), None, None, q8, qs)
    bamax = bamax.contiguous()
    _quant(k, kweight, keps, cos, sin, shift.contiguous(), kfac.contiguous(), lens, bamax, k8, None)
    return bamax * (1.0 / 127.0)


def _int8_quant_qk_impl(q: torch.Tensor, k: torch.Tensor, qweight: torch.Tensor | None, qeps: float,
                        kweight: torch.Tensor | None, keps: float, cos: torch.Tensor | None, sin: torch.Tensor | None,
                        key_lengths: torch.Tensor | None, out_scale: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """INT8 q/k producer: ``q [B, Sq, H, D]``, ``k [B, Sk, H, D]`` (last stride 1) -> ``(q8, qs, k8, ks)``.

    ``qeps``/``keps >= 0``: RMSNorm over all ``H*D`` channels of a token first (``qweight``/``kweight [H*D]`` or
    None); ``< 0``: no norm. ``cos``/``sin [B|1, S, H, D]``: LTX's interleaved RoPE on both (``Sq == Sk``).
    ``key_lengths [B]``: valid keys (clamped to ``[1, Sk]``). ``out_scale`` multiplies q (softmax scale *
    log2(e)). Sequences padded to 128; padded rows and masked keys are zero, scales 0 past the sequence.
    """
    B, Sq, H, D = q.shape
    if cos is not None and not (k.shape[1] == Sq and cos.shape[1] == Sq):
        raise ValueError(f"RoPE tables {tuple(cos.shape)} need q and k of their length (q: {Sq}, k: {k.shape[1]})")
    q8 = torch.empty(B, H, pad_seq(Sq), D, device=q.device, dtype=torch.int8)
    qs = torch.empty(B, H, pad_seq(Sq), device=q.device, dtype=torch.float32)
    k8 = torch.empty(B, H, pad_seq(k.shape[1]), D, device=q.device, dtype=torch.int8)
    ks = launch_int8_quant_qk(q, k, qweight, qeps, kweight, keps, cos, sin, key_lengths, out_scale, q8, qs, k8)
    return q8, qs, k8, ks


def _int8_quant_qk_fake(q, k, qweight, qeps, kweight, keps, cos, sin, key_lengths, out_scale):
    B, Sq, H, D = q.shape
    sk = pad_seq(k.shape[1])
    return (q.new_empty(B, H, pad_seq(Sq), D, dtype=torch.int8), q.new_empty(B, H, pad_seq(Sq), dtype=torch.float32),
            q.new_empty(B, H, sk, D, dtype=torch.int8), q.new_empty(B, H, sk // KEY_BLOCK, dtype=torch.float32))


int8_quant_qk = dual_op("attn_int8_quant_qk", _int8_quant_qk_impl, _int8_quant_qk_fake)


def quant_qk_int8_ref(q, k, qweight, qeps, kweight, keps, cos, sin, key_lengths, out_scale):
    """Twin of :func:`int8_quant_qk`: norm + RoPE in float32 (``attn_producers``' twin rows), then
    :func:`q8lib.reference.int8_qk_quantize_ref`, padded to the op's layouts."""
    qf = norm_rope_f32(q, qweight, qeps, cos, sin).transpose(1, 2)
    kf = norm_rope_f32(k, kweight, keps, cos, sin).transpose(1, 2)
    q8, qs, k8, ks = ref.int8_qk_quantize_ref(qf, kf, key_lengths, out_scale, KEY_BLOCK)
    sq, sk = pad_seq(q.shape[1]), pad_seq(k.shape[1])
    pad_ks = torch.nn.functional.pad(ks, (0, sk // KEY_BLOCK - ks.shape[-1]))
    return _pad_rows(q8, sq), _pad_rows(qs[..., None], sq)[..., 0], _pad_rows(k8, sk), pad_ks

