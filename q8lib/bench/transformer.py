"""``python -m q8lib.bench``: the transformer benchmark (GPU; not a test).

Builds a full-size transformer with seeded random weights directly on the GPU (:mod:`q8lib.bench.build`) and
times one forward at a shape users run, for each variant, all in the same run. ``--config`` (``shape.model`` in
the JSON):

* ``2b`` / ``13b``: LTX-Video 2B / 0.9.7 13B, 81 frames of 480x704 (height x width, LTXPipeline's default) -> an
  11x15x22 latent = 3630 tokens, 128 text tokens (``--video 121,512,768`` for LTX-2's shape);
* ``ltx2`` / ``ltx2.3``: LTX-2 (19B) / the LTX-2.3 layout, 121 frames of 512x768 (LTX2Pipeline's default height and
  width; 5.04 s at 24 fps) -> 16x16x24 = 6144 video tokens, 126 audio tokens (25 audio latents/s), 1024 text
  tokens (the pipeline's max_sequence_length);
* ``tiny`` / ``ltx2-tiny``: CPU smoke runs of the script.

Batch 2 (the CFG pair). Variants (:data:`VARIANTS`):

* ``bf16`` / ``bf16_compile``: diffusers eager / regional ``torch.compile`` (fullgraph on the block)
* ``torchao_fp8_compile``: torchao FP8 row-wise dynamic quantization of the block linears + compile
* ``q8lib`` / ``q8lib_compile``: q8lib with the device's default weight dtype, attention bf16 SDPA
* ``q8lib_int8*`` / ``q8lib_fp8*``: an explicit weight dtype
* ``q8lib_fp8attn*`` / ``q8lib_int8attn*``: q8lib with FP8 / INT8 attention (``quantize_(..., attention="fp8")``);
  ``q8lib_fp8tensorattn*``: cuDNN's FP8 engine (``attention="fp8_tensor"``, needs ``nvidia-cudnn-frontend``);
  ``q8lib_fp8tensorselfattn*``: the same with FP8 only for >= 2048 keys (the A/B of its thresholds)
* ``*_graph``: any of these with the whole forward in one CUDA graph (:mod:`q8lib.cudagraph`); listed right
  after its variant (``q8lib_compile,q8lib_compile_graph``) it reuses that variant's build and compile.

Per variant (each in isolation: the previous model is freed and peak stats reset): median forward time over
CUDA events after warm-up, a 50-step estimate, the weights' memory, the build's peak (the 8-bit variants
quantize block by block as the model is built: never a bf16 copy of the whole model) and the timed forwards'
peak, relative error and cosine vs the bf16 eager output (LTX-2: video, and audio as ``audio_*``) and vs a
float32 (no TF32) forward where it runs, and the linears' FLOPs over the forward time. Variants that cannot run
here (a CUDA graph on a CPU, torchao missing, an attention mode the model refuses) are recorded as ``skipped``
with the reason before anything is built. ``--budget-s`` stops the run at a wall-clock budget: the variant
running then and the rest are recorded as skipped. ``--micro`` adds per-op timings. JSON goes to
``benchmarks/results/`` (``--out``).

H200 runs (one command each, under 9 minutes; expected memory per variant in ``benchmarks/NOTES_linear.md``)::

    python -m q8lib.bench --config ltx2 --iters 8 --warmup 2 --budget-s 460 --out benchmarks/results/transformer_ltx2_h200.json
    python -m q8lib.bench --config 13b --video 121,512,768 --iters 8 --warmup 2 --budget-s 460 \\
        --out benchmarks/results/transformer_13b_h200.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from ..versions import package_versions
from .build import (BENCH_MODELS, LTX_VAE_SCALE_FACTORS, audio_latent_frames, bench_inputs, build_transformer, latent_grid,
                    linear_flops, meta_transformer)
from .micro import micro
from .run import BudgetExceeded, reference_outputs, run_group, time_budget, variant_groups
from .variants import DEFAULT_VARIANTS, LTX2_DEFAULT_VARIANTS, VARIANTS, compile_blocks, prepare_variant, skip_reason

__all__ = ["VARIANTS", "DEFAULT_VARIANTS", "LTX2_DEFAULT_VARIANTS", "BudgetExceeded", "build_transformer",
           "compile_blocks", "prepare_variant", "skip_reason", "linear_flops", "bench_inputs", "time_budget", "main"]


def _shape(bm, cfg, args) -> dict:
    """The run's shape: pixels (``--video`` or the config's), the latent grid (``--frames/--height/--width``
    override it), token counts."""
    ltx2 = "audio_in_channels" in cfg
    try:
        video = tuple(int(v) for v in args.video.replace("x", ",").split(",")) if args.video else bm.video
    except ValueError:
        raise ValueError(f"--video takes FRAMES,HEIGHT,WIDTH as integers (e.g. 81,480,704), got {args.video!r}") from None
    if len(video) != 3:
        raise ValueError(f"--video takes three integers FRAMES,HEIGHT,WIDTH (e.g. 81,480,704), got {args.video!r}")
    latent = list(latent_grid(*video, cfg["vae_scale_factors"] if ltx2 else LTX_VAE_SCALE_FACTORS))
    for i, k in enumerate(("frames", "height", "width")):
        if getattr(args, k) is not None:
            latent[i], video = getattr(args, k), None
    shape = {"model": bm.name, "config": args.config, "num_layers": cfg["num_layers"], "batch": args.batch,
             "video": list(video) if video else None, "latent": latent, "tokens": latent[0] * latent[1] * latent[2],
             "text_tokens": args.text or bm.text}
    if ltx2:  # the audio of the video's duration at 24 fps, as LTX2Pipeline computes it
        frames = video[0] if video else 1 + (latent[0] - 1) * cfg["vae_scale_factors"][0]
        shape["audio_tokens"] = args.audio or audio_latent_frames(frames, cfg)
    return shape


def _argument_problem(args) -> str | None:
    """What is wrong with the numeric arguments (``None``: nothing), said before anything is built."""
    at_least = {"--layers": (args.layers, 1), "--batch": (args.batch, 1), "--frames": (args.frames, 1),
                "--height": (args.height, 1), "--width": (args.width, 1), "--audio": (args.audio, 1),
                "--text": (args.text, 1), "--iters": (args.iters, 1), "--warmup": (args.warmup, 0)}
    for flag, (value, low) in at_least.items():
        if value is not None and value < low:
            return f"{flag} must be >= {low}, got {value}"
    if args.budget_s is not None and not args.budget_s > 0:
        return f"--budget-s must be a positive number of seconds, got {args.budget_s}"
    if args.audio is not None and "ltx2" not in args.config:
        return f"--audio sets LTX-2's audio tokens; --config {args.config} has no audio stream"
    if args.fp32 and args.no_fp32:
        return "--fp32 and --no-fp32 contradict each other"
    return None


def _fp32_skip(bm, cfg, args, device) -> str | None:
    """Why the float32 reference is skipped (``None``: it runs): ``--no-fp32``, the config's default (LTX-2,
    unless ``--fp32``), or its weights not fitting in the GPU's free memory with a 20% margin."""
    if args.no_fp32:
        return "--no-fp32"
    if bm.fp32_skip and not args.fp32:
        return bm.fp32_skip
    if device.type == "cuda":
        need = 4 * sum(p.numel() for p in meta_transformer(cfg).parameters()) * 1.2
        free = torch.cuda.mem_get_info()[0]
        if need > free:
            return f"float32 weights need ~{need / 2**30:.0f} GiB with margin, {free / 2**30:.0f} GiB free"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m q8lib.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=None, help=f"comma list from {sorted(VARIANTS)} (default: per config: "
                    f"{DEFAULT_VARIANTS}; LTX-2: {LTX2_DEFAULT_VARIANTS})")
    ap.add_argument("--config", default="2b", choices=sorted(BENCH_MODELS), help="tiny, ltx2-tiny: CPU smoke runs")
    ap.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--video", default=None, help="FRAMES,HEIGHT,WIDTH in pixels (default: the config's); the latent "
                    "grid follows from the VAE's compression")
    ap.add_argument("--frames", type=int, default=None, help="latent frames (overrides --video)")
    ap.add_argument("--height", type=int, default=None, help="latent height (overrides --video)")
    ap.add_argument("--width", type=int, default=None, help="latent width (overrides --video)")
    ap.add_argument("--audio", type=int, default=None, help="LTX-2 audio tokens (default: the video's duration's)")
    ap.add_argument("--text", type=int, default=None, help="text tokens (default: the pipeline's max length)")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget: the variant running when it ends and the rest are recorded as skipped")
    ap.add_argument("--micro", action="store_true", help="also time the GEMMs and row kernels alone")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 reference forward")
    ap.add_argument("--fp32", action="store_true", help="run the fp32 reference where the config skips it by default")
    ap.add_argument("--profile", action="store_true",
                    help="also record each variant's profile split (GEMM / attention / glue / host gaps)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/transformer_<gpu>.json)")
    args = ap.parse_args(argv)
    problem = _argument_problem(args)
    if problem:
        ap.error(problem)
    if not torch.cuda.is_available() and "tiny" not in args.config:
        print("q8lib.bench needs a CUDA GPU (or --config tiny / ltx2-tiny for a CPU smoke run).", file=sys.stderr)
        return 2
    bm = BENCH_MODELS[args.config]
    cfg = dict(bm.config, **({"num_layers": args.layers} if args.layers else {}))
    ltx2 = "audio_in_channels" in cfg
    names = [v.strip() for v in (args.variants or (LTX2_DEFAULT_VARIANTS if ltx2 else DEFAULT_VARIANTS)).split(",")
             if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {sorted(VARIANTS)}")
    try:
        shape = _shape(bm, cfg, args)
    except ValueError as e:
        ap.error(str(e))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    out_path = Path(args.out or f"benchmarks/results/transformer_{gpu.split()[1].lower() if len(gpu.split()) > 1 else 'gpu'}.json")
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:6.0f} s] {msg}", flush=True)

    latent = shape["latent"]
    in_kw = dict(audio_frames=shape.get("audio_tokens"))
    block_flops, all_flops = linear_flops(cfg, bench_inputs(cfg, args.batch, *latent, shape["text_tokens"], "meta",
                                                            torch.float32, **in_kw))
    skips = {n: r for n in names if (r := skip_reason(n, cfg, device))}
    for n, r in skips.items():
        log(f"{n} skipped: {r}")
    report = {
        "device": gpu, "capability": "sm_%d%d" % torch.cuda.get_device_capability() if device.type == "cuda" else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions("triton", "diffusers", "torchao"),
        "shape": dict(shape, params=sum(p.numel() for p in meta_transformer(cfg).parameters())),
        "linear_tflop_per_forward": {"block_linears_8bit": block_flops / 1e12, "all_linears": all_flops / 1e12},
        "timing": f"median of {args.iters} forwards (CUDA events) after {args.warmup} warm-up forwards",
        "budget_s": args.budget_s,
        "references": {},
        "results": {n: {"skipped": r} for n, r in skips.items()},
    }
    log(f"{bm.name}: {report['shape']['params'] / 1e9:.2f}B parameters, latent {latent} = {shape['tokens']} tokens"
        + (f", {shape['audio_tokens']} audio tokens" if ltx2 else "") + f", {shape['text_tokens']} text tokens, "
        f"batch {args.batch}; {all_flops / 1e12:.1f} TFLOP of linears per forward")

    def save():  # after every variant, so a run cut short keeps what it measured; atomic, never a half-written file
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out_path)

    inputs = bench_inputs(cfg, args.batch, *latent, shape["text_tokens"], device, **in_kw)
    with torch.inference_mode(), time_budget(args.budget_s) as check_budget:
        try:
            refs, report["references"] = reference_outputs(cfg, inputs, device, _fp32_skip(bm, cfg, args, device), log)
            save()
            if args.micro:
                t0 = time.time()
                try:
                    report["micro"] = micro(cfg, args.batch, shape["tokens"], shape["text_tokens"], device)
                except Exception as e:  # noqa: BLE001
                    report["micro"] = {"error": traceback.format_exc()[-2000:]}
                    log(f"micro failed: {e}")
                log(f"micro done in {time.time() - t0:.0f} s")
                save()
            for group in variant_groups([n for n in names if n not in skips]):
                check_budget()
                try:
                    run_group(group, cfg, inputs, refs, device, args, all_flops, log, report["results"])
                finally:
                    save()
                for name in group:
                    res = report["results"].get(name, {})
                    log(f"{name:24s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in res.items() if k not in ("error", "host")))
        except BudgetExceeded as e:
            for n in names:
                report["results"].setdefault(n, {"skipped": f"{e} before this variant started"})
            log(f"{e}: the remaining variants are recorded as skipped")
    report["results"] = {n: report["results"][n] for n in names if n in report["results"]}  # in the order asked
    _summary(report, out_path)
    save()
    return 0


def _summary(report, out_path) -> None:
    """Ratios against bf16 + compile (time) and bf16 (peak), and the table printed at the end."""
    results = report["results"]
    base = results.get("bf16_compile", {}).get("fwd_ms")
    bf = results.get("bf16", {}).get("peak_mb")
    for r in results.values():
        if base and "fwd_ms" in r:
            r["x_vs_bf16_compile"] = r["fwd_ms"] / base
        if bf and r.get("peak_mb"):
            r["peak_x_vs_bf16"] = r["peak_mb"] / bf
    print(f"\nwrote {out_path}")
    print(f"{'variant':28s}{'fwd_ms':>9s}{'x bf16c':>9s}{'peak_mb':>10s}{'rel_err_bf16':>14s}{'cos_bf16':>10s}")
    for name, r in results.items():
        if "fwd_ms" in r:
            print(f"{name:28s}{r['fwd_ms']:9.2f}{r.get('x_vs_bf16_compile', float('nan')):9.3f}"
                  f"{r['peak_mb'] or float('nan'):10.0f}{r.get('rel_err_vs_bf16', float('nan')):14.4f}"
                  f"{r.get('cos_vs_bf16', float('nan')):10.5f}")
        else:
            print(f"{name:28s} {'skipped: ' + r['skipped'][:80] if 'skipped' in r else 'ERROR'}")
