"""Measuring a run: :func:`run_pipeline` (one generation, timed and with its peak memory),
:func:`transformer_memory` (the transformer alone at one shape: LTX-Video's or LTX-2's, video and audio tokens),
:func:`environment` (what ran where).

Transformer forwards are timed with CUDA events on GPUs (:class:`q8lib.timing.Spans`), without a
host sync inside the denoising loop; a CUDA out-of-memory error becomes
:class:`~q8lib.errors.GPUOutOfMemoryError` listing the memory options (:func:`oom_message`).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from ..bench.build import bench_inputs, outputs
from ..config import Q8Config, Q8Runtime
from ..errors import GPUOutOfMemoryError, SettingsError
from ..ltx2 import LTX2_CLASS_NAME, class_name_for_config
from ..models import dummy_inputs, latent_grid, module_bytes, param_count
from ..timing import Spans
from ..tiny.components import default_pipeline
from ..versions import package_versions
from .loading import load_transformer, transformer_config
from .pipelines import FAMILIES, call_arguments
from .settings import TINY, GenerationSettings, check_backend, check_precision, resolve_device, resolve_dtype

__all__ = ["oom_message", "run_pipeline", "transformer_memory", "environment"]


def oom_message(settings: GenerationSettings | None, device) -> str:
    what = (f" generating {settings.num_frames} frames at {settings.height}x{settings.width}"
            if settings is not None else "")
    free = ""
    if torch.cuda.is_available():
        free_b, total_b = torch.cuda.mem_get_info()
        free = f" ({free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free now)"
    return (f"out of GPU memory on {device}{what}{free}. Memory options: a smaller --height/--width or fewer "
            "--frames; --offload model (keeps idle components on the CPU) or --offload sequential (one module's "
            "weights on the GPU at a time, slow); --vae-tiling (decodes in tiles); "
            "--precision q8 (the 8-bit transformer needs about half the weight memory of bf16); "
            "--guidance 1 (no CFG halves the transformer batch).")


def run_pipeline(pipe, settings: GenerationSettings, embeds: dict, image=None, progress: bool = True,
                 extra: dict | None = None) -> dict:
    """Generate with ``pipe`` and measure. ``embeds``: the prompt embeddings as the pipeline takes them
    (:func:`~q8lib.app.prompts.encode_prompts`), or ``{}`` to have the pipeline's text encoder encode
    ``settings.prompt`` inside the timed call.

    ``image`` conditions the first frame (:func:`~q8lib.app.pipelines.call_arguments` passes it the way the
    pipeline takes it); ``extra``: more pipeline arguments, over these (the two-stage run's
    ``output_type="latent"``, ``latents``, ``denoise_strength``: :mod:`q8lib.app.upsample`; with
    ``output_type="latent"``, ``frames`` holds the latents). Returns ``{"frames": [N, F, 3, H, W] float32 CPU in [0, 1], "audio": [N, C, S] float32 CPU
    or None, "audio_sample_rate": int or None, "timings": {...}, "memory": {...}}`` (audio: LTX-2's waveform,
    ``C`` channels of ``S`` samples at the vocoder's output rate) where timings hold ``end_to_end_s`` (pipeline call: denoising + VAE decode, not loading),
    ``transformer_s`` (sum of transformer forwards, CUDA events on GPUs), ``transformer_forward_ms``
    (median per forward), ``vae_decode_s`` and the number of forwards.
    """
    device = pipe._execution_device
    gen = torch.Generator("cpu").manual_seed(settings.seed)  # the same noise on every device
    dtype = pipe.transformer.proj_in.weight.dtype  # kept in high precision in Q8 models too
    kwargs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in embeds.items()}
    if not kwargs:  # no embeddings: the pipeline's text encoder encodes the prompts (timed with the rest)
        kwargs.update(prompt=settings.prompt, negative_prompt=settings.negative_prompt)
    kwargs.update(height=settings.height, width=settings.width, num_frames=settings.num_frames,
                  frame_rate=settings.frame_rate, num_inference_steps=settings.num_inference_steps,
                  guidance_scale=settings.guidance_scale, generator=gen, output_type="pt",
                  num_videos_per_prompt=settings.num_videos_per_prompt,
                  max_sequence_length=settings.max_sequence_length)
    kwargs.update(call_arguments(pipe, settings, image))
    kwargs.update(extra or {})
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)
    cuda = device.type == "cuda"
    spans, decode = Spans(cuda), Spans(cuda)
    hooks = [pipe.transformer.register_forward_pre_hook(lambda m, a: spans.start()),
             pipe.transformer.register_forward_hook(lambda m, a, o: spans.stop())]
    vae_decode = pipe.vae.decode
    mem = {}

    def timed_decode(*a, **k):
        if cuda:
            mem["denoise_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        decode.start()
        out = vae_decode(*a, **k)
        decode.stop()
        if cuda:
            mem["decode_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return out

    pipe.vae.decode = timed_decode
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        mem["resident_gib"] = torch.cuda.memory_allocated(device) / 2**30
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = pipe(**kwargs)
        if cuda:
            torch.cuda.synchronize(device)
    except torch.OutOfMemoryError as e:
        raise GPUOutOfMemoryError(oom_message(settings, device)) from e
    finally:
        for h in hooks:
            h.remove()
        del pipe.vae.decode  # back to the class method
    total = time.perf_counter() - start
    fwd = spans.ms()
    dec = decode.ms()
    if cuda:
        mem["peak_gib"] = max(mem.get("denoise_peak_gib", 0), mem.get("decode_peak_gib", 0))
        mem["reserved_peak_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    mem["transformer_weights_gib"] = module_bytes(pipe.transformer) / 2**30
    timings = dict(end_to_end_s=total, transformer_s=sum(fwd) / 1e3,
                   transformer_forward_ms=statistics.median(fwd) if fwd else None, transformer_forwards=len(fwd),
                   vae_decode_s=sum(dec) / 1e3)
    audio = getattr(out, "audio", None)
    rate = pipe.vocoder.config.output_sampling_rate if audio is not None else None
    return dict(frames=out.frames.float().cpu(), audio=None if audio is None else audio.float().cpu(),
                audio_sample_rate=rate, timings=timings,
                memory={k: round(v, 3) for k, v in mem.items()})




# The prompt length of a memory measurement without ``text_tokens``: the pipeline's default max_sequence_length
# (LTXPipeline / LTXConditionPipeline: 128; LTX2Pipeline: 1024, padded to it: every token counts).
LTX_TEXT_TOKENS = 128


def transformer_memory(model: str = "random-13b", num_frames: int = 81, height: int = 480, width: int = 704,
                       batch: int = 2, text_tokens: int | None = None, repeats: int = 3, precision: str = "q8",
                       q8_config: Q8Config | None = None, device=None, seed: int = 0,
                       runtime: Q8Runtime | None = None) -> dict:
    """Transformer-only peak memory and forward time at one shape (random inputs, no VAE/text encoder).

    ``batch`` is the transformer batch (2 = one video with CFG); ``text_tokens`` (default: the pipeline's
    ``max_sequence_length``, 128 for LTX-Video, 1024 for LTX-2) the prompt length. LTX-Video's inputs:
    :func:`~q8lib.models.dummy_inputs`, the latent grid of the VAE (32x spatial, 8x temporal; the tiny default's
    own). LTX-2's (``LTX2VideoTransformer3DModel``): the benchmark's (:func:`q8lib.bench.build.bench_inputs`): the
    latent grid of the config's ``vae_scale_factors``, the audio tokens of the video's duration at 24 fps
    (:func:`q8lib.bench.build.audio_latent_frames`; 121 frames: 126) and the RoPE coordinates as ``LTX2Pipeline``
    passes them. On CUDA the peak is ``torch.cuda.max_memory_allocated`` over model build and ``repeats``
    forwards; forward times are CUDA-event medians after one warm-up forward. On CPU no peak is reported.
    """
    for name, v in (("batch", batch), ("repeats", repeats), ("text_tokens", text_tokens)):
        if name == "text_tokens" and v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise SettingsError(f"{name} must be a whole number >= 1, got {v!r}")
    check_precision(precision)
    cfg = transformer_config(model)  # before any weights load
    ltx2 = class_name_for_config(cfg) == LTX2_CLASS_NAME
    if text_tokens is None:
        text_tokens = FAMILIES["ltx2"].defaults["max_sequence_length"] if ltx2 else LTX_TEXT_TOKENS
    device = resolve_device(device)
    dtype = resolve_dtype(None, device)
    q8_config = q8_config or Q8Config()
    runtime = runtime or q8_config.runtime()
    backend = check_backend(precision, runtime.backend, device)
    spatial, temporal = 32, 8
    if model == TINY:
        vae = default_pipeline().vae
        spatial, temporal = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    s = GenerationSettings(prompt="x", num_frames=num_frames, height=height, width=width,
                           max_sequence_length=text_tokens).validate()
    try:
        lf, lh, lw = latent_grid(num_frames, height, width, cfg["vae_scale_factors"] if ltx2 else
                                 (temporal, spatial, spatial))
    except ValueError as e:
        raise SettingsError(str(e)) from None
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    transformer = load_transformer(model, precision, q8_config=q8_config, device=device, dtype=dtype, seed=seed,
                                   runtime=runtime)
    weights_gib = torch.cuda.memory_allocated(device) / 2**30 if cuda else None
    if ltx2:  # the benchmark's inputs (text of text_tokens, no padding: LTX-2's connectors hand over all-ones masks)
        inputs = bench_inputs(cfg, batch, lf, lh, lw, text_tokens, device, dtype)
    else:
        inputs = dummy_inputs(dict(transformer.config), batch, lf, lh, lw, text_tokens, seed=seed, device=device,
                              dtype=dtype, text_kept=text_tokens // 3)  # right padding, as T5 gives
    spans = Spans(cuda)
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                if i:
                    spans.start()
                y = outputs(transformer(**inputs))
                if i:
                    spans.stop()
    except torch.OutOfMemoryError as e:
        raise GPUOutOfMemoryError(oom_message(s, device)) from e
    fwd = spans.ms()
    shape = dict(frames=num_frames, height=height, width=width, transformer_batch=batch, latent=[lf, lh, lw],
                 video_tokens=lf * lh * lw, text_tokens=text_tokens)
    if ltx2:
        shape["audio_tokens"] = inputs["audio_num_frames"]
    out = dict(model=model, precision=precision, backend=backend, weight_dtype=q8_config.weight_dtype,
               attention=runtime.attention, device=str(device), dtype=str(dtype).replace("torch.", ""),
               shape=shape, params=param_count(transformer),
               forward_ms=fwd, forward_ms_median=statistics.median(fwd) if fwd else None,
               output_finite=all(bool(torch.isfinite(t).all()) for t in y.values()))
    out["transformer_weights_gib"] = round(module_bytes(transformer) / 2**30, 3)
    if cuda:
        out.update(weights_gib=round(weights_gib, 3), peak_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
                   reserved_peak_gib=round(torch.cuda.max_memory_reserved(device) / 2**30, 3))
    return out


def environment(device: torch.device | str | None = None) -> dict:
    """``device``, ``date`` (UTC) and ``versions`` for result JSON."""
    device = torch.device(device) if device is not None else resolve_device(None)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = package_versions("diffusers", "triton", "q8lib")
    del versions["cuda"]  # the device line says what runs
    return dict(device=name, date=datetime.now(timezone.utc).isoformat(timespec="seconds"), versions=versions)

