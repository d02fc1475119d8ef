"""Would cuDNN's FP8 attention be accurate behind q8lib's producers? An emulation on the CPU (issue #14).

cuDNN's FP8 SDPA (``nvidia-cudnn-frontend``) takes one descale factor per tensor for q, k and v (and one for P).
Measured on the H200 (issue #14's text): 0.061 relative error vs fp32 on Gaussian q/k/v, 0.34-0.37 with outlier
channels in q and k, where q8lib's per-token kernel had 0.092 and bf16 0.023-0.027. This script emulates that
arithmetic with the engine of ``benchmarks/attention_accuracy.py`` (e4m3 rounding by ``torch.float8_e4m3fn`` casts,
float64 truth, block-wise online softmax, P stored as e4m3(P * 448), fp32 accumulation, bf16 output) and asks what
q8lib's producers would change in front of it: the Hadamard rotation of q and k along the head dim and K smoothing
(the mean key subtracted: exact under softmax), both applied before the per-tensor quantization.

If the plain per-tensor emulation lands near the measured cuDNN errors, the rotated/smoothed rows say how accurate
"cuDNN's engine behind q8lib's producers" would be, before any GPU time goes into it. Inputs: Gaussian, and the
study's two outlier variants (``attention_accuracy.outlier_inputs``: "disjoint" and "shared" channels, a common key
offset); head dims 64 and 128.

Run: ``PYTHONPATH=.:benchmarks python benchmarks/cudnn_fp8_emulation.py [--quick]`` (writes
``benchmarks/results/accuracy/cudnn_fp8_emulation_cpu.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_accuracy as aa  # noqa: E402

TENSOR = dict(q_rows="tensor", k_rows="tensor", v_scale="global")
SCHEMES = {
    "bf16_flash": ("bf16 flash attention model (FA/cuDNN bf16)", None),
    "q8lib_today_hopper": ("q8lib's FP8 kernel: Hadamard q/k, e4m3 per token, V per channel, FP8 accumulator",
                           aa.Scheme(acc="fp22", qk_acc="fp22")),
    "cudnn_tensor": ("cuDNN FP8 model: e4m3 q/k/v with one scale per tensor, no rotation",
                     aa.Scheme(rotate=False, **TENSOR)),
    "cudnn_tensor_rot": ("... behind a Hadamard rotation of q and k", aa.Scheme(rotate=True, **TENSOR)),
    "cudnn_tensor_ksmooth": ("... behind K smoothing", aa.Scheme(rotate=False, k_smooth=True, **TENSOR)),
    "cudnn_tensor_rot_ksmooth": ("... behind rotation and K smoothing", aa.Scheme(rotate=True, k_smooth=True, **TENSOR)),
}


def run(shapes, seed):
    """Every scheme on every input, all query rows (a per-tensor scale is the amax of the whole tensor)."""
    rows = {}
    for B, H, S, D in shapes:
        g = torch.Generator().manual_seed(seed)
        gauss = tuple(torch.randn(B, H, S, D, generator=g, dtype=aa.F64) for _ in range(3))
        inputs = {"gaussian": gauss, "disjoint": aa.outlier_inputs(B, H, S, D, seed, "disjoint"),
                  "shared": aa.outlier_inputs(B, H, S, D, seed, "shared")}
        for name, (q, k, v) in inputs.items():
            ref = aa.exact_attention(q, k, v)
            res = {s: aa.metrics(aa.bf16_flash(q, k, v) if sch is None else aa.simulate(q, k, v, sch), ref)
                   for s, (_, sch) in SCHEMES.items()}
            rows[f"{name}/S{S}/D{D}"] = res
            print(f"{name:9s} S={S:5d} D={D:3d} " + "  ".join(f"{s}={r['rel_err']:.4f}" for s, r in res.items()),
                  flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1024 tokens only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy" / "cudnn_fp8_emulation_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    shapes = [(1, 2, 1024, 64), (1, 2, 1024, 128)] if args.quick else [(1, 2, 3630, 64), (1, 2, 3630, 128)]
    rows = run(shapes, args.seed)
    result = dict(what=" ".join(__doc__.split("\n\n")[0].split()), date=datetime.now(timezone.utc).isoformat(
        timespec="seconds"), argv=sys.argv[1:], versions=aa.versions(), seed=args.seed,
        schemes={k: v[0] for k, v in SCHEMES.items()}, shapes=[list(s) for s in shapes], query_rows="all",
        measured_on_h200_issue14=dict(cudnn_fp8_gaussian=0.061, cudnn_fp8_outliers="0.34-0.37", bf16="0.023-0.027",
                                      q8lib_kernel_outliers=0.092),
        results=rows, seconds=round(time.perf_counter() - start, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
