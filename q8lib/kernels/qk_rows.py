"""Triton device functions of the q/k producers (FP8: :mod:`.attn_producers`, INT8: :mod:`.int8_producers`): a tile
of ``(token, head)`` rows after LTX's RMSNorm across heads and its RoPE (interleaved, or LTX-2's split layout as two
half tiles), and the float32-accurate product with a +-1 Hadamard matrix. No kernels, no launchers here."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def token_rstd(ss, H, eps, D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr):
    """1/RMS of each row's token over all its heads, from the rows' sums of squares ``ss [BLOCK_T * HP]``: one masked
    reduction per token of the tile (no reshapes: they cost layout conversions)."""
    R: tl.constexpr = BLOCK_T * HP
    tid = tl.arange(0, R) // HP
    rstd = tl.zeros([R], tl.float32)
    for t in tl.static_range(BLOCK_T):
        tss = tl.sum(tl.where(tid == t, ss, 0.0), axis=0)
        rstd = tl.where(tid == t, tl.rsqrt(tss / (H * D) + eps), rstd)
    return rstd


@triton.jit
def norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, row_ok, H, eps,
                    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr,
                    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr):
    """Rows ``(token, head)`` of ``x [B, S, H, D]`` as float32 ``[BLOCK_T * HP, D]``, after LTX's RMSNorm
    across all heads of a token (optional weight) and its interleaved RoPE (optional; tables ``[B|1, S, H, D]``,
    strides ``scb``, ``scs``, ``sch``). LTX-2's split RoPE: :func:`norm_rope_halves`."""
    R: tl.constexpr = BLOCK_T * HP
    head_ok = head < H
    m2 = row_ok[:, None]
    xoff = b.to(tl.int64) * sxb + tok.to(tl.int64)[:, None] * sxs + head[:, None] * sxh
    x = tl.load(X + xoff + d[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_NORM:
        x = x * token_rstd(tl.sum(x * x, axis=1), H, eps, D, HP, BLOCK_T)[:, None]
        if HAS_WEIGHT:
            x = x * tl.load(W + head[:, None] * D + d[None, :], mask=head_ok[:, None], other=0.0).to(tl.float32)
    if HAS_ROPE:
        # interleaved pairs (2i, 2i+1): out[2i] = x[2i] c - x[2i+1] s, out[2i+1] = x[2i+1] c + x[2i] s;
        # the partner comes from registers (split/join), not from a second, unvectorizable load
        coff = b.to(tl.int64) * scb + tok.to(tl.int64)[:, None] * scs + head[:, None] * sch + d[None, :]
        c = tl.load(COS + coff, mask=m2, other=0.0).to(tl.float32)
        sn = tl.load(SIN + coff, mask=m2, other=0.0).to(tl.float32)
        xe, xo = tl.split(tl.reshape(x, (R, D // 2, 2)))
        x = x * c + tl.reshape(tl.join(-xo, xe), (R, D)) * sn
    return x


@triton.jit
def norm_rope_halves(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, row_ok, H, eps,
                      D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr,
                      HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """LTX-2's split RoPE: the rows' halves ``(x[:, :D/2], x[:, D/2:])`` after the norm (as
    :func:`norm_rope_rows`) and the rotation ``out1 = x1 c - x2 s``, ``out2 = x2 c + x1 s`` (tables
    ``[B|1, H, S, D/2]``). Each half is loaded as its own tile and returned as one, so the partner of each element
    is in the other tile at the same place: no reshape, permute or join (each costs a layout conversion through
    shared memory), and the callers consume the halves as they are (two stores; two half-depth Hadamard dots)."""
    head_ok = head < H
    m2 = row_ok[:, None]
    dh = tl.arange(0, D // 2)
    xoff = b.to(tl.int64) * sxb + tok.to(tl.int64)[:, None] * sxs + head[:, None] * sxh + dh[None, :]
    x1 = tl.load(X + xoff, mask=m2, other=0.0).to(tl.float32)
    x2 = tl.load(X + xoff + D // 2, mask=m2, other=0.0).to(tl.float32)
    if HAS_NORM:
        rstd = token_rstd(tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1), H, eps, D, HP, BLOCK_T)[:, None]
        x1, x2 = x1 * rstd, x2 * rstd
        if HAS_WEIGHT:
            woff = head[:, None] * D + dh[None, :]
            x1 = x1 * tl.load(W + woff, mask=head_ok[:, None], other=0.0).to(tl.float32)
            x2 = x2 * tl.load(W + woff + D // 2, mask=head_ok[:, None], other=0.0).to(tl.float32)
    coff = b.to(tl.int64) * scb + tok.to(tl.int64)[:, None] * scs + head[:, None] * sch + dh[None, :]
    c = tl.load(COS + coff, mask=m2, other=0.0).to(tl.float32)
    sn = tl.load(SIN + coff, mask=m2, other=0.0).to(tl.float32)
    return x1 * c - x2 * sn, x2 * c + x1 * sn


@triton.jit
def dot_pm1(x, h, acc, GRID_ROUND: tl.constexpr):
    """``acc + x @ h`` for float32 ``x`` and a +-1 matrix ``h`` (exact in bf16): two bf16 MMAs on hi/lo halves of x,
    ~2^-17 relative error, float32-like, at a third of a 3xTF32 product's cost (plain tf32 moved ~1% of the codes).
    The interpreter's bf16 dots are wrong: one fp32 dot there (exact)."""
    if GRID_ROUND:
        return tl.dot(x, h.to(tl.float32), acc)
    x_hi = x.to(tl.bfloat16)
    acc = tl.dot(x_hi, h, acc)
    return tl.dot((x - x_hi.to(tl.float32)).to(tl.bfloat16), h, acc)
