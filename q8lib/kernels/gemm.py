"""Triton 8-bit GEMM with the Q8 epilogue: ``act((x_q @ w_qᵀ) * x_scale[:, None] * w_scale + bias)``.

``x_q [M, K]`` and ``w_q [N, K]`` are both K-contiguous (int8 with int32 accumulation, or
float8_e4m3fn with float32 accumulation); the epilogue applies both scales, the bias, an optional
tanh-GELU and casts to the output dtype, so the [M, N] product is written once. Used for int8 on
every GPU (Ada's int8 tensor-core rate is twice its fp32-accumulating fp8 rate) and for fp8 where
cuBLAS' row-wise scaled GEMM is not available.

This file holds the kernels (pointer kernel, autotuned; Hopper's persistent TMA kernel), the route choice
(:func:`gemm_impl`, :func:`set_gemm_impl`), the launcher, the ``q8lib::q8_gemm`` op + fake, and the reference
twin (:func:`gemm_ref`, :func:`q8lib.reference.q8_matmul_ref`). The public op with input checks is
:func:`q8lib.kernels.linear.matmul`.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import reference as ref
from ..quant import FP8, INT8
from ._jit import gelu_tanh
from ._library import capability, dual_op, launchable, sm_count

__all__ = ["gemm_impl", "set_gemm_impl", "launch_gemm", "gemm_op", "gemm_ref", "TMA_CONFIG", "channel_epilogue"]

GEMM_IMPL = os.environ.get("Q8LIB_GEMM", "auto")  # read once (traced as a constant); set_gemm_impl() changes it


def _configs():
    cfgs = []
    for bm, bn, bk, st, w in [
        (128, 256, 128, 3, 8), (256, 128, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 128, 4, 4),
        (128, 256, 64, 4, 8), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4),
    ]:
        cfgs.append(triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_stages=st, num_warps=w))
    return cfgs


@triton.jit
def _q8_gemm_body(XQ, XS, WQ, WS, BIAS, OUT, M, N, K, sxm, swn, som,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                  HAS_BIAS: tl.constexpr, GELU: tl.constexpr, IS_INT: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BM)
    grid_n = tl.cdiv(N, BN)
    # grouped ordering: GROUP_M row tiles share the same weight tiles while they sit in L2
    width = GROUP_M * grid_n
    group = pid // width
    first_m = group * GROUP_M
    gsize = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % gsize
    pid_n = (pid % width) // gsize
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    # clamp rows/cols for the loads (their results are masked at the store): keeps loads unmasked in M/N
    rm_l = tl.where(rm < M, rm, 0)
    rn_l = tl.where(rn < N, rn, 0)
    a_ptr = XQ + rm_l[:, None].to(tl.int64) * sxm + rk[None, :]
    b_ptr = WQ + rn_l[:, None].to(tl.int64) * swn + rk[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.int32 if IS_INT else tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        if EVEN_K:
            a = tl.load(a_ptr)
            b = tl.load(b_ptr)
        else:
            kmask = rk[None, :] < K - k * BK
            # the fill value in the operand's type: an int 0 cannot be cast to e4m3 on a GPU (the interpreter allows it)
            if IS_INT:
                a = tl.load(a_ptr, mask=kmask, other=0)
                b = tl.load(b_ptr, mask=kmask, other=0)
            else:
                a = tl.load(a_ptr, mask=kmask, other=0.0)
                b = tl.load(b_ptr, mask=kmask, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32 if IS_INT else tl.float32)
        a_ptr += BK
        b_ptr += BK
    xs = tl.load(XS + rm_l)
    ws = tl.load(WS + rn_l)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y = y + tl.load(BIAS + rn_l).to(tl.float32)[None, :]
    if GELU:
        y = gelu_tanh(y)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(OUT + rm[:, None].to(tl.int64) * som + rn[None, :], y.to(OUT.dtype.element_ty), mask=mask)


# the same kernel, tuned over _configs() per problem size (GPU); the plain one takes explicit tiles (interpreter)
_q8_gemm_kernel = _q8_gemm_body
_q8_gemm_autotuned = triton.autotune(configs=_configs(), key=["M", "N", "K", "IS_INT", "HAS_BIAS", "GELU"])(
    triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BK"] == 0})(_q8_gemm_body))


# ------------------------------------------------------------------------------------------------
# Hopper (sm_90+): persistent, operands through TMA tensor descriptors
# BM, BN, BK, warps, stages and Triton's warp specialization of the tile loop. H200 sweep at the 2B block GEMMs
# (benchmarks/sweep_gemm_ws.py, benchmarks/results/kernels/gemm_ws_h200.json): int8 GEMMs of a forward 19.9 ms with
# warp specialization at 128x256x128 / 4 warps / 3 stages, 25.2 ms for the best without it (8 warps; 4 warps without
# it: 87.7), cuBLAS row-wise fp8 17.8 ms. Triton applies it to this kernel only with 4 warps.
TMA_WARP_SPECIALIZE = True
TMA_CONFIG = (128, 256, 128, 4, 3)


@triton.jit
def channel_epilogue(y, WS, BIAS, rn, N, HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
    """Per-output-channel part of the Q8 epilogue on a float32 tile ``y [BM, BN]`` (columns ``rn``): weight
    scales, bias, tanh-GELU."""
    y = y * tl.load(WS + rn, mask=rn < N, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        y = gelu_tanh(y)
    return y


@triton.jit
def _q8_gemm_tma_kernel(X, W, XS, WS, BIAS, OUT, M, N, K, sxm, swn, som,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                        NUM_PROGS: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, IS_INT: tl.constexpr,
                        WARP_SPEC: tl.constexpr):
    """Same math as :func:`_q8_gemm_body`; program ``p`` takes output tiles ``p, p + NUM_PROGS, ...`` (one
    program per SM), and the copy engine brings the [BM, BK] / [BN, BK] operand tiles (out-of-range rows
    and K columns read as zeros). Measured on the H200 at LTX's block shapes: int8 859-1274 TOP/s against
    480-1165 for the pointer kernel and 648-865 for ``torch._int_mm``.

    The TMA descriptors are made here, on the device, from plain pointers: host-side descriptors
    (``TensorDescriptor``) cannot cross a ``triton_op`` (torch's non-Dynamo tracing does not capture them:
    inductor then fails hashing the fake tensor they hold), and they cost host time at every eager call.
    Device-side descriptors need Triton's scratch allocator (:func:`_scratch_allocator`; inductor sets its own).
    ``WARP_SPEC``: Triton's automatic warp specialization of the tile loop (a producer warp for the copies, consumer warp
    groups for the dots and the epilogue of the previous tile), :data:`TMA_WARP_SPECIALIZE`."""
    x_desc = tl.make_tensor_descriptor(X, shape=[M, K], strides=[sxm, 1], block_shape=[BM, BK])
    w_desc = tl.make_tensor_descriptor(W, shape=[N, K], strides=[swn, 1], block_shape=[BN, BK])
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGS, warp_specialize=WARP_SPEC):
        width = GROUP_M * num_pid_n
        first_m = (tile // width) * GROUP_M
        gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % width) % gsize
        pid_n = (tile % width) // gsize
        acc = tl.zeros((BM, BN), dtype=tl.int32 if IS_INT else tl.float32)
        for ki in range(0, k_tiles):
            a = x_desc.load([pid_m * BM, ki * BK])
            b = w_desc.load([pid_n * BN, ki * BK])
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32 if IS_INT else tl.float32)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        y = acc.to(tl.float32) * tl.load(XS + rm, mask=rm < M, other=0.0)[:, None]
        y = channel_epilogue(y, WS, BIAS, rn, N, HAS_BIAS, GELU)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        tl.store(OUT + rm[:, None].to(tl.int64) * som + rn[None, :], y.to(OUT.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Route, launcher, op, fake, reference twin


def set_gemm_impl(name: str) -> str:
    """Force the GEMM route (``"auto"``, ``"triton"``, ``"triton_tma"``, ``"scaled_mm"``, ``"int_mm"``); returns
    the previous one. ``"auto"``: cuBLAS fp8 on sm_90+, int8 through the Triton GEMM (on sm_90+ its persistent,
    warp-specialized TMA form); ``"triton"``: the Triton pointer kernel (every GPU); ``"triton_tma"``: the TMA form
    for fp8 too (benchmarks/NOTES_linear.md)."""
    global GEMM_IMPL
    if name not in ("auto", "triton", "triton_tma", "scaled_mm", "int_mm"):
        raise ValueError(f"GEMM implementation must be auto, triton, triton_tma, scaled_mm or int_mm, got {name!r}")
    prev, GEMM_IMPL = GEMM_IMPL, name
    return prev


# ------------------------------------------------------------------------------------------------
# GEMM
def gemm_impl(qdtype: torch.dtype, device: torch.device) -> str:
    """Which GEMM runs ``qdtype`` on ``device``: ``"scaled_mm"`` (cuBLAS fp8 row-wise, sm_90+),
    ``"triton"`` or ``"int_mm"`` (cuBLAS int8 + separate epilogue); ``Q8LIB_GEMM`` (read at import)
    or :func:`set_gemm_impl` overrides."""
    forced = GEMM_IMPL
    if device.type != "cuda":
        return "triton"
    if forced == "scaled_mm" and qdtype == FP8:
        return "scaled_mm"
    if forced == "int_mm" and qdtype == INT8:
        return "int_mm"
    if forced == "auto" and qdtype == FP8 and capability(device.index or 0) >= 90:
        return "scaled_mm"
    return "triton"


def _tma_fits(x_q: torch.Tensor, w_q: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the persistent TMA GEMM runs: the default route or chosen (``set_gemm_impl("triton_tma")``; ``"triton"``
    forces the pointer kernel), a Hopper-or-newer
    GPU (the copy engine; Ada keeps the pointer kernel), row-major 8-bit operands with 16-byte aligned
    rows and bases, a 16-bit output, and a Triton that makes tensor descriptors on the device
    (``tl.make_tensor_descriptor``). A float32 output (a float32 model) takes the pointer kernel: at
    :data:`TMA_CONFIG` its [128, 256] float32 epilogue tile, staged in shared memory beside three operand stages,
    needs 278,880 bytes where the H200 has 232,448 (measured: notebook 07's GPU run)."""
    if GEMM_IMPL not in ("auto", "triton_tma") or not (x_q.is_cuda and capability(x_q.device.index or 0) >= 90):
        return False
    if out.element_size() > 2:
        return False
    if x_q.stride(-1) != 1 or w_q.stride(-1) != 1 or x_q.stride(0) % 16 or w_q.stride(0) % 16:
        return False
    # base alignment from the storage offset (torch allocations are 256-byte aligned): fake tensors under
    # torch.compile have no data pointer
    if (x_q.storage_offset() * x_q.element_size()) % 16 or (w_q.storage_offset() * w_q.element_size()) % 16:
        return False
    return hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


@functools.lru_cache(maxsize=1)
def _scratch_allocator() -> None:
    """Give Triton a scratch allocator (once per process): device-side TMA descriptors live in global
    scratch memory that Triton asks the framework for at launch. Torch's caching allocator serves it,
    so it works inside CUDA-graph captures too (inductor installs the same kind of allocator for its launches)."""
    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda")

    triton.set_allocator(alloc)


def launch_gemm(x_q, x_scale, w_q, w_scale, bias, gelu, out, tiles=None):
    """Triton GEMM of ``x_q [M, K]`` by ``w_q [N, K]`` into preallocated ``out [M, N]``.

    With ``set_gemm_impl("triton_tma")`` on sm_90+ the persistent TMA kernel (fixed tiles,
    ``_gemm.TMA_CONFIG``); otherwise the pointer kernel: ``tiles=(BM, BN, BK)`` fixes its tiles (interpreter/tests), ``None`` autotunes (GPU).
    """
    M, K = x_q.shape
    N = w_q.shape[0]
    if M == 0 or N == 0:
        return out
    common = dict(HAS_BIAS=bias is not None, GELU=gelu, IS_INT=x_q.dtype == INT8)
    if tiles is None and _tma_fits(x_q, w_q, out):
        _scratch_allocator()
        bm, bn, bk, warps, stages = TMA_CONFIG
        progs = min(triton.cdiv(M, bm) * triton.cdiv(N, bn), sm_count(x_q.device.index or 0))
        launchable(_q8_gemm_tma_kernel, x_q)[(progs,)](
            x_q, w_q, x_scale, w_scale, bias if bias is not None else w_scale, out, M, N, K,
            x_q.stride(0), w_q.stride(0), out.stride(0),
            BM=bm, BN=bn, BK=bk, GROUP_M=8, NUM_PROGS=progs, WARP_SPEC=TMA_WARP_SPECIALIZE, num_warps=warps,
            num_stages=stages, **common)
        return out
    args = (x_q, x_scale, w_q, w_scale, bias if bias is not None else w_scale, out, M, N, K,
            x_q.stride(0), w_q.stride(0), out.stride(0))
    if tiles is None and x_q.is_cuda:
        grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
        launchable(_q8_gemm_autotuned, x_q)[grid](*args, **common)
    else:
        bm, bn, bk = tiles or (32, 32, 32)
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        launchable(_q8_gemm_kernel, x_q)[grid](*args, BM=bm, BN=bn, BK=bk, GROUP_M=8, EVEN_K=K % bk == 0, **common)
    return out


def _gemm_op_impl(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
               bias: Optional[torch.Tensor], gelu: bool, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(x_q.shape[0], w_q.shape[0], device=x_q.device, dtype=out_dtype)
    return launch_gemm(x_q, x_scale, w_q, w_scale, bias, gelu, out)


def _gemm_op_fake(x_q, x_scale, w_q, w_scale, bias, gelu, out_dtype):
    return x_q.new_empty(x_q.shape[0], w_q.shape[0], dtype=out_dtype)


gemm_op = dual_op("q8_gemm", _gemm_op_impl, _gemm_op_fake)


gemm_ref = ref.q8_matmul_ref  # the math every route computes (float64 accumulation on the CPU)
