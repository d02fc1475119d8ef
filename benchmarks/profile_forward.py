"""Where the GPU time of one LTX-Video transformer forward goes, per kernel family (not a test).

    python benchmarks/profile_forward.py --variants bf16_compile,q8lib_compile --layers 28 --out prof.json

Builds each variant like ``python -m q8lib.bench`` (same shapes, same seeded weights), warms it up,
then records ``--iters`` forwards under ``torch.profiler``. Reports per forward: the CUDA-event
time, the summed kernel time (its gap to the event time is launch/host overhead the GPU waited
for), and the kernel time grouped into families (GEMM, row-quant, attention, inductor-fused, ...),
plus the top kernels by time. JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import statistics
from pathlib import Path

import torch


from q8lib import bench
from q8lib.cudagraph import CUDAGraphForward
from q8lib.models import LTX_2B_CONFIG
from q8lib.versions import package_versions

FAMILIES = [  # (family, substrings of the kernel name), first match wins
    ("row_quant", ("_row_quant_kernel",)),
    ("attention_producers", ("_qk_quant_kernel", "_v_amax_kernel", "_v_quant_kernel")),
    ("fp8_attention", ("_attn_fwd", "_fp8_attn", "attn_kernel", "_attn_")),
    ("inductor_fused", ("triton_poi", "triton_red", "triton_per")),  # before "sdpa": inductor names kernels after the ops they fuse
    ("sdpa", ("flash", "fmha", "cudnn", "sdpa", "attention")),
    ("gemm_fp8", ("e4m3", "f8f8", "fp8", "scaled_mm", "_q8_gemm")),
    ("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "sm80_xmma", "ampere", "Kernel2")),
    ("copy_elementwise", ("elementwise", "copy", "fill", "reduce", "cat", "index")),
]


def family(name: str) -> str:
    return bench.classify(name, FAMILIES, "other")


def profile_variant(name, cfg, inputs, iters):
    model, comp = bench.prepare_variant(name, cfg, torch.device("cuda"))
    with torch.inference_mode():
        model(**inputs)
        if comp:
            bench.compile_blocks(model, comp)
            model(**inputs)
        fwd = lambda: model(**inputs)  # noqa: E731
        if name.endswith("_graph"):
            runner = CUDAGraphForward(model)
            fwd = lambda: runner(**inputs)  # noqa: E731
        times = bench.time_ms(fwd, iters, warmup=2)
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(iters):
                fwd()
            torch.cuda.synchronize()
    kernels = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[ev.name]
            k[0] += ev.device_time_total / 1e3 / iters  # us -> ms, per forward
            k[1] += 1
    cpu = sorted(((e.key, e.self_cpu_time_total / 1e3 / iters, e.count / iters) for e in prof.key_averages()),
                 key=lambda r: -r[1])[:25]
    fams = collections.defaultdict(float)
    for kname, (ms, _) in kernels.items():
        fams[family(kname)] += ms
    total = sum(fams.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    del model
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return {
        "fwd_ms_median": statistics.median(times),
        "kernel_ms_per_forward": total,
        "gap_ms_per_forward": statistics.median(times) - total,
        "families_ms": dict(sorted(fams.items(), key=lambda kv: -kv[1])),
        "top_cpu_self": [{"name": k[:120], "ms_per_forward": ms, "calls_per_forward": n} for k, ms, n in cpu],
        "top_kernels": [{"name": k[:160], "ms_per_forward": v[0], "calls_per_forward": v[1] / iters} for k, v in top],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="bf16_compile,q8lib_compile,q8lib_fp8attn_compile")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/kernels/profile_h100.json")
    args = ap.parse_args(argv)
    cfg = dict(LTX_2B_CONFIG, num_layers=args.layers)
    dev = torch.device("cuda")
    inputs = bench.bench_inputs(cfg, 2, 11, 15, 22, 128, dev)
    report = {"device": torch.cuda.get_device_name(), "versions": package_versions("triton", "diffusers", "torchao"), "layers": args.layers,
              "shape": {"batch": 2, "latent": [11, 15, 22], "text_tokens": 128}, "results": {}}
    for name in args.variants.split(","):
        try:
            report["results"][name] = r = profile_variant(name, cfg, inputs, args.iters)
            print(f"{name}: fwd {r['fwd_ms_median']:.2f} ms, kernels {r['kernel_ms_per_forward']:.2f} ms, "
                  f"families {json.dumps({k: round(v, 2) for k, v in r['families_ms'].items()})}", flush=True)
            for t in r["top_kernels"][:12]:
                print(f"   {t['ms_per_forward']:7.3f} ms  x{t['calls_per_forward']:.0f}  {t['name'][:110]}")
            print("   host (self CPU time):")
            for t in r["top_cpu_self"][:12]:
                print(f"   {t['ms_per_forward']:7.3f} ms  x{t['calls_per_forward']:.0f}  {t['name'][:110]}")
        except Exception as e:  # noqa: BLE001 - keep the other variants
            import traceback

            report["results"][name] = {"error": traceback.format_exc()[-2000:]}
            print(f"{name} failed: {e}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
