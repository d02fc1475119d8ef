"""Where a forward's GPU time goes: kernel families (GEMM / attention / glue) from ``torch.profiler``,
and the host gap (the GPU waiting for the host). Shared by ``python -m q8lib.bench --profile`` and
``benchmarks/profile_forward.py``.
"""
from __future__ import annotations

import collections
import statistics

import torch

from ..timing import time_ms

__all__ = ["KERNEL_FAMILIES", "classify", "kernel_family", "profile_split"]


# Kernel families for the profile split, first match wins (inductor names its kernels after the ops it
# fuses, e.g. "triton_per_fused__scaled_dot_product_cudnn_attention_...", so it is matched before "attention").
KERNEL_FAMILIES = [
    ("glue", ("_row_quant_kernel", "_qk_quant_kernel", "_qk_norm_rope_kernel", "_v_amax_kernel", "_v_quant_kernel",
              "_kv_stats_kernel", "_kv_codes_kernel")),
    ("attention", ("_attn_fwd",)),
    ("glue", ("triton_poi", "triton_red", "triton_per")),
    ("attention", ("flash", "fmha", "cudnn", "sdpa", "attention")),
    ("gemm", ("_q8_gemm", "_gemm_", "gemm", "nvjet", "cutlass", "xmma", "scaled_mm", "Kernel2", "int_mm")),
]


def classify(name: str, families, default: str) -> str:
    """The first family of ``families`` (``[(family, name substrings)]``) matching kernel ``name``, else ``default``."""
    low = name.lower()
    return next((fam for fam, keys in families if any(k.lower() in low for k in keys)), default)


def kernel_family(name: str) -> str:
    """``"gemm"``, ``"attention"`` or ``"glue"`` (everything else: quantizers, norms, copies, memsets)."""
    return classify(name, KERNEL_FAMILIES, "glue")


def profile_split(fwd, iters: int = 3) -> dict:
    """Where one forward's time goes, from ``torch.profiler`` over ``iters`` forwards: kernel time per
    family (GEMM / attention / glue) and launches per forward; ``host_gap_ms`` is the CUDA-event time of
    an unprofiled forward minus all kernel time (the GPU idle, waiting for the host)."""
    fwd()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            fwd()
        torch.cuda.synchronize()
    ms, n = collections.defaultdict(float), collections.defaultdict(int)
    top, calls = collections.defaultdict(float), collections.defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            fam = kernel_family(ev.name)
            ms[fam] += ev.device_time_total / 1e3 / iters
            n[fam] += 1
            top[ev.name] += ev.device_time_total / 1e3 / iters
            calls[ev.name] += 1
    fwd_ms = statistics.median(time_ms(fwd, 5, 1))
    out = {f"{f}_ms": ms.get(f, 0.0) for f in ("gemm", "attention", "glue")}
    out.update({f"{f}_launches": n.get(f, 0) / iters for f in ("gemm", "attention", "glue")})
    out["kernel_ms"] = sum(ms.values())
    out["fwd_ms"] = fwd_ms
    out["host_gap_ms"] = fwd_ms - out["kernel_ms"]
    # the 30 costliest kernels with their launches per forward: which glue is many small launches
    # (latency-bound) and which is few large ones (bandwidth-bound) decides what fusing it can save
    out["top_kernels"] = [{"name": k[:120], "ms": v, "family": kernel_family(k), "launches": calls[k] / iters}
                          for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:30]]
    return out
