"""``python -m q8lib.bench``: the LTX-Video transformer benchmark (GPU; not a test).

Builds the LTX-Video 2B transformer (:data:`q8lib.models.LTX_2B_CONFIG`) with seeded random weights
directly on the GPU and times one transformer forward at the shape of record (81 frames at
480x704 -> an 11x15x22 latent = 3630 tokens, batch 2 = the CFG pair, 128 text tokens) for each
variant, all in the same run:

* ``bf16`` / ``bf16_compile``: diffusers eager / regional ``torch.compile`` (fullgraph on the block)
* ``torchao_fp8_compile``: torchao FP8 row-wise dynamic quantization of the block linears + compile
* ``q8lib`` / ``q8lib_compile``: q8lib with the device's default weight dtype, attention bf16 SDPA
* ``q8lib_int8*`` / ``q8lib_fp8*``: an explicit weight dtype
* ``q8lib_fp8attn*`` / ``q8lib_int8attn*``: q8lib with FP8 / INT8 attention (``quantize_(..., attention="fp8")``)
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
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from ..config import Q8Config, Q8Runtime
from ..convert import quantize_
from ..cudagraph import CUDAGraphForward
from ..inspection import inspect_transformer
from ..metrics import cosine, relative_error
from ..models import LTX_2B_CONFIG, LTX_13B_CONFIG, dummy_inputs
from ..timing import host_probe, time_ms
from ..tiny.components import TINY_TRANSFORMER_CONFIG
from ..versions import package_versions
from .micro import micro
from .profile import profile_split

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "build_transformer", "compile_blocks", "prepare_variant", "linear_flops",
           "bench_inputs", "main"]

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
    "q8lib_int8attn": ("q8lib", {"attention": "int8"}, False),
    "q8lib_int8attn_compile": ("q8lib", {"attention": "int8"}, True),
}
# "<variant>_graph": the same, with the whole forward captured in one CUDA graph (q8lib.cudagraph),
# which removes the host cost of launching ~500 kernels per forward. torch.compile's own
# mode="reduce-overhead" does not work with regional compilation: the 28 blocks share one compiled
# region, and each replay overwrites the output the next block reads.
VARIANTS.update({f"{k}_graph": v for k, v in list(VARIANTS.items())})
DEFAULT_VARIANTS = ("bf16,bf16_compile,bf16_compile_graph,torchao_fp8_compile,q8lib,q8lib_compile,q8lib_compile_graph,"
                    "q8lib_fp8attn_compile_graph,q8lib_int8_compile")


def bench_inputs(cfg: dict, batch: int, frames: int, height: int, width: int, text: int, device,
                 dtype=torch.bfloat16) -> dict:
    """The benchmark's transformer inputs (:func:`q8lib.models.dummy_inputs`, seed 1, no text padding)."""
    return dummy_inputs(cfg, batch, frames, height, width, text, seed=1, device=device, dtype=dtype, text_kept=text)


def build_transformer(cfg: dict, device, dtype, seed: int = 0):
    """The transformer with seeded default-init weights, built on ``device`` (fp32 init, cast to ``dtype``)."""
    from diffusers import LTXVideoTransformer3DModel  # diffusers loads slowly: only when a model is built

    torch.manual_seed(seed)
    with torch.device(device):
        model = LTXVideoTransformer3DModel(**cfg)
    return model.to(dtype).eval()


def compile_blocks(model, mode=True) -> None:
    """Regional ``torch.compile`` (fullgraph) of the repeated transformer block, with ``mode`` if one is given."""
    kw = {"fullgraph": True} if mode is True else {"fullgraph": True, "mode": mode}
    try:
        model.compile_repeated_blocks(**kw)
    except (AttributeError, ValueError):  # older diffusers: compile each block
        for b in model.transformer_blocks:
            b.compile(**kw)


def prepare_variant(name: str, cfg: dict, device):
    """The model of benchmark variant ``name`` (see :data:`VARIANTS`), not yet compiled: ``(model, compile)``."""
    kind, opts, comp = VARIANTS[name]
    model = build_transformer(cfg, device, torch.bfloat16)
    if kind == "torchao":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
        from torchao.quantization import quantize_ as ao_quantize

        ao_quantize(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                    filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn.startswith("transformer_blocks."))
    elif kind == "q8lib":
        fmt = {k: v for k, v in opts.items() if k in ("weight_dtype", "hadamard_block")}  # the weight format
        runtime = Q8Runtime(**{k: v for k, v in opts.items() if k not in fmt})
        quantize_(model, Q8Config(**fmt), backend=runtime.backend, attention=runtime.attention, progress=False)
    gc.collect()
    torch.cuda.empty_cache()
    return model, comp


def _mem(what):
    """CUDA memory stats in MiB (``None`` on CPU smoke runs); ``"reset"`` resets the peak."""
    if not torch.cuda.is_available():
        return None
    if what == "reset":
        return torch.cuda.reset_peak_memory_stats()
    return (torch.cuda.max_memory_allocated() if what == "peak" else torch.cuda.memory_allocated()) / 2**20


def linear_flops(cfg, batch, tokens, text):
    """FLOPs of the block linears (the 8-bit ones) and of all linears per forward."""
    from diffusers import LTXVideoTransformer3DModel

    with torch.device("meta"):
        m = LTXVideoTransformer3DModel(**cfg)
    rep = inspect_transformer(m, num_tokens=tokens, text_tokens=text, batch=batch)
    block = sum(v for k, v in rep.flops.items() if "linear" in k)
    return block, block + sum(v for k, v in rep.flops.items() if k in ("proj_in", "proj_out", "time_embed", "caption_projection"))


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
        "versions": package_versions("triton", "diffusers", "torchao"),
        "shape": {"model": f"LTX-Video {args.config.upper()}", "num_layers": cfg["num_layers"], "batch": args.batch,
                  "latent": [args.frames, args.height, args.width], "tokens": tokens, "text_tokens": args.text},
        "linear_tflop_per_forward": {"block_linears_8bit": block_flops / 1e12, "all_linears": all_flops / 1e12},
        "timing": f"median of {args.iters} forwards (CUDA events) after {args.warmup} warm-up forwards",
        "results": {},
    }

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")

    inputs = bench_inputs(cfg, args.batch, args.frames, args.height, args.width, args.text, device)
    inputs32 = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    with torch.inference_mode():
        refs = {}
        if not args.no_fp32:
            prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            m32 = build_transformer(cfg, device, torch.float32)
            refs["fp32"] = m32(**inputs32).sample.float()
            del m32
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        gc.collect()
        torch.cuda.empty_cache()
        mb = build_transformer(cfg, device, torch.bfloat16)
        refs["bf16"] = mb(**inputs).sample.float()
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
            res = {"host": host_probe()}
            try:
                model, comp = prepare_variant(name, cfg, device)
                res["weights_mb"] = _mem("now")
                if VARIANTS[name][0] == "q8lib":
                    res["fused_blocks"] = sum("_q8_fused" in b.__dict__ for b in model.transformer_blocks)
                    res["weight_dtype"] = model._q8_config.weight_dtype
                y = model(**inputs).sample  # eager warm-up (also autotunes the Triton GEMMs)
                if comp:
                    compile_blocks(model, comp)
                    tc = time.time()
                    y = model(**inputs).sample.clone()  # CUDA-graph outputs are overwritten by replays
                    torch.cuda.synchronize() if device.type == "cuda" else None
                    res["compile_s"] = time.time() - tc

                fwd = functools.partial(model, **inputs)
                if name.endswith("_graph"):
                    tc = time.time()
                    fwd = functools.partial(CUDAGraphForward(model), **inputs)
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
                    res[f"rel_err_vs_{rname}"], res[f"cos_vs_{rname}"] = relative_error(y, r), cosine(y, r)
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
