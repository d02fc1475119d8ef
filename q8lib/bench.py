"""``python -m q8lib.bench``: the LTX-Video transformer benchmark (GPU; not a test).

Builds the LTX-Video 2B transformer (:data:`q8lib.tiny.LTX_2B_CONFIG`) with seeded random weights
directly on the GPU and times one transformer forward at the shape of record (81 frames at
480x704 -> an 11x15x22 latent = 3630 tokens, batch 2 = the CFG pair, 128 text tokens) for each
variant, all in the same run:

* ``bf16`` / ``bf16_compile``: diffusers eager / regional ``torch.compile`` (fullgraph on the block)
* ``torchao_fp8_compile``: torchao FP8 row-wise dynamic quantization of the block linears + compile
* ``q8lib`` / ``q8lib_compile``: q8lib with the device's default weight dtype, attention bf16 SDPA
* ``q8lib_int8*`` / ``q8lib_fp8*``: an explicit weight dtype
* ``q8lib_fp8attn*``: q8lib with FP8 attention (``Q8Config(attention="fp8")``)
* ``*_graph``: any of these with the whole forward in one CUDA graph (:mod:`q8lib.cudagraph`)

Per variant (each in isolation: the previous model is freed and peak stats reset): median forward
time over CUDA events after warm-up, a 50-step estimate, peak and weight memory, relative error
and cosine vs the bf16 eager output and vs an fp32 (no TF32) forward, and the linears' FLOPs
over the forward time. ``--micro`` adds per-op timings (GEMM implementations at the block's
shapes, the fused row kernels). JSON goes to ``benchmarks/results/`` (``--out``).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

VARIANTS = {
    # name: (kind, options, compile)
    "bf16": ("bf16", {}, False),
    "bf16_compile": ("bf16", {}, True),
    "torchao_fp8_compile": ("torchao", {}, True),
    "q8lib": ("q8lib", {"attention": "sdpa"}, False),
    "q8lib_compile": ("q8lib", {"attention": "sdpa"}, True),
    "q8lib_fp8": ("q8lib", {"weight_dtype": "fp8_e4m3", "attention": "sdpa"}, False),
    "q8lib_fp8_compile": ("q8lib", {"weight_dtype": "fp8_e4m3", "attention": "sdpa"}, True),
    "q8lib_int8": ("q8lib", {"weight_dtype": "int8", "attention": "sdpa"}, False),
    "q8lib_int8_compile": ("q8lib", {"weight_dtype": "int8", "attention": "sdpa"}, True),
    # no Hadamard rotation (hadamard_block=1): issue #13 asks whether the e4m3 path should rotate at all
    "q8lib_norot": ("q8lib", {"hadamard_block": 1, "attention": "sdpa"}, False),
    "q8lib_norot_compile": ("q8lib", {"hadamard_block": 1, "attention": "sdpa"}, True),
    "q8lib_fp8attn": ("q8lib", {"attention": "fp8"}, False),
    "q8lib_fp8attn_compile": ("q8lib", {"attention": "fp8"}, True),
}
# "<variant>_graph": the same, with the whole forward captured in one CUDA graph (q8lib.cudagraph),
# which removes the host cost of launching ~500 kernels per forward. torch.compile's own
# mode="reduce-overhead" does not work with regional compilation: the 28 blocks share one compiled
# region, and each replay overwrites the output the next block reads.
VARIANTS.update({f"{k}_graph": v for k, v in list(VARIANTS.items())})
DEFAULT_VARIANTS = ("bf16,bf16_compile,bf16_compile_graph,torchao_fp8_compile,q8lib,q8lib_compile,q8lib_compile_graph,"
                    "q8lib_fp8attn_compile_graph,q8lib_int8_compile")


def _versions():
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for pkg in ("triton", "diffusers", "torchao"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _inputs(cfg, batch, frames, height, width, text, device, dtype, seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    tokens = frames * height * width
    x = torch.randn(batch, tokens, cfg["in_channels"], generator=g, device=device, dtype=dtype)
    enc = torch.randn(batch, text, cfg["caption_channels"], generator=g, device=device, dtype=dtype)
    mask = torch.ones(batch, text, device=device, dtype=dtype)
    t = torch.full((batch,), 500.0, device=device)
    return (x, enc, t, mask), dict(num_frames=frames, height=height, width=width)


def _build(cfg, device, dtype, seed=0):
    """The transformer with seeded default-init weights, built on ``device`` (fp32 init, cast to ``dtype``)."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = LTXVideoTransformer3DModel(**cfg)
    return model.to(dtype).eval()


def _compile(model, mode=True):
    kw = {"fullgraph": True} if mode is True else {"fullgraph": True, "mode": mode}
    try:
        model.compile_repeated_blocks(**kw)
    except (AttributeError, ValueError):  # older diffusers: compile each block
        for b in model.transformer_blocks:
            b.compile(**kw)


def _prepare(name, cfg, device):
    from .config import Q8Config
    from .ltx import quantize_

    kind, opts, comp = VARIANTS[name]
    model = _build(cfg, device, torch.bfloat16)
    if kind == "torchao":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
        from torchao.quantization import quantize_ as ao_quantize

        ao_quantize(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                    filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn.startswith("transformer_blocks."))
    elif kind == "q8lib":
        quantize_(model, Q8Config(**opts), progress=False)
    gc.collect()
    torch.cuda.empty_cache()
    return model, comp


def time_ms(fn, iters, warmup=0):
    """Run ``fn`` ``warmup`` times, then time ``iters`` calls: a list of milliseconds (CUDA events on a GPU,
    the wall clock on CPU-only machines). The benchmarks under ``benchmarks/`` use it too."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():  # CPU smoke runs (--config tiny): wall clock
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return times


def _mem(what):
    """CUDA memory stats in MiB (``None`` on CPU smoke runs); ``"reset"`` resets the peak."""
    if not torch.cuda.is_available():
        return None
    if what == "reset":
        return torch.cuda.reset_peak_memory_stats()
    return (torch.cuda.max_memory_allocated() if what == "peak" else torch.cuda.memory_allocated()) / 2**20


def _err(y, ref):
    y, ref = y.float().flatten(), ref.float().flatten()
    return (y - ref).norm().item() / ref.norm().item(), torch.nn.functional.cosine_similarity(y, ref, dim=0).item()


def linear_flops(cfg, batch, tokens, text):
    """FLOPs of the block linears (the 8-bit ones) and of all linears per forward."""
    from diffusers import LTXVideoTransformer3DModel

    from .ltx import inspect_transformer

    with torch.device("meta"):
        m = LTXVideoTransformer3DModel(**cfg)
    rep = inspect_transformer(m, num_tokens=tokens, text_tokens=text, batch=batch)
    block = sum(v for k, v in rep.flops.items() if "linear" in k)
    return block, block + sum(v for k, v in rep.flops.items() if k in ("proj_in", "proj_out", "time_embed", "caption_projection"))


# ------------------------------------------------------------------------------------------------
def micro(cfg, batch, tokens, text, device):
    """Per-op timings at one block's shapes (median of do_bench, L2 flushed between runs)."""
    import triton.testing as tt

    from .kernels import linear as kl
    from .modules import quantize_weight
    from .quant import FP8, INT8

    def bench(fn):
        return tt.do_bench(fn, warmup=25, rep=100, return_mode="median")

    D = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    F_ = 4 * D
    M, Mt = batch * tokens, batch * text
    gemms = {  # name: (M, N, K, count per block)
        "qkv_o_self+q_o_cross": (M, D, D, 6), "kv_cross": (Mt, D, cfg["cross_attention_dim"], 2),
        "ff_up": (M, F_, D, 1), "ff_down": (M, D, F_, 1), "qkv_concat": (M, 3 * D, D, 0)}
    out = {"gemm": {}, "rows": {}}
    torch.manual_seed(0)
    for gname, (m_, n_, k_, cnt) in gemms.items():
        x = torch.randn(m_, k_, device=device, dtype=torch.bfloat16)
        w = torch.randn(n_, k_, device=device, dtype=torch.bfloat16) / math.sqrt(k_)
        b = torch.randn(n_, device=device)
        flop = 2 * m_ * n_ * k_
        res = {"M": m_, "N": n_, "K": k_, "count_per_block": cnt}
        res["bf16_mm"] = bench(lambda: torch.nn.functional.linear(x, w, b.bfloat16()))
        ref = torch.nn.functional.linear(x.float(), w.float(), b)
        for qd, qn in ((FP8, "fp8"), (INT8, "int8")):
            wq, ws = quantize_weight(w, qd)
            xq, xs = kl.quantize_activation(x, qd)
            impls = ["triton"] + (["scaled_mm"] if qd == FP8 else ["int_mm"])
            for impl in impls:
                prev = kl.set_gemm_impl(impl)
                try:
                    y = kl.matmul(xq, xs, wq, ws, b, None, torch.bfloat16)
                    res[f"{qn}_{impl}"] = bench(lambda: kl.matmul(xq, xs, wq, ws, b, None, torch.bfloat16))
                    res[f"{qn}_{impl}_rel_err"] = _err(y, ref)[0]
                except Exception as e:  # noqa: BLE001 - record and go on
                    res[f"{qn}_{impl}"] = f"error: {type(e).__name__}: {e}"[:300]
                finally:
                    kl.set_gemm_impl(prev)
        for k, v in list(res.items()):
            if isinstance(v, float) and not k.endswith("rel_err") and k not in ("M", "N", "K"):
                res[k + "_tflops"] = flop / v / 1e9
        out["gemm"][gname] = res
        del x, w, b, ref
    x = torch.randn(batch, tokens, D, device=device, dtype=torch.bfloat16) * 4
    h = torch.randn(batch, tokens, F_, device=device, dtype=torch.bfloat16)
    sc, sh = torch.randn(batch, 1, D, device=device, dtype=torch.bfloat16) * 0.1, torch.randn(batch, 1, D, device=device, dtype=torch.bfloat16)
    for qd, qn in ((FP8, "fp8"), (INT8, "int8")):
        for hb in (None, 128):
            tag = f"{qn}_{'full' if hb is None else 'b' + str(hb)}"
            rows = {
                "rms_norm_quantize": (lambda: kl.rms_norm_quantize(x, None, 1e-6, sc, sh, qd, hb), x.numel() * 3 + M * 4),
                "quantize_activation": (lambda: kl.quantize_activation(x, qd, hb), x.numel() * 3 + M * 4),
                "gelu_quantize_ffn": (lambda: kl.gelu_quantize(h, qd, hb), h.numel() * 3 + M * 4),
            }
            for rname, (fn, nbytes) in rows.items():
                ms = bench(fn)
                out["rows"][f"{rname}_{tag}"] = {"ms": ms, "GBps": nbytes / ms / 1e6}
    out["rows"]["bf16_copy_same_bytes_as_quantize"] = {"ms": bench(lambda: x.clone())}
    from .kernels import row_quant as _rowquant

    default_te = _rowquant.TILE_ELEMS
    try:  # tile size sweep (elements per program step = rows x K)
        for te in (2048, 4096, 8192, 16384):
            _rowquant.TILE_ELEMS = te
            out["rows"][f"sweep_tile{te}_rms_norm_quantize_fp8"] = {"ms": bench(lambda: kl.rms_norm_quantize(x, None, 1e-6, sc, sh, FP8, None))}
            out["rows"][f"sweep_tile{te}_gelu_quantize_fp8"] = {"ms": bench(lambda: kl.gelu_quantize(h, FP8, None))}
    finally:
        _rowquant.TILE_ELEMS = default_te
    return out


# ------------------------------------------------------------------------------------------------
# Kernel families for the profile split, first match wins (inductor names its kernels after the ops it
# fuses, e.g. "triton_per_fused__scaled_dot_product_cudnn_attention_...", so it is matched before "attention").
KERNEL_FAMILIES = [
    ("glue", ("_row_quant_kernel", "_qk_quant_kernel", "_qk_norm_rope_kernel", "_v_amax_kernel", "_v_quant_kernel")),
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
    import collections

    fwd()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(iters):
            fwd()
        torch.cuda.synchronize()
    ms, n = collections.defaultdict(float), collections.defaultdict(int)
    top = collections.defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            fam = kernel_family(ev.name)
            ms[fam] += ev.device_time_total / 1e3 / iters
            n[fam] += 1
            top[ev.name] += ev.device_time_total / 1e3 / iters
    fwd_ms = statistics.median(time_ms(fwd, 5, 1))
    out = {f"{f}_ms": ms.get(f, 0.0) for f in ("gemm", "attention", "glue")}
    out.update({f"{f}_launches": n.get(f, 0) / iters for f in ("gemm", "attention", "glue")})
    out["kernel_ms"] = sum(ms.values())
    out["fwd_ms"] = fwd_ms
    out["host_gap_ms"] = fwd_ms - out["kernel_ms"]
    out["top_kernels"] = [{"name": k[:120], "ms": v, "family": kernel_family(k)}
                          for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m q8lib.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma list from {sorted(VARIANTS)}")
    ap.add_argument("--config", default="2b", choices=["2b", "13b", "tiny"], help="tiny: CPU smoke run of the script")
    ap.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=11)
    ap.add_argument("--height", type=int, default=15)
    ap.add_argument("--width", type=int, default=22)
    ap.add_argument("--text", type=int, default=128)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--micro", action="store_true", help="also time the GEMMs and row kernels alone")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 reference forward")
    ap.add_argument("--profile", action="store_true",
                    help="also record each variant's profile split (GEMM / attention / glue / host gaps)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/transformer_<gpu>.json)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and args.config != "tiny":
        print("q8lib.bench needs a CUDA GPU (or --config tiny for a CPU smoke run).", file=sys.stderr)
        return 2
    from .tiny import LTX_2B_CONFIG, LTX_13B_CONFIG, TINY_TRANSFORMER_CONFIG

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {sorted(VARIANTS)}")
    cfg = dict({"2b": LTX_2B_CONFIG, "13b": LTX_13B_CONFIG, "tiny": TINY_TRANSFORMER_CONFIG}[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    tokens = args.frames * args.height * args.width
    out_path = Path(args.out or f"benchmarks/results/transformer_{gpu.split()[1].lower() if len(gpu.split()) > 1 else 'gpu'}.json")
    block_flops, all_flops = linear_flops(cfg, args.batch, tokens, args.text)
    report = {
        "device": gpu, "capability": "sm_%d%d" % torch.cuda.get_device_capability() if device.type == "cuda" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "shape": {"model": f"LTX-Video {args.config.upper()}", "num_layers": cfg["num_layers"], "batch": args.batch,
                  "latent": [args.frames, args.height, args.width], "tokens": tokens, "text_tokens": args.text},
        "linear_tflop_per_forward": {"block_linears_8bit": block_flops / 1e12, "all_linears": all_flops / 1e12},
        "timing": f"median of {args.iters} forwards (CUDA events) after {args.warmup} warm-up forwards",
        "results": {},
    }

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")

    inputs, kw = _inputs(cfg, args.batch, args.frames, args.height, args.width, args.text, device, torch.bfloat16)
    with torch.inference_mode():
        refs = {}
        if not args.no_fp32:
            prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            m32 = _build(cfg, device, torch.float32)
            refs["fp32"] = m32(*(t.float() for t in inputs), **kw).sample.float()
            del m32
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        gc.collect()
        torch.cuda.empty_cache()
        mb = _build(cfg, device, torch.bfloat16)
        refs["bf16"] = mb(*inputs, **kw).sample.float()
        del mb
        gc.collect()
        torch.cuda.empty_cache()
        if args.micro:
            t0 = time.time()
            try:
                report["micro"] = micro(cfg, args.batch, tokens, args.text, device)
            except Exception as e:  # noqa: BLE001
                report["micro"] = {"error": traceback.format_exc()[-2000:]}
                print("micro failed:", e)
            print(f"micro done in {time.time() - t0:.0f} s", flush=True)
            save()
        model = y = fwd = None
        for name in names:
            model = y = fwd = None  # a failed variant must not keep its model (or its graph) alive into the next one
            if name.endswith("_graph") and device.type != "cuda":
                report["results"][name] = {"skipped": "CUDA graphs need a GPU"}
                print(f"{name:24s} skipped: CUDA graphs need a GPU", flush=True)
                continue
            gc.collect()
            torch.cuda.empty_cache()
            _mem("reset")
            t0 = time.time()
            res = {}
            try:
                model, comp = _prepare(name, cfg, device)
                res["weights_mb"] = _mem("now")
                if VARIANTS[name][0] == "q8lib":
                    res["fused_blocks"] = sum("_q8_fused" in b.__dict__ for b in model.transformer_blocks)
                    res["weight_dtype"] = model._q8_config.weight_dtype
                y = model(*inputs, **kw).sample  # eager warm-up (also autotunes the Triton GEMMs)
                if comp:
                    _compile(model, comp)
                    tc = time.time()
                    y = model(*inputs, **kw).sample.clone()  # CUDA-graph outputs are overwritten by replays
                    torch.cuda.synchronize() if device.type == "cuda" else None
                    res["compile_s"] = time.time() - tc

                fwd = lambda: model(*inputs, **kw)  # noqa: E731
                if name.endswith("_graph"):
                    from .cudagraph import CUDAGraphForward

                    tc = time.time()
                    fwd = functools.partial(CUDAGraphForward(model), *inputs, **kw)
                    y = fwd().sample
                    res["capture_s"] = time.time() - tc

                _mem("reset")
                times = time_ms(fwd, args.iters, args.warmup)
                res["fwd_ms"] = statistics.median(times)
                res["fwd_ms_min"], res["fwd_ms_max"] = min(times), max(times)
                res["peak_mb"] = _mem("peak")
                res["est_50_steps_s"] = 50 * res["fwd_ms"] / 1e3
                res["linear_tflops_effective"] = all_flops / res["fwd_ms"] / 1e9
                for rname, r in refs.items():
                    res[f"rel_err_vs_{rname}"], res[f"cos_vs_{rname}"] = _err(y, r)
                if args.profile and device.type == "cuda":
                    res["profile"] = profile_split(fwd)
                del model, y, fwd
            except Exception as e:  # noqa: BLE001 - one broken variant must not lose the others
                res["error"] = traceback.format_exc()[-3000:]
                print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
            res["wall_s"] = time.time() - t0
            report["results"][name] = res
            save()
            print(f"{name:24s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in res.items() if k != "error"), flush=True)
            torch._dynamo.reset()
    base = report["results"].get("bf16_compile", {}).get("fwd_ms")
    if base:
        for r in report["results"].values():
            if "fwd_ms" in r:
                r["x_vs_bf16_compile"] = r["fwd_ms"] / base
    bf = report["results"].get("bf16", {}).get("peak_mb")
    if bf:
        for r in report["results"].values():
            if r.get("peak_mb"):
                r["peak_x_vs_bf16"] = r["peak_mb"] / bf
    save()
    print(f"\nwrote {out_path}")
    print(f"{'variant':24s}{'fwd_ms':>9s}{'x bf16c':>9s}{'peak_mb':>10s}{'rel_err_bf16':>14s}{'cos_bf16':>10s}")
    for name, r in report["results"].items():
        if "fwd_ms" in r:
            print(f"{name:24s}{r['fwd_ms']:9.2f}{r.get('x_vs_bf16_compile', float('nan')):9.3f}{r['peak_mb'] or float('nan'):10.0f}"
                  f"{r.get('rel_err_vs_bf16', float('nan')):14.4f}{r.get('cos_vs_bf16', float('nan')):10.5f}")
        else:
            print(f"{name:24s} {'skipped' if 'skipped' in r else 'ERROR'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
