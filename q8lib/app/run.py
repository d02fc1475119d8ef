"""The library behind the command line: :func:`generate`, :func:`compare`, :func:`memory`, :func:`convert`,
:func:`demo`. Each checks every input before any model loads, does the work, writes its files (each
whole or not at all) and returns the report that its JSON sidecar holds; ``q8lib <command>`` only
parses arguments into these calls and prints the reports. Notebooks and scripts call them the same way::

    from q8lib.app import generate
    report = generate("a red circle moving right", output="outputs/v.mp4")   # the tiny default, on a CPU
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import check_checkpoint_source, save_q8
from ..config import Q8Config, Q8Runtime
from ..convert import check_q8_config, quantize_
from ..errors import SettingsError
from ..fused import install_if_fast
from ..inspection import inspect_transformer
from ..metrics import cosine, psnr, relative_error, ssim
from ..models import dummy_inputs, module_bytes
from ..modules import Q8Linear
from ..outputs import check_output_dir, check_output_file, write_json
from ..tiny.components import default_pipeline
from .inputs import WandbRun, check_video_output, load_image, needs_text_encoder, open_prompt_cache
from .loading import load_pipeline, load_transformer, transformer_config
from .measure import environment, run_pipeline, transformer_memory
from .pipelines import check_family_packages, model_family
from .prompts import encode_prompts, free_text_encoder, text_encoder_suffix
from .upsample import distilled_stage, ltx2_distilled_recipe, load_upsampler, plan_upsample, run_two_stage
from .settings import (MODEL_ALIASES, TINY, check_backend, check_cuda_graph, check_offload, resolve_device,
                       resolve_dtype, settings_for)
from .video import plot_metrics, side_by_side, video_writer, write_video

__all__ = ["RunOptions", "generate", "compare", "memory", "convert", "convert_checkpoint", "demo", "sidecar_for",
           "q8_options"]


@dataclass
class RunOptions:
    """Every option of a generate/compare run (the ``q8lib generate`` flags, same names); ``None`` video
    settings take the model's defaults (:func:`~q8lib.app.settings.settings_for`)."""

    prompt: str
    model: str = TINY
    checkpoint: str | None = None
    checkpoint_subfolder: str | None = None
    precision: str = "q8"
    weight_dtype: str = "auto"
    attention: str = "fp8"
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"  # "model" or "sequential": diffusers' CPU offload (q8lib.offload)
    vae_tiling: bool = False
    negative_prompt: str | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    fps: int = 25
    image: str | None = None
    output: str | None = None  # default outputs/q8lib_video.mp4 (generate), outputs/q8lib_compare.mp4 (compare)
    prompt_cache: str | None = None
    no_prompt_cache: bool = False
    keep_text_encoder: bool = False
    warmup: int = 0
    repeats: int = 1
    quiet: bool = False
    no_video: bool = False
    wandb: bool = False
    wandb_project: str = "q8lib"
    compile: bool = False
    cuda_graph: bool = False
    text_encoder_precision: str = "bf16"  # "q8": the text encoder's layer linears in 8 bits (q8lib.text_encoder)
    upsampler: str | None = None  # generate: two stages with this latent upsampler (q8lib.app.upsample)
    distilled: bool = False  # generate: an LTX-2 distilled checkpoint, run with its recipe (q8lib.app.upsample)
    stage2_lora: str | None = None  # generate --upsampler, LTX-2 dev: the distilled LoRA for stage 2 (file/folder/hub id)
    stage2_lora_weight: str | None = None  # its weight file name inside a folder or hub repo


def q8_options(weight_dtype: str = "auto", hadamard_block: int | None | str = "auto", backend: str = "auto",
               attention: str = "fp8") -> tuple[Q8Config, Q8Runtime]:
    """The weight format and runtime choices from command-line values; ``weight_dtype="auto"`` keeps
    Q8Config's device-dependent default."""
    fmt = {} if weight_dtype == "auto" else {"weight_dtype": weight_dtype}
    return Q8Config(hadamard_block=hadamard_block, **fmt), Q8Runtime(backend=backend, attention=attention)


def sidecar_for(output: str | Path) -> Path:
    """The JSON report written beside an mp4."""
    return Path(output).expanduser().with_suffix(".json")


def _prepare(o: RunOptions, command: str, default_output: str):
    """Every check of a generate/compare run, in the order a user can fix them, before any model loads:
    the model's family (its config files: which pipeline, which defaults), settings, output path and the packages
    the outputs need, device, dtype, backend, CUDA graph, checkpoint, image, prompt cache."""
    family = model_family(o.model)
    if o.distilled:
        _check_distilled(o, family, command)
    settings = settings_for(MODEL_ALIASES.get(o.model, o.model), o.prompt, family.defaults,
                            negative_prompt=o.negative_prompt, num_frames=o.frames, height=o.height, width=o.width,
                            num_inference_steps=o.steps, guidance_scale=o.guidance, seed=o.seed, frame_rate=o.fps)
    if o.distilled:  # the recipe's stage-1 steps and guidance, so the settings (and the report) say what runs
        stage1 = distilled_stage(1)
        settings = dataclasses.replace(settings, num_inference_steps=stage1["num_inference_steps"],
                                       guidance_scale=stage1["guidance_scale"])
    out = check_video_output(o.output or default_output, o.warmup, o.repeats, not o.no_video)
    check_family_packages(family, not o.no_video and command == "generate", o.image is not None)
    if o.upsampler is not None and command != "generate":
        raise SettingsError(f"--upsampler runs with generate only, not {command}")
    if o.upsampler is None and (o.stage2_lora or o.stage2_lora_weight):
        raise SettingsError("--stage2-lora is the LoRA of the second stage: it needs --upsampler")
    plan = None if o.upsampler is None else plan_upsample(o.upsampler, family, MODEL_ALIASES.get(o.model, o.model),
                                                          settings, transformer_config(o.model), o.distilled,
                                                          o.stage2_lora, o.stage2_lora_weight)
    if plan is not None and plan.stage2_lora and (o.compile or o.cuda_graph):
        raise SettingsError("--stage2-lora with --compile or --cuda-graph is not supported: the LoRA is switched on "
                            "between the two stages, which changes the forward under a compiled region or a captured "
                            "graph; run without them")
    if plan is not None and plan.stage2_lora and o.offload != "none":
        raise SettingsError(f"--stage2-lora with --offload {o.offload} is not supported yet: q8lib loads the LoRA onto "
                            "the Q8 transformer after the pipeline is built, and loading adapters into offloaded "
                            "modules is untested here; run without --offload")
    device = resolve_device(o.device)
    dtype = resolve_dtype(o.dtype, device)
    if command == "compare" and o.offload == "sequential":
        raise SettingsError("compare quantizes the transformer in place between its two runs, and sequential offload "
                            "keeps its weights on the meta device; use --offload model with compare")
    check_offload(o.offload, device, o.compile)
    if o.cuda_graph:
        check_cuda_graph(device, o.offload)
    q8_config, runtime = q8_options(o.weight_dtype, None, o.backend, o.attention)
    # A named backend must run here; "auto" warns once, where the model is built (compare builds bf16 first).
    named = o.precision == "q8" and runtime.backend != "auto"
    backend = check_backend("q8", runtime.backend, device) if named or command == "compare" else None
    if o.checkpoint is not None:
        check_checkpoint_source(o.checkpoint, o.checkpoint_subfolder)
    image = load_image(o.image)
    cache = open_prompt_cache(o.prompt_cache, not o.no_prompt_cache)
    return dict(settings=settings, out=out, device=device, dtype=dtype, q8_config=q8_config, runtime=runtime,
                backend=backend, image=image, cache=cache, family=family, plan=plan)


def _check_distilled(o: RunOptions, family, command: str) -> None:
    """``--distilled``: LTX-2 only, generate only, and the recipe fixes the steps and the guidance."""
    if command != "generate":
        raise SettingsError(f"--distilled runs with generate only, not {command}")
    if family.name != "ltx2":
        raise SettingsError(f"--distilled is LTX-2's distilled-checkpoint recipe; {o.model} is an {family.pipeline} "
                            "model (the distilled LTX-Video 0.9.7/0.9.8 recipes are not implemented)")
    fixed = [flag for flag, value in (("--steps", o.steps), ("--guidance", o.guidance)) if value is not None]
    if fixed:
        raise SettingsError(f"--distilled fixes the steps and the guidance (diffusers' LTX-2 distilled recipe: 8 "
                            f"sigmas, guidance 1; 3 more steps in stage 2 with --upsampler): drop {' and '.join(fixed)}")


def _median_timings(runs: list) -> dict:
    keys = [k for k, v in runs[0]["timings"].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r["timings"][k] for r in runs) for k in keys}


def _runs(pipe, settings, embeds, image, o: RunOptions, up=None, plan=None) -> list:
    """Warm-up runs (2 steps; stage 1's with an upsampler; with ``--distilled`` the recipe's own steps, which its
    sigmas fix), then ``o.repeats`` measured runs (two stages with ``plan``: :func:`~q8lib.app.upsample.run_two_stage`)."""
    def one(s, progress):
        if plan is not None:
            return run_two_stage(pipe, up, plan, s, embeds, image, progress)
        return run_pipeline(pipe, s, embeds, image, progress=progress, extra=distilled_stage(1) if o.distilled else None)

    warm = dataclasses.replace(settings, num_inference_steps=min(2, settings.num_inference_steps))
    for _ in range(o.warmup):
        one(warm, False)
    return [one(settings, not o.quiet) for _ in range(o.repeats)]


def _shape(pipe, settings) -> dict:
    return settings.shape(pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio)


def _load(o: RunOptions, run: dict, precision: str, **extra):
    """The pipeline and the prompt embeddings (the text encoder freed unless kept): ``(pipe, embeds, info, load_s)``."""
    start = time.perf_counter()
    pipe = load_pipeline(o.model, precision=precision, image_to_video=run["image"] is not None, device=run["device"],
                         dtype=run["dtype"], q8_config=run["q8_config"], runtime=run["runtime"],
                         load_text_encoder=needs_text_encoder(o.model, run["settings"], run["cache"], text_encoder_suffix(
                             o.text_encoder_precision, run["q8_config"].weight_dtype)),
                         offload=o.offload, vae_tiling=o.vae_tiling, text_encoder_precision=o.text_encoder_precision,
                         **extra)
    load_s = time.perf_counter() - start
    embeds, enc = encode_prompts(pipe, run["settings"], pipe.q8lib_info["model"], run["cache"])
    if not o.keep_text_encoder:
        free_text_encoder(pipe)
    return pipe, embeds, enc, load_s


def generate(prompt: str, **options) -> dict:
    """Text (or image) to video: writes the mp4 (``output``) and its JSON sidecar; returns the report.

    ``options`` are :class:`RunOptions` fields. The report holds the settings, device, versions, load /
    end-to-end / transformer / VAE-decode times (medians over ``repeats``) and peak memory.
    """
    o = RunOptions(prompt=prompt, **options)
    run = _prepare(o, "generate", "outputs/q8lib_video.mp4")
    settings, out = run["settings"], run["out"]
    wb = WandbRun(o.wandb_project, "generate", dict(dataclasses.asdict(settings), model=o.model,
                                                    precision=o.precision)) if o.wandb else None
    pipe, embeds, enc, load_s = _load(o, run, o.precision, checkpoint=o.checkpoint,
                                      checkpoint_subfolder=o.checkpoint_subfolder, compile=o.compile,
                                      cuda_graph=o.cuda_graph)
    plan, up, up_load_s = run["plan"], None, None
    if plan is not None:
        start = time.perf_counter()
        up = load_upsampler(plan, pipe)
        up_load_s = time.perf_counter() - start
    runs = _runs(pipe, settings, embeds, run["image"], o, up, plan)
    videos, audio, rate = runs[-1]["frames"], runs[-1]["audio"], runs[-1]["audio_sample_rate"]  # audio: LTX-2's
    paths = [] if o.no_video else [out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
                                   for i in range(len(videos))]
    report = dict(kind="q8lib generate", **environment(run["device"]), shape=_shape(pipe, settings),
                  settings=dataclasses.asdict(settings), pipeline=pipe.q8lib_info,
                  results=dict(load_s=load_s, **enc, timings=_median_timings(runs),
                               memory=runs[-1]["memory"], runs=[dict(timings=r["timings"], memory=r["memory"]) for r in runs],
                               warmup_runs=o.warmup,
                               audio=None if audio is None else dict(sample_rate=rate, channels=audio.shape[1],
                                                                     seconds=audio.shape[-1] / rate)),
                  outputs=[str(p) for p in paths], video_writer=video_writer(audio is not None) if paths else None)
    if plan is not None:  # the two stages' sizes, the upsampler and the recipe (timings: stage1_*, upsample_s, stage2_*)
        report["upsample"] = dict(upsampler=plan.upsampler, subfolder=plan.subfolder, load_s=up_load_s,
                                  stage1=dict(height=plan.stage1[0], width=plan.stage1[1]),
                                  stage2=dict(height=plan.stage2[0], width=plan.stage2[1]),
                                  resized_to=dict(height=plan.target[0], width=plan.target[1]),
                                  latents=runs[-1]["latents"], recipe=plan.recipe())
    elif o.distilled:
        report["distilled"] = dict(recipe={k: v for k, v in ltx2_distilled_recipe().items() if "stage2" not in k})
    for i, (v, p) in enumerate(zip(videos, paths)):  # each file is written whole or not at all (q8lib.outputs)
        write_video(v, p, settings.frame_rate, None if audio is None else audio[i], rate)
    write_json(sidecar_for(out), report)
    if wb:
        t = report["results"]["timings"]
        wb.finish(paths[0] if paths else None, {f"timings/{k}": v for k, v in t.items()}, settings.frame_rate)
    return report


def compare(prompt: str, **options) -> dict:
    """The same seed and prompt embeddings through the unquantized and the Q8 transformer: a side-by-side
    mp4, per-frame PSNR/SSIM (JSON sidecar and a PNG plot); returns the report. ``options``: :class:`RunOptions`."""
    o = RunOptions(prompt=prompt, **options)
    run = _prepare(o, "compare", "outputs/q8lib_compare.mp4")
    settings, device, out, q8_config, runtime = run["settings"], run["device"], run["out"], run["q8_config"], run["runtime"]
    if not o.checkpoint:  # the Q8 conversion must be possible before anything loads, not after the bf16 run
        check_q8_config(transformer_config(o.model), q8_config, runtime)
    wb = WandbRun(o.wandb_project, "compare", dict(dataclasses.asdict(settings), model=o.model)) if o.wandb else None
    pipe, embeds, enc, load_s = _load(o, run, "bf16")
    info = pipe.q8lib_info
    ref_runs = _runs(pipe, settings, embeds, run["image"], o)
    # The same transformer in 8 bits: quantized in place (no second copy), or the given checkpoint.
    if o.checkpoint:
        pipe.register_modules(transformer=None)
        gc.collect()
        pipe.register_modules(transformer=load_transformer(info["model"], "q8", o.checkpoint, o.checkpoint_subfolder,
                                                           q8_config, device, run["dtype"], runtime=runtime))
    else:
        quantize_(pipe.transformer, q8_config, backend=runtime.backend, attention=runtime.attention, progress=not o.quiet)
        if o.offload != "none":  # quantized on the CPU, runs on the GPU: the fused blocks for that device
            install_if_fast(pipe.transformer, runtime, device=device)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    q8_runs = _runs(pipe, settings, embeds, run["image"], o)
    ref, q8 = ref_runs[-1]["frames"][0], q8_runs[-1]["frames"][0]
    per_frame = dict(psnr_db=[float(v) for v in psnr(ref, q8)], ssim=[float(v) for v in ssim(ref, q8)])
    plot = plot_metrics(per_frame, out.with_suffix(".png"),
                        title=f"{info['model']}: {info['dtype']} vs Q8 ({q8_config.weight_dtype})")
    finite = [v for v in per_frame["psnr_db"] if v != float("inf")]
    summary = dict(psnr_db_mean=statistics.mean(finite) if finite else float("inf"),
                   psnr_db_min=min(per_frame["psnr_db"]), ssim_mean=statistics.mean(per_frame["ssim"]),
                   ssim_min=min(per_frame["ssim"]), max_abs_diff=float((ref - q8).abs().max()))
    if ref_runs[-1]["audio"] is not None:  # LTX-2: how far the Q8 run's waveform is from the reference's
        summary["audio_relative_error"] = relative_error(q8_runs[-1]["audio"], ref_runs[-1]["audio"])
    ref_t, q8_t = _median_timings(ref_runs), _median_timings(q8_runs)
    report = dict(kind="q8lib compare", **environment(device), shape=_shape(pipe, settings),
                  settings=dataclasses.asdict(settings),
                  pipeline=dict(info, precision=f"{info['dtype']} vs q8", checkpoint=o.checkpoint,
                                weight_dtype=q8_config.weight_dtype, attention=runtime.attention, backend=run["backend"]),
                  results=dict(load_s=load_s, **enc, metrics=summary, per_frame=per_frame,
                               speedup={k: ref_t[f"{k}_s"] / q8_t[f"{k}_s"] if q8_t[f"{k}_s"] else None
                                        for k in ("transformer", "end_to_end")},
                               reference=dict(timings=ref_t, memory=ref_runs[-1]["memory"]),
                               q8=dict(timings=q8_t, memory=q8_runs[-1]["memory"]),
                               warmup_runs=o.warmup, repeats=o.repeats),
                  outputs=dict(video=None if o.no_video else str(out), plot=str(plot) if plot else None),
                  video_writer=None if o.no_video else video_writer())
    if not o.no_video:  # each file is written whole or not at all (q8lib.outputs)
        write_video(side_by_side(ref, q8), out, settings.frame_rate)
    write_json(sidecar_for(out), report)
    if wb:
        wb.finish(None if o.no_video else out, {f"metrics/{k}": v for k, v in summary.items()}, settings.frame_rate)
    return report


def convert_checkpoint(source: str, output: str | os.PathLike, subfolder: str | None = "transformer",
                       q8_config: Q8Config | None = None, device="cpu", local_files_only: bool | None = None,
                       seed: int = 0) -> dict:
    """Convert a bf16 LTX transformer (hub id, local dir, ``"tiny"``) to a q8lib checkpoint in ``output``.

    ``subfolder`` is dropped automatically for a local transformer directory (``config.json`` at
    its root). Returns a size report: bf16 bytes of the source weights, bytes of the written
    safetensors, parameter counts of converted and kept tensors.
    """
    q8_config = q8_config or Q8Config()
    source = MODEL_ALIASES.get(source, source)
    check_output_dir(output, "output folder")
    if Path(source).is_dir() and (Path(source) / "config.json").exists():
        subfolder = None
    check_q8_config(transformer_config(source, subfolder, local_files_only), q8_config, Q8Runtime())
    start = time.perf_counter()
    model = load_transformer(source, "bf16", device=device, dtype=torch.bfloat16, local_files_only=local_files_only,
                             seed=seed, subfolder=subfolder)  # bf16, as hub checkpoints are stored
    bf16_bytes = sum(t.numel() * 2 for t in model.state_dict().values() if t.is_floating_point())
    params = sum(t.numel() for t in model.state_dict().values())
    model = quantize_(model.to(device).eval(), q8_config)
    path = save_q8(model, output)
    q8_bytes = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    converted = sum(m.weight.numel() for m in model.modules() if isinstance(m, Q8Linear))
    return dict(source=source, output=str(path), weight_dtype=q8_config.weight_dtype,
                hadamard_block=q8_config.hadamard_block, params=params, params_8bit=converted,
                params_kept=params - converted, bf16_bytes=bf16_bytes, q8_bytes=q8_bytes,
                ratio=q8_bytes / bf16_bytes, seconds=time.perf_counter() - start)


def convert(source: str, output: str, subfolder: str | None = "transformer", weight_dtype: str = "auto",
            hadamard_block: int | None | str = "auto", device="auto", report: str | None = None) -> dict:
    """:func:`convert_checkpoint` with command-line values, after checking the output folder and the
    ``report`` JSON path (written too when given); returns the size report."""
    q8_config, _ = q8_options(weight_dtype, hadamard_block)
    check_output_dir(output, "output folder")
    if report:
        check_output_file(report, (".json",), "--report")
    rep = convert_checkpoint(source, output, subfolder=subfolder or None, q8_config=q8_config,
                             device=resolve_device(device))
    if report:
        write_json(Path(report), rep)
    return rep


def memory(model: str = "random-13b", precision: str = "q8", weight_dtype: str = "auto", attention: str = "fp8",
           backend: str = "auto", device="auto", frames: int = 81, height: int = 480, width: int = 704, batch: int = 2,
           repeats: int = 3, limit_gib: float | None = None, output: str | None = None,
           text_tokens: int | None = None) -> dict:
    """Transformer-only peak memory and forward time at one shape (:func:`~q8lib.app.measure.transformer_memory`:
    LTX-Video or LTX-2, whose audio tokens follow the video's duration; ``text_tokens`` default: the pipeline's
    prompt length, 128 or 1024) as a report (``results.fits`` says whether the peak fits under ``limit_gib``);
    written to ``output`` if given."""
    if output:
        check_output_file(output, (".json",), "--output")
    if limit_gib is not None and not limit_gib > 0:
        raise SettingsError(f"--limit-gib must be a positive number of GiB, got {limit_gib}")
    device = resolve_device(device)
    q8_config, runtime = q8_options(weight_dtype, None, backend, attention)
    rep = transformer_memory(MODEL_ALIASES.get(model, model), frames, height, width, batch, text_tokens,
                             repeats=repeats, precision=precision, q8_config=q8_config, device=device, runtime=runtime)
    report = dict(kind="q8lib memory", **environment(device), shape=rep.pop("shape"), results=rep)
    if limit_gib is not None and "peak_gib" in rep:
        rep["limit_gib"] = limit_gib
        rep["fits"] = rep["peak_gib"] <= limit_gib
    if output:
        write_json(Path(output), report)
    return report


def demo(seed: int = 0, batch: int = 2, weight_dtype: str = "int8", attention: str = "fp8") -> dict:
    """One forward of the tiny default's transformer in fp32 and in Q8 on the same random input
    (:func:`q8lib.models.dummy_inputs`, 3x8x8 latents, 16 text tokens): error, sizes, times, and the
    parameter/FLOP table (``inspect``)."""
    if batch < 1 or seed < 0:
        raise SettingsError(f"--batch must be >= 1 and --seed >= 0, got {batch} and {seed}")
    model = default_pipeline().transformer
    frames, height, width, text = 3, 8, 8, 16
    inputs = dummy_inputs(dict(model.config), batch, frames, height, width, text, seed=seed)

    def timed(m):
        start = time.perf_counter()
        with torch.no_grad():
            y = m(**inputs).sample
        return y, (time.perf_counter() - start) * 1e3

    ref, ms_ref = timed(model)
    q8 = quantize_(copy.deepcopy(model), Q8Config(weight_dtype=weight_dtype), attention=attention, progress=False)
    out, ms_q8 = timed(q8)
    return dict(inspect=inspect_transformer(model, num_tokens=frames * height * width, text_tokens=text, batch=batch),
                weight_dtype=weight_dtype, attention=attention, backend=q8._q8_runtime.backend,
                relative_error=relative_error(out, ref), cosine=cosine(out, ref), bytes_ref=module_bytes(model),
                bytes_q8=module_bytes(q8), ms_ref=ms_ref, ms_q8=ms_q8)
