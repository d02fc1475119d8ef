"""Can a Triton GEMM with the Q8 epilogues match cuBLAS at LTX's block shapes? (a measurement, not a test)

    python benchmarks/bench_gemm.py --out gemm.json [--quick]

For each block GEMM of the 2B and 13B transformers at the shape of record (M = 2 x 3630 tokens),
in int8 and e4m3, times with CUDA events (``triton.testing.do_bench``: L2 flushed, median):

* the routes q8lib has today: cuBLAS row-wise ``torch._scaled_mm`` (e4m3, fast accumulation),
  ``torch._int_mm`` (int8) and the Triton GEMM ``q8lib::q8_gemm`` (autotuned);
* cuBLAS block-scaled ``_scaled_mm`` with 1x128 activation scales (the format that lets a producer
  quantize tile by tile), where this torch/cuBLAS has it;
* a persistent Triton GEMM reading both operands through TMA descriptors, over a sweep of tiles, with
  the epilogues the fused block would want: scales + bias (``plain``), + tanh-GELU (``gelu``), + GELU and
  quantization of the output in 1x128 blocks for the next GEMM (``gelu_q128``), gated residual
  (``residual``), and the consumer side of 1x128 activation scales (``a_block``);
* the row passes those epilogues would replace (GELU + quantize of the FFN hidden, residual + quantize).

Writes every figure, the device and versions to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from pathlib import Path

import torch
import triton
import triton.language as tl


from q8lib.kernels.gemm import channel_epilogue

INT8, FP8 = torch.int8, torch.float8_e4m3fn
QMAX = {INT8: 127.0, FP8: 448.0}


@triton.jit
def _tile_ids(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    width = GROUP_M * num_pid_n
    group = tile // width
    first_m = group * GROUP_M
    gsize = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % width) % gsize, (tile % width) // gsize


@triton.jit
def _gemm_tma_kernel(x_desc, w_desc, XS, WS, BIAS, RES, GATE, OUT, QOUT, QSCALE, M, N, K, sgate,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                     NUM_PROGS: tl.constexpr, IS_INT: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
                     RESID: tl.constexpr, QUANT_OUT: tl.constexpr, QMAX: tl.constexpr, A_BLOCK: tl.constexpr):
    """Persistent: program p takes tiles p, p + NUM_PROGS, ...; operands through TMA descriptors."""
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGS):
        pid_m, pid_n = _tile_ids(tile, num_pid_m, num_pid_n, GROUP_M)
        om, on = pid_m * BM, pid_n * BN
        rm = om + tl.arange(0, BM)
        rn = on + tl.arange(0, BN)
        if A_BLOCK:  # activation scales per (token, 128-wide K block): scale each K step's partial product
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for ki in range(0, k_tiles):
                a = x_desc.load([om, ki * BK])
                b = w_desc.load([on, ki * BK])
                part = tl.dot(a, b.T, out_dtype=tl.int32 if IS_INT else tl.float32)
                s = tl.load(XS + rm * k_tiles + ki, mask=rm < M, other=0.0)
                acc += part.to(tl.float32) * s[:, None]
            y = acc
        else:
            acc = tl.zeros((BM, BN), dtype=tl.int32 if IS_INT else tl.float32)
            for ki in range(0, k_tiles):
                a = x_desc.load([om, ki * BK])
                b = w_desc.load([on, ki * BK])
                acc = tl.dot(a, b.T, acc, out_dtype=tl.int32 if IS_INT else tl.float32)
            xs = tl.load(XS + rm, mask=rm < M, other=0.0)
            y = acc.to(tl.float32) * xs[:, None]
        y = channel_epilogue(y, WS, BIAS, rn, N, HAS_BIAS, GELU)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        offs = rm[:, None].to(tl.int64) * N + rn[None, :]
        if RESID:  # h = residual + gate * y (gate per sample and channel: [B, N] rows of stride sgate)
            g = tl.load(GATE + (rm // sgate)[:, None] * N + rn[None, :], mask=mask, other=0.0).to(tl.float32)
            y = tl.load(RES + offs, mask=mask, other=0.0).to(tl.float32) + g * y
        if QUANT_OUT:  # codes + one scale per (row, 128 columns), for a consumer with A_BLOCK
            y3 = tl.reshape(y, (BM, BN // 128, 128))
            amax = tl.max(tl.abs(y3), axis=2)
            sc = tl.maximum(amax, 1e-30) / QMAX
            q = y3 / sc[:, :, None]
            q = tl.minimum(tl.maximum(q, -QMAX), QMAX)
            if IS_INT:
                q = (q + 12582912.0) - 12582912.0  # round half to even, as torch.round
            tl.store(QOUT + offs, tl.reshape(q, (BM, BN)).to(QOUT.dtype.element_ty), mask=mask)
            cb = pid_n * (BN // 128) + tl.arange(0, BN // 128)
            tl.store(QSCALE + rm[:, None] * tl.cdiv(N, 128) + cb[None, :], sc,
                     mask=(rm[:, None] < M) & (cb[None, :] < tl.cdiv(N, 128)))
        else:
            tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=mask)


def _alloc(size: int, align: int, stream):  # scratch for device-side descriptors (unused with host descriptors)
    return torch.empty(size, dtype=torch.int8, device="cuda")


def tma_gemm(xq, xs, wq, ws, bias, cfg, gelu=False, resid=None, gate=None, quant_out=False, a_block=False):
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, K = xq.shape
    N = wq.shape[0]
    bm, bn, bk, warps, stages = cfg
    xd = TensorDescriptor.from_tensor(xq, [bm, bk])
    wd = TensorDescriptor.from_tensor(wq, [bn, bk])
    out = torch.empty(M, N, device=xq.device, dtype=torch.bfloat16) if not quant_out else None
    qout = torch.empty(M, N, device=xq.device, dtype=xq.dtype) if quant_out else None
    qscale = torch.empty(M, triton.cdiv(N, 128), device=xq.device, dtype=torch.float32) if quant_out else None
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    progs = min(tiles, torch.cuda.get_device_properties(xq.device).multi_processor_count)
    dummy = ws
    _gemm_tma_kernel[(progs,)](
        xd, wd, xs, ws, bias if bias is not None else dummy, resid if resid is not None else dummy,
        gate if gate is not None else dummy, out if out is not None else qout,
        qout if qout is not None else dummy, qscale if qscale is not None else dummy, M, N, K,
        M // gate.shape[0] if gate is not None else 1,
        BM=bm, BN=bn, BK=bk, GROUP_M=8, NUM_PROGS=progs, IS_INT=xq.dtype == INT8, HAS_BIAS=bias is not None,
        GELU=gelu, RESID=resid is not None, QUANT_OUT=quant_out, QMAX=QMAX[xq.dtype], A_BLOCK=a_block,
        num_warps=warps, num_stages=stages)
    return (qout, qscale) if quant_out else out


def quant_rows(x, qd, block=None):
    """Per-row (``block=None``) or per-(row, ``block`` columns) scales -> codes, scales fp32."""
    xf = x.float()
    if block:
        xf = xf.unflatten(-1, (-1, block))
    s = xf.abs().amax(-1, keepdim=True).clamp_min(1e-30) / QMAX[qd]
    q = xf / s
    q = q.round().clamp(-127, 127).to(qd) if qd == INT8 else q.to(qd)
    return q.flatten(-2) if block else q, s.squeeze(-1)


def bench(fn, reps=40):
    return triton.testing.do_bench(fn, warmup=10, rep=reps, return_mode="median")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="2B shapes and two tile configs only")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device("cuda")
    triton.set_allocator(_alloc) if hasattr(triton, "set_allocator") else None
    M = 2 * 3630
    shapes = {"2b_qkvo": (2048, 2048), "2b_ff_up": (8192, 2048), "2b_ff_down": (2048, 8192)}
    if not args.quick:
        shapes.update({"13b_qkvo": (4096, 4096), "13b_ff_up": (16384, 4096), "13b_ff_down": (4096, 16384)})
    # first run (H200, 2B FF down-projection): 128x256x128/8w/3s, 256x128x128/8w/3s, 64x256x128/4w/4s and
    # 128x128x128/8w/4s within 1% of each other; 128x256x64/8w/4s and 4 warps at 128x128 5-12% slower
    configs = [(128, 256, 128, 8, 3), (64, 256, 128, 4, 4), (128, 128, 128, 8, 4)]
    if args.quick:
        configs = configs[:2]
    res = {"device": torch.cuda.get_device_name(), "capability": "sm_%d%d" % torch.cuda.get_device_capability(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda},
           "M": M, "timing": "triton.testing.do_bench median (CUDA events, L2 flushed)", "shapes": {}}
    from q8lib.kernels import linear as kl

    for sname, (N, K) in shapes.items():
        flop = 2 * M * N * K
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) / math.sqrt(K)
        b = torch.randn(N, device=dev) * 0.1
        ref = torch.nn.functional.linear(x.float(), w.float(), b)
        r = {"N": N, "K": K, "tflop": flop / 1e12}
        r["bf16_linear_ms"] = bench(lambda: torch.nn.functional.linear(x, w, b.bfloat16()))

        def rec(key, fn, check=None):
            try:
                y = fn()
                ms = bench(fn)
                r[key] = {"ms": ms, "tflops": flop / ms / 1e9}
                if check is not None:
                    r[key]["rel_err"] = float((check(y) - ref).norm() / ref.norm())
            except Exception as e:  # noqa: BLE001 - record and go on
                r[key] = {"error": f"{type(e).__name__}: {e}"[:400]}
            v = r[key]
            print(sname, key, f"{v['ms']:.4f} ms {v['tflops']:.0f} TF/s err {v.get('rel_err', float('nan')):.4f}"
                  if "ms" in v else v["error"][:120], flush=True)

        for qd, qn in ((FP8, "fp8"), (INT8, "int8")):
            xq, xs = quant_rows(x, qd)
            wq, wsc = quant_rows(w, qd)
            bb = b.bfloat16()
            if qd == FP8:
                rec("fp8_cublas_rowwise", lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs.view(-1, 1),
                                                                    scale_b=wsc.view(1, -1), bias=bb,
                                                                    out_dtype=torch.bfloat16, use_fast_accum=True),
                    lambda y: y.float())
                xq1, xs1 = quant_rows(x, qd, 128)
                wb = wsc[:, None].expand(N, K // 128).contiguous()  # per-channel weight scale as 1x128 blocks
                for lay, (sa, sb) in {"a_colmajor_b_t": (xs1.t().contiguous().t(), wb.t()),
                                      "a_rowmajor_b_t": (xs1, wb.t()),
                                      "a_colmajor_b": (xs1.t().contiguous().t(), wb)}.items():
                    rec(f"fp8_cublas_block1x128_{lay}",
                        lambda sa=sa, sb=sb: torch._scaled_mm(xq1, wq.t(), scale_a=sa, scale_b=sb,
                                                              out_dtype=torch.bfloat16),
                        lambda y: y.float() + b)
            else:
                rec("int8_int_mm", lambda: torch._int_mm(xq, wq.t()),
                    lambda y: y.float() * xs[:, None] * wsc[None, :] + b)
                rec("int8_int_mm_epilogue", lambda: (torch._int_mm(xq, wq.t()).float() * xs[:, None] * wsc
                                                      + b).to(torch.bfloat16), lambda y: y.float())
            rec(f"{qn}_q8lib_triton_autotuned", lambda: torch.ops.q8lib.q8_gemm(xq, xs, wq, wsc, b, False,
                                                                                  torch.bfloat16),
                lambda y: y.float())
            best = None
            for cfg in configs:
                key = f"{qn}_tma_" + "x".join(map(str, cfg))
                rec(key, lambda cfg=cfg: tma_gemm(xq, xs, wq, wsc, b, cfg), lambda y: y.float())
                ms = r[key].get("ms")
                if ms is not None and (best is None or ms < best[1]):
                    best = (cfg, ms)
            if best is None:
                continue
            cfg = best[0]
            r[f"{qn}_tma_best"] = list(cfg)
            # (Triton's automatic warp specialization, tl.range(..., warp_specialize=True), failed to compile
            # on triton 3.6: "PassManager::run failed" in ConvertTritonGPUToLLVM; not timed)
            gref = torch.nn.functional.gelu(ref, approximate="tanh")
            rec(f"{qn}_tma_best_gelu", lambda: tma_gemm(xq, xs, wq, wsc, b, cfg, gelu=True),
                lambda y: y.float() + ref - gref)
            if N % 128 == 0 and cfg[1] % 128 == 0:
                rec(f"{qn}_tma_best_gelu_q128", lambda: tma_gemm(xq, xs, wq, wsc, b, cfg, gelu=True, quant_out=True),
                    lambda y: (y[0].float().unflatten(-1, (-1, 128)) * y[1][..., None]).flatten(-2) + ref - gref)
            res_t = torch.randn(M, N, device=dev, dtype=torch.bfloat16)
            gate = torch.randn(2, N, device=dev, dtype=torch.bfloat16)
            gfull = gate.repeat_interleave(M // 2, 0).float()
            rec(f"{qn}_tma_best_residual", lambda: tma_gemm(xq, xs, wq, wsc, b, cfg, resid=res_t, gate=gate),
                lambda y: (y.float() - res_t.float()) / gfull)
            if K % 128 == 0 and cfg[2] == 128:
                xq1, xs1 = quant_rows(x, qd, 128)
                rec(f"{qn}_tma_best_a_block", lambda: tma_gemm(xq1, xs1.contiguous(), wq, wsc, b, cfg, a_block=True),
                    lambda y: y.float())
        # the row passes the epilogues would replace (bf16 in; q8lib's default full-K rotation)
        h = torch.randn(M, N, device=dev, dtype=torch.bfloat16)
        for qd, qn in ((FP8, "fp8"), (INT8, "int8")):
            rec(f"{qn}_row_gelu_quantize_out", lambda qd=qd: kl.gelu_quantize(h, qd))
            rec(f"{qn}_row_quantize_out", lambda qd=qd: kl.quantize_activation(h, qd))
            rec(f"{qn}_row_add_quantize_out", lambda qd=qd: kl.add_quantize(h, h, None, qd))
        for k in [k for k, v in r.items() if isinstance(v, dict) and "ms" in v and "_row_" in k]:
            r[k]["gb_per_s_in"] = h.numel() * 2 / r[k]["ms"] / 1e6
        res["shapes"][sname] = r
        del x, w, h
        torch.cuda.empty_cache()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))  # after every shape: a cut-off run keeps what it has


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        raise
