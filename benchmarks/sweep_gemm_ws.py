"""Does Triton's warp specialization make the int8 TMA GEMM a cuBLAS-fp8 peer? (a measurement, not a test)

    python benchmarks/sweep_gemm_ws.py --out benchmarks/results/kernels/gemm_ws_h200.json

At the 2B block GEMMs (M = 2 x 3630 tokens; q/k/v/out and cross q/out [2048, 2048], FF up [8192, 2048], FF down
[2048, 8192]) times ``q8lib.kernels.gemm.launch_gemm`` on the persistent TMA route for tile configs x
``TMA_WARP_SPECIALIZE`` off/on, in int8 (and e4m3 for reference), against cuBLAS row-wise ``_scaled_mm`` e4m3 with
fast accumulation, with ``triton.testing.do_bench`` (median, L2 flushed). ``forward_ms`` weighs each GEMM by its
count in a 2B forward (28 blocks x (6 square + up + down)). A config that does not compile is recorded with its error.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import triton

from q8lib.kernels import gemm
from q8lib.quant import quantize_rowwise

SHAPES = {"square": (2048, 2048, 6), "ff_up": (8192, 2048, 1), "ff_down": (2048, 8192, 1)}  # N, K, per block
# BM, BN, BK, warps, stages. Triton 3.9 applies warp specialization to this kernel for sm_90 only with 4 warps (a
# producer warp group and setmaxnreg appear in the PTX); with 8 the code is the same as without.
CONFIGS = [(128, 256, 128, 8, 3), (128, 256, 128, 4, 3), (128, 128, 128, 4, 4), (128, 256, 64, 4, 4),
           (128, 128, 128, 8, 4), (256, 128, 128, 8, 3), (128, 128, 64, 4, 5)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--blocks", type=int, default=28)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    M = 2 * 3630
    gemm.set_gemm_impl("triton_tma")
    res = {"device": torch.cuda.get_device_name(), "capability": "sm_%d%d" % torch.cuda.get_device_capability(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda},
           "M": M, "timing": "triton.testing.do_bench median (CUDA events, L2 flushed)", "shapes": {}, "forward_ms": {}}
    for sname, (N, K, _) in SHAPES.items():
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / math.sqrt(K)
        b = (torch.randn(N, device="cuda") * 0.1).bfloat16()
        ref = torch.nn.functional.linear(x.float(), w.float(), b.float())
        r = res["shapes"][sname] = {"N": N, "K": K, "tflop": 2 * M * N * K / 1e12}

        def rec(key, fn):
            try:
                err = float((fn().float() - ref).norm() / ref.norm())
                ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
                r[key] = {"ms": ms, "tflops": r["tflop"] / ms * 1e3, "rel_err": err}
                print(sname, key, f"{ms:.4f} ms {r[key]['tflops']:.0f} TF/s err {err:.4f}", flush=True)
            except Exception as e:  # noqa: BLE001 - record and go on
                r[key] = {"error": f"{type(e).__name__}: {e}"[:400]}
                print(sname, key, r[key]["error"][:160], flush=True)

        for qd, qn in ((torch.float8_e4m3fn, "fp8"), (torch.int8, "int8")):
            xq, xs = quantize_rowwise(x, qd)
            wq, ws = quantize_rowwise(w, qd)
            if qn == "fp8":
                rec("fp8_cublas_rowwise", lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs.view(-1, 1), scale_b=ws.view(1, -1),
                                                                    bias=b, out_dtype=torch.bfloat16, use_fast_accum=True))
            out = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
            for cfg in CONFIGS if qn == "int8" else CONFIGS[:1]:
                for wsp in (False, True):
                    gemm.TMA_CONFIG, gemm.TMA_WARP_SPECIALIZE = cfg, wsp
                    rec(f"{qn}_tma_{'x'.join(map(str, cfg))}{'_ws' if wsp else ''}",
                        lambda: gemm.launch_gemm(xq, xs, wq, ws, b, False, out))
    keys = set.intersection(*(set(k for k, v in r.items() if isinstance(v, dict) and "ms" in v)
                              for r in res["shapes"].values()))
    for key in sorted(keys):
        res["forward_ms"][key] = args.blocks * sum(res["shapes"][s][key]["ms"] * SHAPES[s][2] for s in SHAPES)
    for key, ms in sorted(res["forward_ms"].items(), key=lambda kv: kv[1]):
        print(f"forward {key:40s} {ms:7.2f} ms")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
