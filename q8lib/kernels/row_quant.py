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

This file holds the kernel, its launch plan and tuning-table lookup, its launcher, the ``torch.library``
ops (``q8lib::row_quant``, ``q8lib::add_row_quant`` + fakes) and their reference twins
(:func:`row_quant_ref`, :func:`add_ref`). The public ops with input checks are in :mod:`.linear`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .. import reference as ref
from ..quant import FP8, INT8, QMAX
from ._jit import gelu_tanh, round_e4m3, sign_matrix
from ._library import dual_op, launchable, programs, table_tune, tracing, warn_fallback

__all__ = ["FLOAT_OUT", "INT8_OUT", "FP8_OUT", "plan", "row_kind", "row_attempts", "row_meta", "launch_row_quant",
           "rot_code", "row_quant_op", "add_row_quant_op", "gated_row_quant_op", "row_quant_ref", "add_ref",
           "gated_quant_ref", "qdtype_of"]

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
    HG, hgb, hgs,  # per-head gates [.., K / HEAD_D] multiplied into the rows first (if HEAD_D > 0)
    K: tl.constexpr, ROWS: tl.constexpr,
    A: tl.constexpr, LOGA: tl.constexpr, B: tl.constexpr, LOGB: tl.constexpr,
    NORM: tl.constexpr, HAS_W: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    GELU: tl.constexpr, ROTATE: tl.constexpr, LEFT: tl.constexpr, DOT_BF16: tl.constexpr,
    QMODE: tl.constexpr, QMAX: tl.constexpr, SOFT_FP8: tl.constexpr,
    RESID: tl.constexpr, HAS_GATE: tl.constexpr, BATCHED: tl.constexpr,
    HEAD_D: tl.constexpr,
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
        hb = sign_matrix(B, LOGB)
        if DOT_BF16:
            hb = hb.to(tl.bfloat16)
        if LEFT:
            ha = sign_matrix(A, LOGA)
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
        if HEAD_D > 0:  # gated attention's output: each head's channels times that head's gate (a cached gather)
            hg = tl.load(HG + (bi * hgb + si * hgs)[:, None] + (cols // HEAD_D)[None, :], mask=m2, other=0.0)
            x = x * hg.to(tl.float32)
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
            x = gelu_tanh(x)
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
                    v = round_e4m3(v)
                tl.store(optr, v.to(OUT.dtype.element_ty), mask=m2)
            tl.store(QS + rows, amax * (1.0 / QMAX), mask=rmask)  # as quant.quantize_rowwise: a multiply rounds alike everywhere


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


# ------------------------------------------------------------------------------------------------
# Launcher


# ------------------------------------------------------------------------------------------------
# Row kernel: launcher, custom op, fake
def rot_code(rotate: bool, hadamard_block: int | None) -> int:
    """custom-op encoding of the rotation: -1 none (also ``hadamard_block=1``: ``H_1 = [1]``), 0 full row,
    b > 1 block-diagonal."""
    return -1 if not rotate or hadamard_block == 1 else (0 if hadamard_block is None else int(hadamard_block))


def _bcast3(t: torch.Tensor | None, x: torch.Tensor):
    """``(t3, batch stride, seq stride)``: ``t`` broadcast to ``x`` and viewed like :func:`_as3` (no copy
    for the usual ``[B, 1, K]`` / ``[K]`` modulations)."""
    if t is None:
        return None, 0, 0
    if t.shape[-1] != x.shape[-1]:
        raise ValueError(f"modulation of shape {tuple(t.shape)} does not match rows of {x.shape[-1]}")
    t3 = _as3(t.expand(x.shape))
    return t3, t3.stride(0), t3.stride(1)


def _as3(x: torch.Tensor) -> torch.Tensor:
    """``x [..., S, K]`` -> ``[Bf, S, K]`` (``[M, K]`` -> ``[1, M, K]``) with a contiguous last dim."""
    x3 = x.reshape(1, -1, x.shape[-1]) if x.dim() <= 2 else x.reshape(-1, x.shape[-2], x.shape[-1])
    return x3 if x3.stride(-1) == 1 else x3.contiguous()


_ROW_FIT: dict = {}  # kernel variant -> the launch (as in _ROW_DEFAULT_TUNE, plus "tile") that fitted
# The default launch (v1 in benchmarks/NOTES_linear.md): persistent grid of 4 programs per SM, warps by tile size.
_ROW_DEFAULT_TUNE = {"stages": 3, "warps": None, "progs_per_sm": 4, "batched": False}


def row_kind(K: int, norm: bool, gelu: bool, residual: bool, rot: int) -> str:
    """The tuning-table key of a row op: ``"2048/add_norm/full"``, ``"8192/gelu/full"``, ..."""
    kind = "norm" if norm else "gelu" if gelu else "plain"
    if residual:
        kind = "add_norm" if norm else "add"
    return f"{K}/{kind}/{'none' if rot < 0 else 'full' if rot == 0 else f'b{rot}'}"


def row_attempts(K: int, tile: int, measured: dict | None) -> list:
    """The launch forms :func:`launch_row_quant` tries in order for rows of ``K`` (``tile``: the default
    plan's elements a tile): the ``measured`` one (row_tune.json) if any, then the default plan with 3
    stages, 1 stage, then halved tiles. torch.compile launches only the first."""
    attempts = [dict(_ROW_DEFAULT_TUNE, tile=measured["rows"] * K, **measured)] if measured else []
    return attempts + [dict(_ROW_DEFAULT_TUNE, tile=te, stages=st)
                       for te, st in [(tile, 3), (tile, 1)] + [(tile >> i, 1) for i in range(1, 8) if (tile >> i) >= K]]


def row_meta(K: int, hadamard_block: int | None, rotate: bool, t: dict, *, norm: bool, gelu: bool, has_weight: bool,
             has_scale: bool, has_shift: bool, residual: bool, gate: bool, out_dtype: torch.dtype,
             cuda: bool = True, head_d: int = 0) -> dict:
    """The row kernel's constexprs, ``num_warps`` and ``num_stages`` for the launch form ``t`` (one of
    :func:`row_attempts`): what :func:`launch_row_quant` passes (``q8lib.kernels.targets`` compiles it too)."""
    rows_per, A, B, left = plan(K, hadamard_block, rotate, t["tile"])
    elems = rows_per * K
    return {
        "K": K, "ROWS": rows_per, "A": A, "LOGA": A.bit_length() - 1, "B": B, "LOGB": B.bit_length() - 1,
        "NORM": norm, "HAS_W": has_weight, "HAS_SCALE": has_scale, "HAS_SHIFT": has_shift,
        "GELU": gelu, "ROTATE": rotate, "LEFT": left, "DOT_BF16": cuda,
        "QMODE": {INT8: INT8_OUT, FP8: FP8_OUT}.get(out_dtype, FLOAT_OUT), "QMAX": QMAX.get(out_dtype, 1.0),
        "SOFT_FP8": not cuda, "RESID": residual, "HAS_GATE": gate, "BATCHED": bool(t["batched"]), "HEAD_D": head_d,
        "num_warps": t["warps"] or (4 if elems <= 2048 else (8 if elems <= 16384 else 16)), "num_stages": t["stages"],
    }


def launch_row_quant(x, weight, scale, shift, eps, norm, gelu, rot, out, out_scale=None,
                     residual=None, gate=None, h_out=None, tune=None, head_gate=None):
    """Run the row kernel on ``x [..., K]`` into preallocated ``out [M, K]`` (+ ``out_scale [M]`` fp32).

    ``out.dtype`` picks the mode: int8 / float8_e4m3fn quantize, a float dtype writes the transformed
    rows. ``rot`` as :func:`rot_code`. With ``residual`` (shape of ``x``) the rows are first
    ``x + residual * gate`` (``gate`` broadcast like ``scale``, optional), written to ``h_out [M, K]``.
    ``head_gate [..., H]`` (leading dims of ``x``) multiplies each of the ``H`` heads' ``K / H`` consecutive
    channels by its gate before anything else (gated attention's output ahead of ``to_out``).
    Tests call this directly to poison the outputs beforehand. ``tune`` (benchmarks, tests) fixes the
    launch instead of the default plan: a dict of ``rows``, ``stages``, ``warps``, ``progs_per_sm``
    (0: one program per tile, no persistent loop) and ``batched`` (H_A as one batched product).
    """
    # torch.compile traces this launcher with fake tensors (the ops below are triton_ops): the kernel is
    # then recorded through wrap_triton, and launched later from inductor's code, so nothing can fail here
    # and the launch form is decided now (the one that fitted in eager runs, else the first attempt).
    traced = tracing(x)
    kernel = launchable(_row_quant_kernel, x)
    K = x.shape[-1]
    hb, rotate = (None if rot <= 0 else rot), rot >= 0
    p = plan(K, hb, rotate)
    if isinstance(p, str):
        raise ValueError(p)
    x3 = _as3(x)
    M, S = x3.shape[0] * x3.shape[1], x3.shape[1]
    if M == 0:
        return out, out_scale
    sc, sscb, scs = _bcast3(scale, x)
    sh, sshb, shs = _bcast3(shift, x)
    rs, rsb, rss = _bcast3(residual, x)
    g, gb, gs = _bcast3(gate, x)
    dummy = x3
    head_d, hg, hgb, hgs = 0, dummy, 0, 0
    if head_gate is not None:
        hg = _as3(head_gate)
        head_d = K // head_gate.shape[-1]
        hgb, hgs = hg.stride(0), hg.stride(1)
    # The launch: the form measured fastest for this GPU and op kind (row_tune.json) if there is one,
    # then the default plan; on "out of resource" (shared memory depends on the tile, the pipelining
    # depth and the input dtype) the next attempt: fewer stages, then half the tile. The launch that
    # fitted is remembered per kernel variant, so the table lookup, failed compiles and exceptions are
    # paid once, not on every call (that host time showed up in the H100 timings).
    tile = p[0] * K
    key = (K, tile, hb, rotate, norm, gelu, weight is not None, scale is not None, shift is not None,
           residual is not None, gate is not None, x.dtype, out.dtype, x.device.type, head_d)
    if tune is not None:
        attempts = [dict(_ROW_DEFAULT_TUNE, tile=tune["rows"] * K if "rows" in tune else tile, **tune)]
    elif key in _ROW_FIT:
        attempts = [_ROW_FIT[key]]
    else:
        attempts = row_attempts(K, tile, table_tune(x.device, row_kind(K, norm, gelu, residual is not None, rot)))
    if traced:
        attempts = attempts[:1]
    for n, t in enumerate(attempts):
        meta = row_meta(K, hb, rotate, t, norm=norm, gelu=gelu, has_weight=weight is not None,
                        has_scale=scale is not None, has_shift=shift is not None, residual=residual is not None,
                        gate=gate is not None, out_dtype=out.dtype, cuda=x.is_cuda, head_d=head_d)
        progs = programs(x.device, triton.cdiv(M, meta["ROWS"]), t["progs_per_sm"])
        try:
            kernel[(progs,)](
                x3, x3.stride(0), x3.stride(1),
                weight if weight is not None else dummy,
                sc if sc is not None else dummy, sscb, scs,
                sh if sh is not None else dummy, sshb, shs,
                out, out_scale if out_scale is not None else out,
                M, S, float(eps),
                rs if rs is not None else dummy, rsb, rss, g if g is not None else dummy, gb, gs,
                h_out if h_out is not None else dummy, hg, hgb, hgs, **meta,
            )
            if tune is None and not traced:
                _ROW_FIT[key] = t
            return out, out_scale
        except OutOfResources:
            if n == len(attempts) - 1:
                raise
    return out, out_scale


# ------------------------------------------------------------------------------------------------
# Ops, fakes and reference twins


def qdtype_of(qmode: int):
    return {INT8_OUT: INT8, FP8_OUT: FP8}.get(qmode)


def _row_quant_impl(x: torch.Tensor, weight: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                  shift: Optional[torch.Tensor], eps: float, norm: bool, gelu: bool, rot: int,
                  qmode: int) -> tuple[torch.Tensor, torch.Tensor]:
    qdtype = qdtype_of(qmode)
    K = x.shape[-1]
    M = x.numel() // max(K, 1)
    out = torch.empty(M, K, device=x.device, dtype=qdtype or x.dtype)
    out_scale = torch.empty(M if qdtype is not None else 0, device=x.device, dtype=torch.float32)
    try:
        launch_row_quant(x, weight, scale, shift, eps, norm, gelu, rot, out, out_scale if qdtype is not None else None)
    except Exception as e:  # noqa: BLE001 - only resource errors get here; never return unwritten output
        if not isinstance(e, OutOfResources):
            raise
        warn_fallback("row_quant", f"kernel does not fit this GPU for rows of {K}: {e}")
        return row_quant_ref(x, weight, scale, shift, eps, norm, gelu, rot, qdtype)
    return out.view(x.shape), out_scale.view(x.shape[:-1] if qdtype is not None else (0,))


def _row_quant_fake(x, weight, scale, shift, eps, norm, gelu, rot, qmode):
    qdtype = qdtype_of(qmode)
    out = x.new_empty(x.shape, dtype=qdtype or x.dtype)
    out_scale = x.new_empty(x.shape[:-1] if qdtype is not None else (0,), dtype=torch.float32)
    return out, out_scale


row_quant_op = dual_op("row_quant", _row_quant_impl, _row_quant_fake)


def row_quant_ref(x, weight, scale, shift, eps, norm, gelu, rot, qdtype):
    """The row op in reference math (same outputs as the kernel)."""
    y = ref.rms_norm_ref(x, weight, eps, scale, shift) if norm else x
    if gelu:
        y = F.gelu(y.float(), approximate="tanh").to(x.dtype)
    if qdtype is None:
        return y, x.new_empty((0,), dtype=torch.float32)
    return ref.quantize_activation_ref(y, qdtype, None if rot <= 0 else rot, rotate=rot >= 0)


def _gated_row_quant_impl(x: torch.Tensor, head_gate: torch.Tensor, rot: int,
                          qmode: int) -> tuple[torch.Tensor, torch.Tensor]:
    qdtype = qdtype_of(qmode)
    K = x.shape[-1]
    M = x.numel() // max(K, 1)
    out = torch.empty(M, K, device=x.device, dtype=qdtype)
    out_scale = torch.empty(M, device=x.device, dtype=torch.float32)
    try:
        launch_row_quant(x, None, None, None, 1e-6, False, False, rot, out, out_scale, head_gate=head_gate)
    except Exception as e:  # noqa: BLE001 - resource errors only; never return unwritten output
        if not isinstance(e, OutOfResources):
            raise
        warn_fallback("gated_row_quant", f"kernel does not fit this GPU for rows of {K}: {e}")
        return gated_quant_ref(x, head_gate, rot, qdtype)
    return out.view(x.shape), out_scale.view(x.shape[:-1])


def _gated_row_quant_fake(x, head_gate, rot, qmode):
    return x.new_empty(x.shape, dtype=qdtype_of(qmode)), x.new_empty(x.shape[:-1], dtype=torch.float32)


gated_row_quant_op = dual_op("gated_row_quant", _gated_row_quant_impl, _gated_row_quant_fake)


def gated_quant_ref(x, head_gate, rot, qdtype):
    """Per-head gates then quantization in reference math: ``x [..., K]`` times ``head_gate [..., H]`` repeated over
    each head's ``K / H`` channels (rounded to ``x.dtype``, as the unfused gate multiply), rotated and quantized."""
    return ref.quantize_activation_ref(ref.head_gates_ref(x, head_gate), qdtype, None if rot <= 0 else rot,
                                       rotate=rot >= 0)


def _add_row_quant_impl(x: torch.Tensor, residual: torch.Tensor, gate: Optional[torch.Tensor],
                      weight: Optional[torch.Tensor], scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      eps: float, norm: bool, rot: int, qmode: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qdtype = qdtype_of(qmode)
    K = x.shape[-1]
    M = x.numel() // max(K, 1)
    h = torch.empty(M, K, device=x.device, dtype=x.dtype)
    out = torch.empty(M, K, device=x.device, dtype=qdtype)
    out_scale = torch.empty(M, device=x.device, dtype=torch.float32)
    try:
        launch_row_quant(x, weight, scale, shift, eps, norm, False, rot, out, out_scale, residual, gate, h)
    except Exception as e:  # noqa: BLE001 - resource errors only; never return unwritten output
        if not isinstance(e, OutOfResources):
            raise
        warn_fallback("add_row_quant", f"kernel does not fit this GPU for rows of {K}: {e}")
        h2 = add_ref(x, residual, gate)
        return (h2,) + row_quant_ref(h2, weight, scale, shift, eps, norm, False, rot, qdtype)
    return h.view(x.shape), out.view(x.shape), out_scale.view(x.shape[:-1])


def _add_row_quant_fake(x, residual, gate, weight, scale, shift, eps, norm, rot, qmode):
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=qdtype_of(qmode)),
            x.new_empty(x.shape[:-1], dtype=torch.float32))


add_row_quant_op = dual_op("add_row_quant", _add_row_quant_impl, _add_row_quant_fake)


def add_ref(x, residual, gate):
    r = residual.float() * gate.float() if gate is not None else residual.float()
    return (x.float() + r).to(x.dtype)
