"""Triton row kernel: [RMSNorm + AdaLN modulation | tanh-GELU] + Hadamard rotation + 8-bit quantization.

One pass over ``x``: every row is read once, transformed in registers and written once as 8-bit
values plus one float32 scale (or as a float row when no quantization is asked for).

Rotation in-kernel. The Sylvester matrix factors as ``H_K = H_A ⊗ H_B`` (``K = A·B``,
``H[i, j] = (-1)^popcount(i & j)``), so with a row viewed as ``X [A, B]`` (index ``i·B + j``)
``x H_K = vec(H_A X H_B)``: two small tensor-core products per row instead of ``K log K`` adds.
Block-diagonal rotations (``hadamard_block = b``) are a single product ``X [K/b, b] @ H_b``.
The ±1 matrices are generated in registers from the bit parity, never loaded.

The grid is persistent (a few programs per SM, each looping over row tiles), so the Hadamard
matrices are built once per program.
"""
from __future__ import annotations

import triton
import triton.language as tl

# QMODE values
FLOAT_OUT, INT8_OUT, FP8_OUT = 0, 1, 2
# Longest row the kernel keeps in registers (fp32 elements), and the tile it aims for (rows x K):
# 2048 (one row of the 2B model per step, 3 pipeline stages, 4 programs per SM) is the setting measured
# fastest on the H100 (v1 in benchmarks/NOTES_linear.md); larger tiles with 2 stages were up to 2x slower
# and 16384 elements ran out of shared memory (Triton multi-buffers the tile loads): the launcher
# retries with fewer stages and smaller tiles until a launch fits.
MAX_TILE = 16384
TILE_ELEMS = 2048


@triton.jit
def _sign_matrix(N: tl.constexpr, LOGN: tl.constexpr):
    """Unnormalised Sylvester Hadamard ``[N, N]`` (±1, float32) from the parity of ``i & j``."""
    i = tl.arange(0, N)[:, None]
    j = tl.arange(0, N)[None, :]
    p = i & j
    par = p & 0
    for k in tl.static_range(LOGN):
        par = par ^ ((p >> k) & 1)
    return (1 - 2 * par).to(tl.float32)


@triton.jit
def _gelu_tanh(x):
    # tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits at ±inf, and runs in the CPU interpreter too.
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


@triton.jit
def _round_e4m3(v):
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
def _row_quant_kernel(
    X, sxb, sxs,  # input rows: element (b, s, k) at X + b*sxb + s*sxs + k
    W,  # RMSNorm affine weight [K] (if HAS_W)
    SC, sscb, scs,  # AdaLN scale, broadcast strides (if HAS_SCALE)
    SH, sshb, shs,  # AdaLN shift (if HAS_SHIFT)
    OUT, QS,  # [M, K] output (8-bit or float), [M] float32 scales (8-bit modes)
    M, S, eps,
    RS, rsb, rss,  # residual branch added to the rows first (if RESID): x + RS * G
    G, gb, gs,  # its gate (if HAS_GATE), broadcast strides
    HOUT,  # [M, K] the sum, in HOUT's dtype (if RESID): the new residual stream
    K: tl.constexpr, ROWS: tl.constexpr,
    A: tl.constexpr, LOGA: tl.constexpr, B: tl.constexpr, LOGB: tl.constexpr,
    NORM: tl.constexpr, HAS_W: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    GELU: tl.constexpr, ROTATE: tl.constexpr, LEFT: tl.constexpr, DOT_BF16: tl.constexpr,
    QMODE: tl.constexpr, QMAX: tl.constexpr, SOFT_FP8: tl.constexpr = False,
    RESID: tl.constexpr = False, HAS_GATE: tl.constexpr = False, BATCHED: tl.constexpr = False,
):
    """Tile = ``ROWS`` rows of ``K``. Rotation: ``[ROWS*K/B, B] @ H_B`` and, if ``LEFT`` (``K == A*B``),
    ``H_A`` along each row's ``A`` index; normalised by ``1/sqrt(A*B)`` (``A = 1`` unless ``LEFT``).
    Several rows per tile amortise the per-iteration latency chain and the staging of the ±1 matrices."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # float arguments arrive as fp64 when inductor launches the kernel (torch.compile); fp64 rows would
    # have no conversion to e4m3 ("Unsupported conversion from f64 to f8E4M3FN" on triton 3.6)
    eps = tl.cast(eps, tl.float32)
    cols = tl.arange(0, K)
    if ROTATE:
        hb = _sign_matrix(B, LOGB)
        if DOT_BF16:
            hb = hb.to(tl.bfloat16)
        if LEFT:
            ha = _sign_matrix(A, LOGA)
            if DOT_BF16:
                ha = ha.to(tl.bfloat16)
    if NORM and HAS_W:
        w = tl.load(W + cols).to(tl.float32)
    n_tiles = tl.cdiv(M, ROWS)
    for t in range(pid, n_tiles, nprog):
        rows = t * ROWS + tl.arange(0, ROWS)
        rmask = rows < M
        bi = rows // S
        si = rows - bi * S
        m2 = rmask[:, None]
        x = tl.load(X + (bi * sxb + si * sxs)[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        if RESID:  # gated residual add; the sum is both written out and transformed below
            r = tl.load(RS + (bi * rsb + si * rss)[:, None] + cols[None, :], mask=m2, other=0.0).to(tl.float32)
            if HAS_GATE:
                g = tl.load(G + (bi * gb + si * gs)[:, None] + cols[None, :], mask=m2, other=0.0)
                r = r * g.to(tl.float32)
            x = x + r
            tl.store(HOUT + rows[:, None].to(tl.int64) * K + cols[None, :], x.to(HOUT.dtype.element_ty), mask=m2)
        if NORM:
            ms = tl.sum(x * x, axis=1) / K
            x = x * tl.rsqrt(ms + eps)[:, None]
            if HAS_W:
                x = x * w[None, :]
            if HAS_SCALE:
                sc = tl.load(SC + (bi * sscb + si * scs)[:, None] + cols[None, :], mask=m2, other=0.0)
                x = x * (1.0 + sc.to(tl.float32))
            if HAS_SHIFT:
                sh = tl.load(SH + (bi * sshb + si * shs)[:, None] + cols[None, :], mask=m2, other=0.0)
                x = x + sh.to(tl.float32)
        if GELU:
            x = _gelu_tanh(x)
        if ROTATE:
            xb = tl.reshape(x, (ROWS * K // B, B))
            if DOT_BF16:
                xb = xb.to(tl.bfloat16)
            y = tl.dot(xb, hb)
            if LEFT and ROWS == 1:  # H_A @ Y on the row's [A, B] view (the v1 form measured on the H100)
                if DOT_BF16:
                    y = y.to(tl.bfloat16)
                y = tl.dot(ha, y)
            elif LEFT and BATCHED:
                # H_A @ Y_r for every row r of the tile as one batched product (no permutes)
                y3 = tl.reshape(y, (ROWS, A, B))
                ha3 = tl.broadcast_to(ha[None, :, :], (ROWS, A, A))
                if DOT_BF16:
                    y3 = y3.to(tl.bfloat16)
                y = tl.dot(ha3, y3)
            elif LEFT:
                # H_A acts along each row's slow index: bring it to the fast side, multiply, bring it back
                yt = tl.reshape(tl.permute(tl.reshape(y, (ROWS, A, B)), (0, 2, 1)), (ROWS * B, A))
                if DOT_BF16:
                    yt = yt.to(tl.bfloat16)
                z = tl.dot(yt, ha)
                y = tl.permute(tl.reshape(z, (ROWS, B, A)), (0, 2, 1))
            x = tl.reshape(y, (ROWS, K)) * (1.0 / tl.sqrt(A * B * 1.0))
        optr = OUT + rows[:, None].to(tl.int64) * K + cols[None, :]
        if QMODE == 0:
            tl.store(optr, x.to(OUT.dtype.element_ty), mask=m2)
        else:
            amax = tl.max(tl.abs(x), axis=1)
            up = tl.where(amax < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)  # q8lib.quant.TINY_*
            inv = tl.where(amax > 0, QMAX / (amax * up), 0.0)
            v = (x * up[:, None]) * inv[:, None]
            v = tl.minimum(tl.maximum(v, -QMAX), QMAX)  # saturate: never NaN/inf in e4m3
            if QMODE == 1:
                # round half to even (as torch.round): adding 1.5*2^23 leaves the integer part in fp32
                v = (v + 12582912.0) - 12582912.0
                tl.store(optr, v.to(tl.int8), mask=m2)
            else:
                if SOFT_FP8:
                    v = _round_e4m3(v)
                tl.store(optr, v.to(OUT.dtype.element_ty), mask=m2)
            tl.store(QS + rows, amax / QMAX, mask=rmask)


def plan(K: int, hadamard_block: int | None, rotate: bool = True, tile_elems: int | None = None):
    """Tile plan ``(ROWS, A, B, LEFT)`` for a row of ``K``, or a string saying why the kernel can't.

    ``hadamard_block=1`` (or ``rotate=False``): no rotation. Full rotations of ``K > 256`` use the two-product factorisation (``A·B = K``, ``B >= A``);
    rotation blocks of ``<= 128`` (and ``K <= 128``) use one product. ``ROWS`` rows per tile.
    """
    if K < 16 or K & (K - 1):
        return f"row length {K} is not a power of two >= 16"
    if K > MAX_TILE:
        return f"row length {K} > {MAX_TILE}"
    rows = max(1, min(tile_elems or TILE_ELEMS, MAX_TILE) // K)
    if not rotate or hadamard_block == 1:  # H_1 = [1]: a block size of 1 means no rotation
        return rows, 1, 16, False
    b = K if hadamard_block is None else hadamard_block
    if b < 16 or b & (b - 1) or K % b:
        return f"hadamard block {b} is not a power of two >= 16 dividing {K}"
    if b <= 128:  # a 256x256 ±1 operand alone would take 128 KB of shared memory
        return max(rows, 16 * b // K), 1, b, False
    if b != K:
        return f"block-diagonal rotation with block {b} > 128 (only full rotations factor in-kernel)"
    logk = K.bit_length() - 1
    B = 1 << ((logk + 1) // 2)
    return rows, K // B, B, True
