"""The ``q8lib`` command line: ``generate``, ``compare``, ``convert``, ``bench``, ``memory``, ``demo``.

Every subcommand checks its arguments before any model is loaded, and known failures (bad
settings, missing model or package, bad checkpoint, unusable backend, GPU out of memory) end
with one ``q8lib <command>: error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

from .errors import MissingPackageError, Q8Error, Q8Warning, SettingsError
from .outputs import check_output_dir, check_output_file, write_json
from .versions import check_versions

__all__ = ["main", "build_parser", "MissingPackageError"]  # MissingPackageError: q8lib.errors, re-exported


# ------------------------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser, precision: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny",
                   help="'tiny' (embedded tiny default, CPU, offline; the default), a hub id such as "
                        "Lightricks/LTX-Video or Lightricks/LTX-Video-0.9.7-dev (13B), a local diffusers pipeline "
                        "folder, the aliases ltx-2b / ltx-13b, or random-2b / random-13b (full size, random weights)")
    g.add_argument("--checkpoint", default=None,
                   help="Q8 transformer: a q8lib checkpoint or the earlier public Q8 layout (folder or hub id); "
                        "without it the model's transformer is converted on the fly")
    g.add_argument("--checkpoint-subfolder", default=None, help="subfolder of --checkpoint holding the transformer")
    if precision:
        g.add_argument("--precision", default="q8", choices=["q8", "bf16"],
                       help="q8: 8-bit transformer (default); bf16: the unquantized transformer in --dtype")
    g.add_argument("--weight-dtype", default="auto", choices=["auto", "int8", "fp8_e4m3"],
                   help="8-bit type of the Q8 linears (auto: fp8_e4m3 on Hopper, else int8)")
    g.add_argument("--attention", default="fp8", choices=["fp8", "sdpa", "keep"], help="attention of the Q8 transformer")
    g.add_argument("--backend", default="auto",
                   help="q8lib backend: auto (fastest that runs here, reference otherwise with a warning), "
                        "reference, triton (fails if it cannot run)")
    g.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", default="auto", help="high-precision dtype: auto (bf16 on GPUs, fp32 on CPUs), bf16, fp16, fp32")
    g.add_argument("--offload", default="none", choices=["none", "model"],
                   help="model: keep idle components on the CPU (diffusers model CPU offload)")
    g.add_argument("--vae-tiling", action="store_true", help="decode the video in tiles (less memory)")


def _add_generation_args(p: argparse.ArgumentParser, output_default: str) -> None:
    g = p.add_argument_group("video")
    g.add_argument("--prompt", required=True, help="what the video shows")
    g.add_argument("--negative-prompt", default=None,
                   help="what to avoid (default: LTX's usual negative prompt; empty for the tiny default)")
    g.add_argument("--frames", type=int, default=None, help="8k+1 frames (tiny default 17, full size 81)")
    g.add_argument("--height", type=int, default=None, help="multiple of 32 (tiny default 32, full size 480)")
    g.add_argument("--width", type=int, default=None, help="multiple of 32 (tiny default 32, full size 704)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (tiny default 8, full size 50)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 3; <=1 disables CFG)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fps", type=int, default=25, help="frame rate of the video (also conditions the model)")
    g.add_argument("--image", default=None, help="first frame: image-to-video with LTXImageToVideoPipeline")
    g.add_argument("--output", default=output_default, help="mp4 to write; a JSON sidecar goes beside it")
    r = p.add_argument_group("runs")
    r.add_argument("--prompt-cache", default=None, help="folder of cached prompt embeddings (default ~/.cache/q8lib/prompt_embeds, or $Q8LIB_CACHE)")
    r.add_argument("--no-prompt-cache", action="store_true", help="always run the text encoder, store nothing")
    r.add_argument("--keep-text-encoder", action="store_true", help="do not free the text encoder before denoising")
    r.add_argument("--warmup", type=int, default=0, help="untimed runs first (2 steps each; compiles GPU kernels)")
    r.add_argument("--repeats", type=int, default=1, help="timed runs; the JSON holds each and the medians")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--no-video", action="store_true", help="measure only: write the JSON (and plot), no mp4")
    r.add_argument("--wandb", action="store_true", help="log the video and metrics to Weights & Biases (needs 'wandb')")
    r.add_argument("--wandb-project", default="q8lib")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="q8lib", description="8-bit (Q8) inference of LTX-Video in diffusers.",
        epilog="Without --model everything runs on the embedded tiny default, offline, on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="text (or image) to video; writes an mp4 and a JSON sidecar")
    _add_model_args(gen)
    _add_generation_args(gen, "outputs/q8lib_video.mp4")
    fast = gen.add_argument_group("speed (GPU)")
    fast.add_argument("--compile", action="store_true", help="regional torch.compile of the transformer blocks")
    fast.add_argument("--cuda-graph", action="store_true",
                      help="replay each transformer forward from one CUDA graph (needs --device cuda; first step captures)")
    gen.set_defaults(func=_generate)

    cmp_ = sub.add_parser("compare", help="same seed, unquantized vs Q8: side-by-side mp4, per-frame PSNR/SSIM JSON and plot")
    _add_model_args(cmp_, precision=False)
    _add_generation_args(cmp_, "outputs/q8lib_compare.mp4")
    cmp_.set_defaults(func=_compare)

    conv = sub.add_parser("convert", help="bf16 LTX transformer -> q8lib checkpoint, with a size report")
    conv.add_argument("source", help="hub id (Lightricks/LTX-Video), local pipeline or transformer folder, or 'tiny'")
    conv.add_argument("output", help="folder to write (config.json, safetensors, q8lib.json)")
    conv.add_argument("--subfolder", default="transformer", help="transformer subfolder of a pipeline (default transformer)")
    conv.add_argument("--weight-dtype", default="auto", choices=["auto", "int8", "fp8_e4m3"])
    conv.add_argument("--hadamard-block", type=int, default=None, help="rotation block (power of two); default: full width")
    conv.add_argument("--device", default="auto", help="where to quantize (a GPU is much faster)")
    conv.add_argument("--report", default=None, help="also write the size report as JSON here")
    conv.set_defaults(func=_convert)

    bench = sub.add_parser("bench", help="the project benchmark (q8lib.bench); arguments go to it", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)

    mem = sub.add_parser("memory", help="transformer-only peak GPU memory and forward time at one shape")
    mem.add_argument("--model", default="random-13b", help="random-13b (default), random-2b, tiny, or a hub id/folder")
    mem.add_argument("--precision", default="q8", choices=["q8", "bf16"])
    mem.add_argument("--weight-dtype", default="auto", choices=["auto", "int8", "fp8_e4m3"])
    mem.add_argument("--attention", default="fp8", choices=["fp8", "sdpa", "keep"])
    mem.add_argument("--backend", default="auto")
    mem.add_argument("--device", default="auto")
    mem.add_argument("--frames", type=int, default=81)
    mem.add_argument("--height", type=int, default=480)
    mem.add_argument("--width", type=int, default=704)
    mem.add_argument("--batch", type=int, default=2, help="transformer batch (2 = one video with CFG)")
    mem.add_argument("--repeats", type=int, default=3)
    mem.add_argument("--limit-gib", type=float, default=None, help="report whether the peak fits under this")
    mem.add_argument("--output", default=None, help="write the result JSON here")
    mem.set_defaults(func=_memory)

    demo = sub.add_parser("demo", help="convert the embedded tiny LTX transformer to Q8 and compare one forward")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--dtype", default="int8", choices=["int8", "fp8_e4m3"])
    demo.add_argument("--attention", default="fp8", choices=["fp8", "sdpa", "keep"])
    demo.set_defaults(func=_demo)
    return parser


# ------------------------------------------------------------------------------------------------
def _settings(args):
    from .pipeline import MODEL_ALIASES, settings_for

    model = MODEL_ALIASES.get(args.model, args.model)
    return settings_for(model, args.prompt, negative_prompt=args.negative_prompt,
                        num_frames=args.frames, height=args.height, width=args.width,
                        num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                        frame_rate=args.fps)


def _check_run_args(args) -> Path:
    """Every check of a generate/compare run that needs no model; returns the output path."""
    if args.warmup < 0 or args.repeats < 1:
        raise SettingsError(f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup} and {args.repeats}")
    out = check_output_file(args.output, (".mp4",), "--output")
    if not args.no_video:
        try:
            import imageio  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise MissingPackageError(f"writing mp4 needs imageio and imageio-ffmpeg ({e}): "
                                      "pip install imageio imageio-ffmpeg, or pass --no-video") from e
    return out


def _wandb_start(args, job: str, config: dict):
    """Import wandb lazily (an optional extra) and start a run; clear error if it is missing."""
    try:
        import wandb
    except ImportError as e:
        raise MissingPackageError("--wandb needs the optional 'wandb' package: pip install 'q8lib[wandb]' "
                                  "(set WANDB_MODE=offline to log without an account)") from e
    return wandb, wandb.init(project=args.wandb_project, job_type=job, config=config)


def _wandb_log(wb, video: Path | None, metrics: dict, fps: int) -> None:
    wandb, run = wb
    media = {"video": wandb.Video(str(video), fps=fps, format="mp4")} if video is not None else {}
    run.log({**media, **metrics})
    run.finish()


def _q8_config(args, **kw):
    """Q8Config from the options; ``--weight-dtype auto`` keeps Q8Config's device-dependent default."""
    from .config import Q8Config

    if args.weight_dtype != "auto":
        kw["weight_dtype"] = args.weight_dtype
    return Q8Config(**kw)


def _prompt_cache(args):
    """The prompt cache, or ``None`` (with a warning) when its folder cannot be used: the run goes on without it."""
    from .pipeline import PromptCache

    if args.no_prompt_cache:
        return None
    cache = PromptCache(args.prompt_cache)
    try:
        check_output_dir(cache.root, "--prompt-cache")
    except SettingsError as e:
        warnings.warn(Q8Warning(f"{e}; running without the prompt cache"), stacklevel=2)
        return None
    return cache


def _needs_text_encoder(args, settings, cache) -> bool:
    """False when the embeddings of a hub/local model are cached: T5 is then not even loaded."""
    from .pipeline import MODEL_ALIASES, RANDOM_MODELS, TINY, PromptCache

    model = MODEL_ALIASES.get(args.model, args.model)
    if model in RANDOM_MODELS:
        return False
    if cache is None or model == TINY:  # the tiny key hashes the (cheap) encoder itself
        return True
    model_id = str(Path(model).resolve()) if Path(model).is_dir() else model
    return not cache.path(PromptCache.key(model_id, settings)).exists()


def _load_image(path):
    """The ``--image`` as a PIL image, read before any model loads; :class:`SettingsError` if it cannot be."""
    if path is None:
        return None
    from PIL import Image

    if "://" in path:
        if not path.startswith(("http://", "https://")):
            raise SettingsError(f"--image {path!r}: give a local file or an http(s) URL")
        from diffusers.utils import load_image

        try:
            return load_image(path)
        except Exception as e:  # no network, HTTP error, not an image: all the user's to fix
            raise SettingsError(f"--image: could not load {path} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                                "check the URL and the network, or download the image and pass the file") from None
    p = Path(path).expanduser()
    if not p.is_file():
        raise SettingsError(f"--image {path!r} is not a file")
    try:
        with Image.open(p) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SettingsError(f"--image {path!r} is not an image Pillow can read ({type(e).__name__}); "
                            "pass a PNG, JPEG or WebP file") from None


def _median_timings(runs: list) -> dict:
    keys = [k for k, v in runs[0]["timings"].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r["timings"][k] for r in runs) for k in keys}


def _run(pipe, settings, embeds, image, args) -> list:
    from .pipeline import run_pipeline

    warm = dataclasses.replace(settings, num_inference_steps=min(2, settings.num_inference_steps))
    for _ in range(args.warmup):
        run_pipeline(pipe, warm, embeds, image, progress=False)
    return [run_pipeline(pipe, settings, embeds, image, progress=not args.quiet) for _ in range(args.repeats)]


def _shape(pipe, settings) -> dict:
    return settings.shape(pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio)


def _prepare(args, precision: str) -> argparse.Namespace:
    """Every check of a generate/compare run, in the order a user can fix them, before any model loads:
    settings, output path, device, dtype, backend, CUDA graph, checkpoint, image, prompt cache."""
    from .pipeline import check_backend, check_cuda_graph, resolve_device, resolve_dtype

    settings = _settings(args)
    out = _check_run_args(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if getattr(args, "cuda_graph", False):
        check_cuda_graph(device, args.offload)
    q8_config = _q8_config(args, backend=args.backend, attention=args.attention)
    # A named backend must run here; "auto" warns once, where the model is built (compare builds bf16 first).
    backend = (check_backend("q8", q8_config.backend, device)
               if (precision == "q8" and q8_config.backend != "auto") or args.command == "compare" else None)
    if args.checkpoint is not None:
        from .ltx import check_checkpoint_source

        check_checkpoint_source(args.checkpoint, args.checkpoint_subfolder)
    image = _load_image(args.image)
    cache = _prompt_cache(args)
    return argparse.Namespace(settings=settings, out=out, device=device, dtype=dtype, q8_config=q8_config,
                              backend=backend, image=image, cache=cache)


def _generate(args) -> int:
    from .pipeline import encode_prompts, environment, free_text_encoder, load_pipeline
    from .video import write_video

    run = _prepare(args, args.precision)
    settings, device, image, cache, out = run.settings, run.device, run.image, run.cache, run.out
    wb = _wandb_start(args, "generate", dict(dataclasses.asdict(settings), model=args.model,
                                             precision=args.precision)) if args.wandb else None
    start = time.perf_counter()
    pipe = load_pipeline(args.model, precision=args.precision, checkpoint=args.checkpoint,
                         checkpoint_subfolder=args.checkpoint_subfolder, image_to_video=image is not None,
                         device=device, dtype=run.dtype, q8_config=run.q8_config,
                         load_text_encoder=_needs_text_encoder(args, settings, cache), offload=args.offload,
                         vae_tiling=args.vae_tiling, compile=args.compile, cuda_graph=args.cuda_graph)
    load_s = time.perf_counter() - start
    embeds, enc = encode_prompts(pipe, settings, pipe.q8lib_info["model"], cache)
    if not args.keep_text_encoder:
        free_text_encoder(pipe)
    runs = _run(pipe, settings, embeds, image, args)
    videos = runs[-1]["frames"]
    paths = [] if args.no_video else [out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
                                      for i in range(len(videos))]
    report = dict(kind="q8lib generate", **environment(device), shape=_shape(pipe, settings),
                  settings=dataclasses.asdict(settings), pipeline=pipe.q8lib_info,
                  results=dict(load_s=load_s, **enc, timings=_median_timings(runs),
                               memory=runs[-1]["memory"], runs=[dict(timings=r["timings"], memory=r["memory"]) for r in runs],
                               warmup_runs=args.warmup),
                  outputs=[str(p) for p in paths])
    sidecar = out.with_suffix(".json")
    for v, p in zip(videos, paths):  # each file is written whole or not at all (q8lib.outputs)
        write_video(v, p, settings.frame_rate)
    write_json(sidecar, report)
    t = report["results"]["timings"]
    mem = runs[-1]["memory"].get("peak_gib")
    print(f"wrote {' '.join(map(str, paths + [sidecar]))} ({settings.num_frames} frames, "
          f"{settings.height}x{settings.width})")
    print(f"end to end {t['end_to_end_s']:.2f} s (transformer {t['transformer_s']:.2f} s, VAE decode "
          f"{t['vae_decode_s']:.2f} s), load {load_s:.1f} s, prompt cache {enc['prompt_cache']}, "
          f"backend {pipe.q8lib_info['backend']}" + (f", peak {mem:.2f} GiB" if mem is not None else ""))
    if wb:
        _wandb_log(wb, paths[0] if paths else None, {f"timings/{k}": v for k, v in t.items()}, settings.frame_rate)
    return 0


def _compare(args) -> int:
    import gc

    import torch

    from . import ltx
    from .pipeline import (encode_prompts, environment, free_text_encoder, load_pipeline, load_transformer,
                           transformer_config)
    from .video import plot_metrics, psnr, side_by_side, ssim, write_video

    run = _prepare(args, "q8")
    settings, device, image, cache, out = run.settings, run.device, run.image, run.cache, run.out
    q8_config, backend = run.q8_config, run.backend
    if not args.checkpoint:  # the Q8 conversion must be possible before anything loads, not after the bf16 run
        ltx.check_q8_config(transformer_config(args.model), q8_config)
    wb = _wandb_start(args, "compare", dict(dataclasses.asdict(settings), model=args.model)) if args.wandb else None
    start = time.perf_counter()
    pipe = load_pipeline(args.model, precision="bf16", image_to_video=image is not None, device=device,
                         dtype=run.dtype, q8_config=q8_config,
                         load_text_encoder=_needs_text_encoder(args, settings, cache),
                         offload=args.offload, vae_tiling=args.vae_tiling)
    load_s = time.perf_counter() - start
    embeds, enc = encode_prompts(pipe, settings, pipe.q8lib_info["model"], cache)
    if not args.keep_text_encoder:
        free_text_encoder(pipe)
    ref_runs = _run(pipe, settings, embeds, image, args)
    # The same transformer in 8 bits: quantized in place (no second copy), or the given checkpoint.
    if args.checkpoint:
        pipe.register_modules(transformer=None)
        gc.collect()
        pipe.register_modules(transformer=load_transformer(
            pipe.q8lib_info["model"], "q8", args.checkpoint, args.checkpoint_subfolder, q8_config, device, run.dtype))
    else:
        ltx.quantize_(pipe.transformer, q8_config, progress=not args.quiet)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    q8_runs = _run(pipe, settings, embeds, image, args)
    ref, q8 = ref_runs[-1]["frames"][0], q8_runs[-1]["frames"][0]
    p, s = psnr(ref, q8), ssim(ref, q8)
    per_frame = dict(psnr_db=[float(v) for v in p], ssim=[float(v) for v in s])
    plot = plot_metrics(per_frame, out.with_suffix(".png"),
                        title=f"{pipe.q8lib_info['model']}: {pipe.q8lib_info['dtype']} vs Q8 ({q8_config.weight_dtype})")
    finite = [v for v in per_frame["psnr_db"] if v != float("inf")]
    summary = dict(psnr_db_mean=statistics.mean(finite) if finite else float("inf"),
                   psnr_db_min=min(per_frame["psnr_db"]), ssim_mean=statistics.mean(per_frame["ssim"]),
                   ssim_min=min(per_frame["ssim"]),
                   max_abs_diff=float((ref - q8).abs().max()))
    report = dict(kind="q8lib compare", **environment(device), shape=_shape(pipe, settings),
                  settings=dataclasses.asdict(settings),
                  pipeline=dict(pipe.q8lib_info, precision=f"{pipe.q8lib_info['dtype']} vs q8",
                                checkpoint=args.checkpoint, weight_dtype=q8_config.weight_dtype,
                                attention=q8_config.attention,
                                backend=backend),
                  results=dict(load_s=load_s, **enc, metrics=summary, per_frame=per_frame,
                               speedup=dict(transformer=_ratio(ref_runs, q8_runs, "transformer_s"),
                                            end_to_end=_ratio(ref_runs, q8_runs, "end_to_end_s")),
                               reference=dict(timings=_median_timings(ref_runs), memory=ref_runs[-1]["memory"]),
                               q8=dict(timings=_median_timings(q8_runs), memory=q8_runs[-1]["memory"]),
                               warmup_runs=args.warmup, repeats=args.repeats),
                  outputs=dict(video=None if args.no_video else str(out), plot=str(plot) if plot else None))
    sidecar = out.with_suffix(".json")
    if not args.no_video:  # each file is written whole or not at all (q8lib.outputs)
        write_video(side_by_side(ref, q8), out, settings.frame_rate)
    write_json(sidecar, report)
    rt, qt = report["results"]["reference"]["timings"], report["results"]["q8"]["timings"]
    video_note = "" if args.no_video else f"{out} (left: {pipe.q8lib_info['dtype']}, right: Q8), "
    print(f"wrote {video_note}{sidecar}" + (f" and {plot}" if plot else ""))
    print(f"PSNR mean {summary['psnr_db_mean']:.2f} dB (min {summary['psnr_db_min']:.2f}), SSIM mean "
          f"{summary['ssim_mean']:.4f} (min {summary['ssim_min']:.4f}); transformer {rt['transformer_s']:.2f} s -> "
          f"{qt['transformer_s']:.2f} s, end to end {rt['end_to_end_s']:.2f} s -> {qt['end_to_end_s']:.2f} s")
    if wb:
        _wandb_log(wb, None if args.no_video else out, {f"metrics/{k}": v for k, v in summary.items()}, settings.frame_rate)
    return 0


def _ratio(ref_runs, q8_runs, key):
    a, b = _median_timings(ref_runs)[key], _median_timings(q8_runs)[key]
    return a / b if b else None


def _convert(args) -> int:
    from .pipeline import convert_checkpoint, resolve_device

    q8_config = _q8_config(args, hadamard_block=args.hadamard_block)
    check_output_dir(args.output, "output folder")
    if args.report:
        check_output_file(args.report, (".json",), "--report")
    rep = convert_checkpoint(args.source, args.output, subfolder=args.subfolder or None, q8_config=q8_config,
                             device=resolve_device(args.device))
    mb = 1e6
    print(f"converted {rep['source']} -> {rep['output']} ({rep['weight_dtype']}, hadamard_block={rep['hadamard_block']}) "
          f"in {rep['seconds']:.1f} s")
    print(f"  parameters      {rep['params']:>15,}  (8-bit {rep['params_8bit']:,}, kept high precision {rep['params_kept']:,})")
    print(f"  bf16 weights    {rep['bf16_bytes'] / mb:>12.2f} MB")
    print(f"  q8lib weights   {rep['q8_bytes'] / mb:>12.2f} MB  ({rep['ratio']:.1%} of bf16)")
    if args.report:
        write_json(Path(args.report), rep)
    return 0


def _bench(args) -> int:
    import importlib

    try:
        bench = importlib.import_module("q8lib.bench")
    except ModuleNotFoundError as e:
        if e.name not in ("q8lib.bench", None):
            raise
        raise MissingPackageError(
            "the project benchmark module q8lib.bench is not in this install (it ships with the fast kernels); "
            "update q8lib or run the scripts under benchmarks/ directly") from e
    if not callable(getattr(bench, "main", None)):
        raise MissingPackageError("q8lib.bench has no main(argv) function; update q8lib")
    rc = bench.main(list(args.bench_args))
    return int(rc or 0)


def _memory(args) -> int:
    from .pipeline import MODEL_ALIASES, environment, resolve_device, transformer_memory

    if args.output:
        check_output_file(args.output, (".json",), "--output")
    if args.limit_gib is not None and not args.limit_gib > 0:
        raise SettingsError(f"--limit-gib must be a positive number of GiB, got {args.limit_gib}")
    device = resolve_device(args.device)
    rep = transformer_memory(MODEL_ALIASES.get(args.model, args.model), args.frames, args.height, args.width,
                             args.batch, repeats=args.repeats, precision=args.precision,
                             q8_config=_q8_config(args, backend=args.backend, attention=args.attention),
                             device=device)
    report = dict(kind="q8lib memory", **environment(device), shape=rep.pop("shape"), results=rep)
    if args.limit_gib is not None and "peak_gib" in rep:
        rep["limit_gib"] = args.limit_gib
        rep["fits"] = rep["peak_gib"] <= args.limit_gib
    peak = f"peak {rep['peak_gib']:.2f} GiB (weights {rep['weights_gib']:.2f} GiB)" if "peak_gib" in rep \
        else "peak memory is measured on CUDA devices only"
    print(f"{rep['model']} {rep['precision']} ({rep['backend']}) at {report['shape']['video_tokens']} tokens x batch "
          f"{args.batch}: {peak}, forward {rep['forward_ms_median']:.1f} ms"
          + (f", fits {args.limit_gib} GiB: {rep['fits']}" if "fits" in rep else ""))
    if args.output:
        write_json(Path(args.output), report)
    return 0


def _demo(args) -> int:
    """Build the tiny LTX transformer, convert it to Q8, run both on one input; print error, size, time."""
    import copy

    import torch

    from . import Q8Config, inspect_transformer, quantize_
    from .pipeline import default_pipeline

    if args.batch < 1 or args.seed < 0:
        raise SettingsError(f"--batch must be >= 1 and --seed >= 0, got {args.batch} and {args.seed}")
    torch.manual_seed(args.seed)
    model = default_pipeline(args.seed).transformer
    cfg = model.config
    frames, height, width, text = 3, 8, 8, 16
    x = torch.randn(args.batch, frames * height * width, cfg.in_channels)
    enc = torch.randn(args.batch, text, cfg.caption_channels)
    mask = torch.ones(args.batch, text)
    mask[-1, text // 2:] = 0  # right padding on the last sample
    t = torch.full((args.batch,), 500)
    kw = dict(num_frames=frames, height=height, width=width)

    def run(m):
        start = time.perf_counter()
        with torch.no_grad():
            y = m(x, enc, t, mask, **kw).sample
        return y, (time.perf_counter() - start) * 1e3

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))

    ref, ms_ref = run(model)
    q8 = quantize_(copy.deepcopy(model), Q8Config(weight_dtype=args.dtype, attention=args.attention), progress=False)
    out, ms_q8 = run(q8)
    rel = ((out - ref).norm() / ref.norm()).item()
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    print(inspect_transformer(model, num_tokens=frames * height * width, text_tokens=text, batch=args.batch).table())
    print(f"\nQ8 ({args.dtype}, attention={args.attention}, backend={q8._q8_config.backend}) vs fp32 on the tiny default:")
    print(f"  relative error {rel:.4f}   cosine {cos:.6f}")
    print(f"  weights+buffers {nbytes(model) / 1e6:.2f} MB -> {nbytes(q8) / 1e6:.2f} MB")
    print(f"  forward {ms_ref:.1f} ms -> {ms_q8:.1f} ms (CPU reference path; speed comes from the GPU backends)")
    return 0


# ------------------------------------------------------------------------------------------------
def _quiet_library_logs() -> None:
    """diffusers' and transformers' info/warning logs (loading notes, accelerate hints) are not the CLI's
    output: keep their errors only. Python warnings, q8lib's own among them, still print."""
    for name in ("diffusers", "transformers"):
        try:
            logging_module = __import__(f"{name}.utils.logging", fromlist=["set_verbosity_error"])
            logging_module.set_verbosity_error()
        except ImportError:  # pragma: no cover
            pass


def main(argv=None) -> int:
    """Entry point of ``q8lib`` and ``python -m q8lib``; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to q8lib.bench, options included
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=_bench)
    else:
        args = parser.parse_args(argv)
    import torch

    old_format = warnings.formatwarning

    def short_format(msg, cat, *a, **k):  # q8lib's own warnings as one line; others as Python prints them
        return f"q8lib: warning: {msg}\n" if issubclass(cat, Q8Warning) else old_format(msg, cat, *a, **k)

    warnings.formatwarning = short_format
    _quiet_library_logs()
    try:
        for problem in check_versions():  # an unsupported install is worth one line, not a refusal
            warnings.warn(Q8Warning(problem), stacklevel=1)
        return args.func(args) or 0
    except (Q8Error, torch.OutOfMemoryError) as e:
        msg = " ".join(str(e).split())  # one line, whatever the message held
        if isinstance(e, torch.OutOfMemoryError):
            from .pipeline import oom_message

            msg = oom_message(None, getattr(args, "device", "cuda"))
        print(f"q8lib {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"q8lib {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = old_format
