"""Triton device functions shared by several q8lib kernels (no kernels, no launchers here)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sign_matrix(N: tl.constexpr, LOGN: tl.constexpr):
    """Unnormalised Sylvester Hadamard ``[N, N]`` (±1, float32) from the parity of ``i & j``."""
    i = tl.arange(0, N)[:, None]
    j = tl.arange(0, N)[None, :]
    p = i & j
    par = p & 0
    for k in tl.static_range(LOGN):
        par = par ^ ((p >> k) & 1)
    return (1 - 2 * par).to(tl.float32)


@triton.jit
def gelu_tanh(x):
    # tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits at ±inf, and runs in the CPU interpreter too.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


@triton.jit
def round_e4m3(v):
    """Round (already clamped) ``v`` to the e4m3 grid, nearest-even, so the cast below is exact.

    Only for Triton's CPU interpreter, whose float32->e4m3 cast halves values that round up into
    the next binade (seen with triton 3.9); GPUs round correctly in the cast itself.
    """
    a = tl.abs(v)
    e = tl.maximum(tl.floor(tl.log2(tl.maximum(a, 1e-30))), -6.0)  # subnormals share 2^-6's step
    step = tl.exp2(e - 3.0)
    r = v / step
    r = (r + 12582912.0) - 12582912.0
    return r * step


@triton.jit
def exp2(x, FAST_EXP: tl.constexpr):
    if FAST_EXP:
        # one MUFU.EX2, flushing denormals (P < 2^-126 is 0 in e4m3 anyway)
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.math.exp2(x)


@triton.jit
def to_e4m3(x, GRID_ROUND: tl.constexpr):
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
def round_bf16(x):
    """float32 ``x`` rounded to the nearest bf16 value (ties to even), still float32; finite ``x`` only.

    Only for Triton's CPU interpreter, whose float32 -> bf16 cast truncates (seen with triton 3.9: half the
    values off by one step, a -0.3% bias); GPUs round in the cast itself.
    """
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def head_rows(H, HP: tl.constexpr, BLOCK_T: tl.constexpr, D: tl.constexpr):
    """The rows of a q/k producer tile: ``BLOCK_T`` tokens x ``HP`` heads (padded to a power of two), token-major.
    Returns the row ids ``r``, each row's head, the column ids ``d`` and whether the head exists (``< H``)."""
    r = tl.arange(0, BLOCK_T * HP)
    head = r % HP
    return r, head, tl.arange(0, D), head < H


@triton.jit
def batch_head(H):
    """``(bh, b, h)`` of a program whose grid axis 1 runs over batch x heads."""
    bh = tl.program_id(1)
    return bh, bh // H, bh % H


@triton.jit
def softmax_start(BLOCK_M: tl.constexpr, D: tl.constexpr):
    """Online-softmax state of BLOCK_M query rows: running max (-inf), running sum (0), accumulator [BLOCK_M, D] (0)."""
    return (tl.full([BLOCK_M], float("-inf"), tl.float32), tl.zeros([BLOCK_M], tl.float32),
            tl.zeros([BLOCK_M, D], tl.float32))


@triton.jit
def key_length(LENS, b, SK, HAS_LENS: tl.constexpr):
    """Keys of batch ``b`` that count: ``LENS[b]`` clamped to [1, SK] (``HAS_LENS``), else all ``SK``."""
    length = SK
    if HAS_LENS:
        length = tl.minimum(tl.maximum(tl.load(LENS + b), 1), SK)
    return length
