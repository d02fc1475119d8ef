"""Triton kernels behind ``q8lib.kernels.attention`` (FP8 attention with Hadamard-rotated q/k).

Three kernels, all written against the layouts below (``Sp`` = sequence padded to a block
multiple; padded rows are written as zeros with scale 0 so the attention kernel loads them
without masks and they contribute nothing):

* ``_qk_quant_kernel``: ``x [B, S, H, D]`` (any strides, last one 1) -> optional RMSNorm across
  heads (LTX's ``norm_q``/``norm_k``), optional interleaved RoPE, Hadamard rotation along ``D``,
  multiplication by ``out_scale`` (softmax scale * log2(e) for q, 1 for k), e4m3 quantization per
  (token, head): ``x8 [B, H, Sp, D]`` and float32 scales ``xs [B, H, Sp]``.
* ``_qk_norm_rope_kernel``: the same norm + RoPE, written back as float rows ``[B, S, H, D]`` (the SDPA
  path: one pass instead of inductor's reduction + elementwise kernels).
* ``_v_amax_kernel`` + ``_v_quant_kernel``: ``v [B, S, H, D]`` -> per-channel ``amax [B, H, D]`` -> e4m3
  ``vt8 [B, H, D, Sp]``, keys contiguous: the K-major B operand Hopper's FP8 ``wgmma`` needs for
  ``P @ V``.
* ``_attn_fwd_kernel``: online-softmax attention over key blocks with FP8 dots for ``q kᵀ`` and
  ``P V``; output ``[B, Sq, H, D]`` in the output tensor's dtype.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2_P_SCALE = tl.constexpr(8.807354922057604)  # log2(448): exp2 produces P * 448 directly (the e4m3 range)


@triton.jit
def _exp2(x, FAST_EXP: tl.constexpr):
    if FAST_EXP:
        # one MUFU.EX2, flushing denormals (P < 2^-126 is 0 in e4m3 anyway)
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.math.exp2(x)


@triton.jit
def _to_e4m3(x, GRID_ROUND: tl.constexpr):
    """Cast float32 ``x`` (already within [-448, 448]) to e4m3, round to nearest even.

    ``GRID_ROUND`` (the CPU interpreter only): Triton's interpreter drops the carry when rounding
    up crosses a power of two (127.7 -> 64 instead of 128), so we round to the e4m3 grid in
    float32 first and the cast becomes exact. The GPU's ``cvt.rn.satfinite`` needs none of this.
    """
    if GRID_ROUND:
        a = tl.maximum(tl.abs(x), 0.015625)  # below 2^-6 the grid is the subnormal step 2^-9
        step = tl.exp2(tl.floor(tl.log2(a)) - 3.0)
        y = x / step
        f = tl.floor(y)
        frac = y - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0
        r = tl.where(frac > 0.5, f + 1.0, tl.where(frac < 0.5, f, tl.where(odd, f + 1.0, f)))
        x = r * step
    return x.to(tl.float8e4nv)


@triton.jit
def _norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, row_ok, H, eps,
                    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr,
                    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr):
    """Rows ``(token, head)`` of ``x [B, S, H, D]`` as float32 ``[BLOCK_T * HP, D]``, after LTX's RMSNorm
    across all heads of a token (optional weight) and its interleaved RoPE (both optional)."""
    R: tl.constexpr = BLOCK_T * HP
    r = tl.arange(0, R)
    head_ok = head < H
    m2 = row_ok[:, None]
    xoff = b.to(tl.int64) * sxb + tok.to(tl.int64)[:, None] * sxs + head[:, None] * sxh
    x = tl.load(X + xoff + d[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_NORM:
        # RMSNorm across all heads of a token: the sum of squares over the HP rows of each
        # token, one masked reduction per token of the tile (no reshapes: they cost layouts)
        ss = tl.sum(x * x, axis=1)
        tid = r // HP
        rstd = tl.zeros([R], tl.float32)
        for t in tl.static_range(BLOCK_T):
            tss = tl.sum(tl.where(tid == t, ss, 0.0), axis=0)
            rstd = tl.where(tid == t, tl.rsqrt(tss / (H * D) + eps), rstd)
        x = x * rstd[:, None]
        if HAS_WEIGHT:
            x = x * tl.load(W + head[:, None] * D + d[None, :], mask=head_ok[:, None], other=0.0).to(tl.float32)
    if HAS_ROPE:
        # interleaved pairs (2i, 2i+1): out[2i] = x[2i] c - x[2i+1] s, out[2i+1] = x[2i+1] c + x[2i] s;
        # the partner comes from registers (split/join), not from a second, unvectorizable load
        coff = b.to(tl.int64) * scb + tok.to(tl.int64)[:, None] * scs + head[:, None] * sch + d[None, :]
        c = tl.load(COS + coff, mask=m2, other=0.0).to(tl.float32)
        sn = tl.load(SIN + coff, mask=m2, other=0.0).to(tl.float32)
        xe, xo = tl.split(tl.reshape(x, (R, D // 2, 2)))
        xr = tl.reshape(tl.join(-xo, xe), (R, D))
        x = x * c + xr * sn
    return x


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
):
    """Persistent: each program loads the Hadamard matrix once and walks tiles of BLOCK_T tokens."""
    # float arguments arrive as fp64 when inductor launches the kernel; fp64 has no conversion to e4m3
    eps, out_scale = tl.cast(eps, tl.float32), tl.cast(out_scale, tl.float32)
    R: tl.constexpr = BLOCK_T * HP  # rows of a tile: (token, head) pairs, heads padded to HP
    r = tl.arange(0, R)
    head = r % HP
    d = tl.arange(0, D)
    head_ok = head < H
    hmat = tl.load(HAD + d[:, None] * D + d[None, :])
    n_tblk = S_PAD // BLOCK_T
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b = tile // n_tblk
        tok = (tile % n_tblk) * BLOCK_T + r // HP
        x = _norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, (tok < S) & head_ok, H, eps,
                            D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT, HAS_ROPE)
        # x @ H as two bf16 MMAs on hi/lo halves of x (H is exact in bf16): ~2^-17 relative error,
        # float32-like, at a third of a 3xTF32 product's cost (plain tf32 moved ~1% of the codes)
        if GRID_ROUND:  # the interpreter: its bf16 dots are wrong; an fp32 dot is exact there
            y = tl.dot(x, hmat.to(tl.float32)) * out_scale
        else:
            x_hi = x.to(tl.bfloat16)
            x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
            y = tl.dot(x_hi, hmat)
            y = tl.dot(x_lo, hmat, y) * out_scale
        amax = tl.max(tl.abs(y), axis=1)
        up = tl.where(amax < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # tiny rows: q8lib.quant.TINY_*
        inv = tl.where(amax > 0, 448.0 / (amax * up), 0.0)
        q = _to_e4m3(tl.minimum(tl.maximum((y * up[:, None]) * inv[:, None], -448.0), 448.0), GRID_ROUND)
        obase = (b * H + head).to(tl.int64) * S_PAD + tok
        tl.store(OUT + obase[:, None] * D + d[None, :], q, mask=head_ok[:, None])
        tl.store(OUTS + obase, amax / 448.0, mask=head_ok)


@triton.jit
def _qk_norm_rope_kernel(
    X, sxb, sxs, sxh,  # [B, S, H, D], stride over D is 1
    W, COS, SIN, scb, scs, sch,  # as in _qk_quant_kernel
    OUT,  # [B, S, H, D] contiguous, x's dtype
    S, H, eps, n_tiles,
    D: tl.constexpr, HP: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_ROPE: tl.constexpr,
):
    """norm_q/norm_k + RoPE for the SDPA path in one pass (the float rows, no rotation or quantization)."""
    eps = tl.cast(eps, tl.float32)  # fp64 when inductor launches the kernel
    R: tl.constexpr = BLOCK_T * HP
    r = tl.arange(0, R)
    head = r % HP
    d = tl.arange(0, D)
    head_ok = head < H
    n_tblk = tl.cdiv(S, BLOCK_T)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b = tile // n_tblk
        tok = (tile % n_tblk) * BLOCK_T + r // HP
        row_ok = (tok < S) & head_ok
        x = _norm_rope_rows(X, sxb, sxs, sxh, W, COS, SIN, scb, scs, sch, b, tok, head, d, row_ok, H, eps,
                            D, HP, BLOCK_T, HAS_NORM, HAS_WEIGHT, HAS_ROPE)
        optr = OUT + ((b.to(tl.int64) * S + tok) * H + head)[:, None] * D + d[None, :]
        tl.store(optr, x.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _v_amax_kernel(
    V, svb, svs, svh,  # [B, S, H, D], stride over D is 1
    AMAX,  # [B, H, D] float32, zero-filled: each program folds in its chunk's max with an atomic
    S, H,
    D: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_k = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
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
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.arange(0, D)
    v = tl.load(V + b.to(tl.int64) * svb + k.to(tl.int64)[:, None] * svs + h * svh + d[None, :],
                mask=(k < S)[:, None], other=0.0).to(tl.float32)
    amax = tl.load(AMAX + bh * D + d)
    up = tl.where(amax < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # tiny channels: q8lib.quant.TINY_*
    inv = tl.where(amax > 0, 448.0 / (amax * up), 0.0)
    q = _to_e4m3(tl.minimum(tl.maximum((v * up[None, :]) * inv[None, :], -448.0), 448.0), GRID_ROUND)
    optr = OUT + (bh * D + d).to(tl.int64)[:, None] * S_PAD + k[None, :]
    tl.store(optr, tl.trans(q), mask=(k < S_PAD)[None, :])
    if pid_k == 0:
        tl.store(OUTS + bh * D + d, amax / 448.0)


@triton.jit
def _softmax_block(t, qs, m_i, l_i, acc, keep, MASKED: tl.constexpr, FAST_EXP: tl.constexpr):
    """One online-softmax step on ``t = (q8 . k8) * ks`` ``[BM, BN]``: returns ``(P * 448, m, l, acc)``.

    ``s = qs * t`` is the logit in log2 units (qs holds softmax scale * log2(e)); exp2 of
    ``s - m + log2(448)`` yields P already scaled to the e4m3 range, in one FFMA + one EX2.
    """
    if MASKED:
        t = tl.where(keep[None, :], t, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(t, 1) * qs)  # qs >= 0, so max(qs * t) = qs * max(t)
    alpha = _exp2(m_i - m_new, FAST_EXP)
    p = _exp2(t * qs[:, None] - (m_new - LOG2_P_SCALE)[:, None], FAST_EXP)
    if MASKED:
        p = tl.where(keep[None, :], p, 0.0)  # qs == 0 (all-zero query) would give 0 * -inf = NaN
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


@triton.jit
def _store_out(O, acc, l_i, vs, b, h, offs_m, d, sob, sos, soh, SQ):
    out = acc * (vs[None, :] / l_i[:, None])
    optr = O + b.to(tl.int64) * sob + offs_m.to(tl.int64)[:, None] * sos + h * soh + d[None, :]
    tl.store(optr, out.to(O.dtype.element_ty), mask=(offs_m < SQ)[:, None])


@triton.jit
def _attn_fwd_kernel(
    Q, QS, K, KS, VT, VS,  # [B,H,Sqp,D] e4m3, [B,H,Sqp] f32, [B,H,Skp,D], [B,H,Skp], [B,H,D,Skp], [B,H,D]
    LENS,  # [B] int32 key lengths (HAS_LENS)
    O, sob, sos, soh,  # [B, Sq, H, D], stride over D is 1
    H, SQ, SQ_PAD, SK, SK_PAD,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LENS: tl.constexpr, FAST_EXP: tl.constexpr, GRID_ROUND: tl.constexpr, WARP_SPEC: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Each program owns BLOCK_M query rows (``SPLIT``: two sub-tiles of BLOCK_M rows, A and B,
    sharing every K/V load; their dots and softmaxes are independent, so the scheduler can run one
    sub-tile's softmax while the tensor cores work on the other's product)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    ROWS: tl.constexpr = BLOCK_M * (2 if SPLIT else 1)
    offs_a = pid_m * ROWS + tl.arange(0, BLOCK_M)
    offs_b = offs_a + BLOCK_M
    offs_n = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    bh64 = bh.to(tl.int64)
    qa = tl.load(Q + (bh64 * SQ_PAD + offs_a[:, None]) * D + d[None, :])
    qsa = tl.load(QS + bh64 * SQ_PAD + offs_a)  # softmax scale * log2(e) folded in by the producer
    # m: running row max of s = qs * ks * (q8 . k8) in log2 units; l: running sum of P * 448
    m_a = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_a = tl.zeros([BLOCK_M], tl.float32)
    acc_a = tl.zeros([BLOCK_M, D], tl.float32)
    if SPLIT:
        qb = tl.load(Q + (bh64 * SQ_PAD + offs_b[:, None]) * D + d[None, :])
        qsb = tl.load(QS + bh64 * SQ_PAD + offs_b)
        m_b = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_b = tl.zeros([BLOCK_M], tl.float32)
        acc_b = tl.zeros([BLOCK_M, D], tl.float32)
    length = SK
    if HAS_LENS:
        length = tl.minimum(tl.maximum(tl.load(LENS + b), 1), SK)
    k_ptrs = K + (bh64 * SK_PAD + offs_n[:, None]) * D + d[None, :]
    ks_ptrs = KS + bh64 * SK_PAD + offs_n
    vt_ptrs = VT + (bh64 * D + d[:, None]) * SK_PAD + offs_n[None, :]
    keep = offs_n < BLOCK_N  # all true; the masked tail below replaces it

    n_full = (length // BLOCK_N) * BLOCK_N
    for start in tl.range(0, n_full, BLOCK_N, warp_specialize=WARP_SPEC):
        k = tl.trans(tl.load(k_ptrs + start * D))
        ks = tl.load(ks_ptrs + start)
        ta = tl.dot(qa, k) * ks[None, :]
        if SPLIT:
            tb = tl.dot(qb, k) * ks[None, :]
        vt = tl.trans(tl.load(vt_ptrs + start))
        p, m_a, l_a, acc_a = _softmax_block(ta, qsa, m_a, l_a, acc_a, keep, False, FAST_EXP)
        acc_a = tl.dot(_to_e4m3(p, GRID_ROUND), vt, acc_a)
        if SPLIT:
            p, m_b, l_b, acc_b = _softmax_block(tb, qsb, m_b, l_b, acc_b, keep, False, FAST_EXP)
            acc_b = tl.dot(_to_e4m3(p, GRID_ROUND), vt, acc_b)
    if n_full < length:  # the last, partial key block: mask keys >= length
        keep = (n_full + offs_n) < length
        k = tl.trans(tl.load(k_ptrs + n_full * D))
        ks = tl.load(ks_ptrs + n_full)
        vt = tl.trans(tl.load(vt_ptrs + n_full))
        ta = tl.dot(qa, k) * ks[None, :]
        p, m_a, l_a, acc_a = _softmax_block(ta, qsa, m_a, l_a, acc_a, keep, True, FAST_EXP)
        acc_a = tl.dot(_to_e4m3(p, GRID_ROUND), vt, acc_a)
        if SPLIT:
            tb = tl.dot(qb, k) * ks[None, :]
            p, m_b, l_b, acc_b = _softmax_block(tb, qsb, m_b, l_b, acc_b, keep, True, FAST_EXP)
            acc_b = tl.dot(_to_e4m3(p, GRID_ROUND), vt, acc_b)
    vs = tl.load(VS + bh64 * D + d)
    _store_out(O, acc_a, l_a, vs, b, h, offs_a, d, sob, sos, soh, SQ)
    if SPLIT:
        _store_out(O, acc_b, l_b, vs, b, h, offs_b, d, sob, sos, soh, SQ)
