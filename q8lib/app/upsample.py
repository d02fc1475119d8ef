"""Two-stage generation with a latent upsampler (``q8lib generate --upsampler REPO_OR_DIR``) and LTX-2's distilled recipe
(``--distilled``).

LTX-Video 0.9.7 / 0.9.8 (``LTXConditionPipeline``) follow diffusers' documented recipe, the "LTX-Video 0.9.7 includes
a spatial latent upscaler" example of ``docs/source/en/api/pipelines/ltx_video.md`` (huggingface/diffusers; the
``LTXLatentUpsamplePipeline`` module in diffusers 0.42.1 has no example of its own):

1. generate at 2/3 of the requested size, rounded down to a multiple the pipeline and the VAE accept
   (``round_to_nearest_resolution_acceptable_by_vae``; ``LTXConditionPipeline`` also wants multiples of 32), with
   ``output_type="latent"``;
2. ``LTXLatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=...)(latents=..., output_type="latent")``: 2x the
   latent height and width;
3. denoise again at the upsampled size from those latents with ``denoise_strength=0.4`` of
   ``num_inference_steps=10`` (4 steps), the same prompt embeddings and image, a fresh generator of the same seed;
   both stages pass ``decode_timestep=0.05, decode_noise_scale=0.025, image_cond_noise_scale=0.0,
   guidance_rescale=0.7`` as the example does (guidance, frames and the stage-1 steps are the run's settings);
4. decode, then resize the frames to the requested size (the example's ``frame.resize``; here bicubic, antialiased).

The same pipeline object (its Q8 transformer) runs both denoising stages. With ``--cuda-graph`` the two stages are
two input signatures, so :class:`q8lib.cudagraph.CUDAGraphForward` captures one graph per stage (it keeps up to 8).
The distilled 0.9.7 / 0.9.8 recipes (custom timesteps, ``adain_factor``, tone mapping) are not applied.

LTX-2 distilled checkpoints (``--distilled``) follow diffusers' "Distilled checkpoint generation" example of
``docs/source/en/api/pipelines/ltx2.md`` (:func:`ltx2_distilled_recipe`): stage 1 at half the requested size with the
distilled sigmas (``DISTILLED_SIGMA_VALUES``, 8 steps) and every guide off (:data:`DISTILLED_GUIDES`), ``output_type=
"latent"`` (video and audio latents); ``LTX2LatentUpsamplePipeline`` 2x; stage 2 from the upsampled video latents and
stage 1's audio latents with ``STAGE_2_DISTILLED_SIGMA_VALUES`` (3 steps), ``noise_scale`` = their first value, guides
off; decode (video and audio).
The sigma values are read from ``diffusers.pipelines.ltx2.utils``, so they follow the installed diffusers.

LTX-2 *dev* checkpoints (``--stage2-lora``) follow the "Two-stages Generation" example of the same page
(:func:`ltx2_dev_recipe`): stage 1 with the run's own settings (the dev defaults: CFG, STG and modality guidance) at half
the requested size; ``LTX2LatentUpsamplePipeline`` 2x; stage 2 with the distilled LoRA (``ltx-2-19b-distilled-lora-384``)
enabled as adapter ``stage_2_distilled`` (weight 1; :func:`q8lib.lora.load_lora` onto the Q8 transformer, loaded once,
disabled in stage 1), the scheduler rebuilt with ``use_dynamic_shifting=False, shift_terminal=None``, and the distilled
stage-2 sigmas, re-noising and guides as above; the scheduler and the adapter state are restored after each run.
With that LoRA the dev model is the distilled one, so stage 2 turns every guide off (the example passes
``guidance_scale=1.0`` only). Not combined with ``--compile`` or ``--cuda-graph`` (switching the adapter between the
stages changes the transformer's forward under a captured graph or a compiled region), nor with ``--offload``
(adapters loaded into offloaded modules: untested).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelUnavailableError, SettingsError
from ..lora import load_lora
from .measure import run_pipeline
from .pipelines import Family
from .settings import GenerationSettings

__all__ = ["RECIPE", "UpsamplePlan", "plan_upsample", "load_upsampler", "run_two_stage", "ltx2_distilled_recipe",
           "ltx2_dev_recipe", "distilled_stage", "STAGE2_ADAPTER"]

# diffusers' ltx_video.md, LTX-Video 0.9.7 example: the values passed to each stage.
RECIPE = dict(source="diffusers docs/source/en/api/pipelines/ltx_video.md, 'LTX-Video 0.9.7 includes a spatial "
                     "latent upscaler' example (LTX-Video-0.9.7-dev + ltxv-spatial-upscaler-0.9.7)",
              downscale_factor=2 / 3, upsample_factor=2, stage2_steps=10, stage2_denoise_strength=0.4,
              both_stages=dict(decode_timestep=0.05, decode_noise_scale=0.025, image_cond_noise_scale=0.0,
                               guidance_rescale=0.7))
PIPELINE_MULTIPLE = 32  # LTXConditionPipeline / LTX2Pipeline check_inputs: height and width divisible by 32


def ltx2_distilled_recipe() -> dict:
    """diffusers' ltx2.md "Distilled checkpoint generation" example: the values passed to each stage (the sigmas from
    the installed diffusers' ``diffusers.pipelines.ltx2.utils``)."""
    from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES

    return dict(source="diffusers docs/source/en/api/pipelines/ltx2.md, 'Distilled checkpoint generation' example",
                downscale_factor=1 / 2, upsample_factor=2, guides=dict(DISTILLED_GUIDES),
                stage1_sigmas=list(DISTILLED_SIGMA_VALUES), stage2_sigmas=list(STAGE_2_DISTILLED_SIGMA_VALUES),
                stage2_noise_scale=STAGE_2_DISTILLED_SIGMA_VALUES[0])


STAGE2_ADAPTER = "stage_2_distilled"  # the adapter name of diffusers' example
STAGE2_SCHEDULER = dict(use_dynamic_shifting=False, shift_terminal=None)  # its stage-2 scheduler's changes


def ltx2_dev_recipe(lora: str | None, weight_name: str | None) -> dict:
    """diffusers' ltx2.md "Two-stages Generation" example (LTX-2 dev checkpoint, distilled LoRA in stage 2)."""
    r = ltx2_distilled_recipe()
    return dict(source="diffusers docs/source/en/api/pipelines/ltx2.md, 'Two-stages Generation' example",
                downscale_factor=1 / 2, upsample_factor=2, stage1="the run's settings (the dev checkpoint's defaults)",
                stage2_lora=lora, stage2_lora_weight=weight_name, stage2_adapter=STAGE2_ADAPTER,
                stage2_scheduler=dict(STAGE2_SCHEDULER), guides=r["guides"],
                stage2_sigmas=r["stage2_sigmas"], stage2_noise_scale=r["stage2_noise_scale"])


# Every guide off: one transformer call a step, as the distilled checkpoints are run. diffusers' example passes only
# guidance_scale=1.0, which with diffusers 0.42's LTX2Pipeline defaults (the LTX-2.5 reference: STG 1.0, modality
# isolation 3.0, audio guidance 7.0) would leave STG and modality guidance on: three calls a step (checked on the tiny
# LTX-2). "STG 0.0 (not 1.0) means disabled; all other guidance is disabled at 1.0" (ltx2.md).
DISTILLED_GUIDES = dict(guidance_scale=1.0, audio_guidance_scale=1.0, stg_scale=0.0, audio_stg_scale=0.0,
                        modality_scale=1.0, audio_modality_scale=1.0)


@dataclass(frozen=True)
class UpsamplePlan:
    """What a two-stage run does: the upsampler's source (``subfolder`` of it, or ``None``: the folder itself) and the
    stage sizes (stage 2 is ``upsample_factor`` x stage 1; the frames are resized to ``target`` at the end)."""

    upsampler: str
    subfolder: str | None
    target: tuple[int, int]
    stage1: tuple[int, int]
    stage2: tuple[int, int]
    # "ltx": LTX-Video 0.9.7/0.9.8 (RECIPE); "ltx2": an LTX-2 distilled checkpoint (ltx2_distilled_recipe());
    # "ltx2-dev": an LTX-2 dev checkpoint with the distilled LoRA in stage 2 (ltx2_dev_recipe())
    family: str = "ltx"
    stage2_lora: str | None = None  # ltx2-dev: the LoRA's file, folder or hub id ...
    stage2_lora_weight: str | None = None  # ... and its weight file name in a folder or repo

    def recipe(self) -> dict:
        if self.family == "ltx2-dev":
            return ltx2_dev_recipe(self.stage2_lora, self.stage2_lora_weight)
        return ltx2_distilled_recipe() if self.family == "ltx2" else RECIPE


def _upsampler_class(family: str):
    if family.startswith("ltx2"):
        from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

        return LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    return LTXLatentUpsamplerModel


def _upsampler_config(upsampler: str, family: str = "ltx") -> tuple[dict, str | None]:
    """The latent upsampler's ``config.json`` (config only): ``latent_upsampler/`` of an ``LTXLatentUpsamplePipeline``
    repo (``Lightricks/ltxv-spatial-upscaler-0.9.7``) or of an LTX-2 repo, or the folder/repo of the model itself."""
    example = "Lightricks/LTX-2 (its latent_upsampler/)" if family == "ltx2" else "Lightricks/ltxv-spatial-upscaler-0.9.7"
    errors = []
    for sub in ("latent_upsampler", None):
        try:
            return dict(_upsampler_class(family).load_config(upsampler, subfolder=sub)), sub
        except (OSError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise ModelUnavailableError(
        f"--upsampler {upsampler!r}: no latent upsampler config found (neither latent_upsampler/config.json nor "
        f"config.json; {errors[0]}). Pass a local folder or a hub id such as {example} "
        f"(download it with `huggingface-cli download` when offline)")


def _vae_spatial_ratio(model: str, family: str = "ltx") -> int:
    from diffusers import AutoencoderKLLTX2Video, AutoencoderKLLTXVideo

    cfg = (AutoencoderKLLTX2Video if family == "ltx2" else AutoencoderKLLTXVideo).load_config(model, subfolder="vae")
    if cfg.get("spatial_compression_ratio"):
        return int(cfg["spatial_compression_ratio"])
    return int(cfg.get("patch_size", 1) * 2 ** sum(cfg.get("spatio_temporal_scaling", ())))


def plan_upsample(upsampler: str, family: Family, model: str, settings: GenerationSettings,
                  transformer_config: dict, distilled: bool = False, stage2_lora: str | None = None,
                  stage2_lora_weight: str | None = None) -> UpsamplePlan:
    """Check a two-stage run before anything loads (config files only) and return its plan.

    :class:`SettingsError` when ``family`` has no upsampler recipe q8lib can run (LTX-Video 0.9.0-0.9.5 and the tiny
    default have no upsampler; LTX-2 dev checkpoints' recipe needs the distilled LoRA: LTX-2 runs two stages with
    ``distilled=True``, for its distilled checkpoints), when the upsampler's class or latent channels do not fit the
    transformer, or when the stage-1 size (2/3 of ``settings``' size for LTX-Video, 1/2 for LTX-2, rounded down) is
    below the multiple the pipeline and the VAE need."""
    if stage2_lora is None and stage2_lora_weight is not None:
        raise SettingsError("--stage2-lora-weight names the weight file of --stage2-lora: give --stage2-lora too")
    if family.name == "ltx2":
        if distilled and stage2_lora:
            raise SettingsError("--stage2-lora with --distilled: the distilled LoRA turns a dev checkpoint into the "
                                "distilled one; a distilled checkpoint runs stage 2 without it (drop --stage2-lora)")
        if distilled:
            return _plan(upsampler, "ltx2", model, settings, transformer_config)
        if stage2_lora:
            _check_lora_source(stage2_lora, stage2_lora_weight)
            return dataclasses.replace(_plan(upsampler, "ltx2", model, settings, transformer_config),
                                       family="ltx2-dev", stage2_lora=stage2_lora,
                                       stage2_lora_weight=stage2_lora_weight)
        raise SettingsError(
            "--upsampler with LTX-2 needs its stage-2 model: for a dev checkpoint the distilled LoRA, --stage2-lora "
            "Lightricks/LTX-2 --stage2-lora-weight ltx-2-19b-distilled-lora-384.safetensors (diffusers' ltx2.md, "
            "'Two-stages Generation'); for a distilled checkpoint --distilled ('Distilled checkpoint generation')")
    if stage2_lora:
        raise SettingsError(f"--stage2-lora is LTX-2's two-stage recipe; {model} is an {family.pipeline} model")
    if distilled:
        raise SettingsError(f"--distilled is LTX-2's distilled recipe; {model} is an {family.pipeline} model (the "
                            "distilled LTX-Video 0.9.7/0.9.8 recipes are not implemented)")
    if family.upsampler != "LTXLatentUpsamplerModel":
        raise SettingsError(
            f"--upsampler: {model} is a {family.pipeline} model (LTX-Video 0.9.0-0.9.5 or the tiny default), which "
            "has no latent upsampler; the two-stage recipe runs LTX-Video 0.9.7 / 0.9.8 (LTXConditionPipeline) models "
            "such as Lightricks/LTX-Video-0.9.7-dev")
    return _plan(upsampler, "ltx", model, settings, transformer_config)


def _check_lora_source(lora: str, weight_name: str | None) -> None:
    """A local LoRA source must exist (a hub id is checked when it loads, right after the pipeline)."""
    path = Path(lora).expanduser()
    local = path.exists() or lora.endswith(".safetensors") or lora.startswith((".", "/", "~"))
    if not local:
        return
    if not path.exists():
        raise SettingsError(f"--stage2-lora {lora!r}: no such file or folder")
    if path.is_dir() and not weight_name and not any(path.glob("*.safetensors")):
        raise SettingsError(f"--stage2-lora {lora!r}: the folder holds no .safetensors file")
    if path.is_dir() and weight_name and not (path / weight_name).is_file():
        raise SettingsError(f"--stage2-lora-weight {weight_name!r}: no such file in {lora}")


def _plan(upsampler: str, family: str, model: str, settings: GenerationSettings, transformer_config: dict):
    cfg, sub = _upsampler_config(upsampler, family)
    cls = _upsampler_class(family).__name__
    if cfg.get("_class_name") not in (None, cls):
        raise SettingsError(f"--upsampler {upsampler!r} holds a {cfg['_class_name']}, not an {cls} (what "
                            f"{model} needs)")
    channels = transformer_config.get("in_channels")
    if cfg.get("in_channels") != channels:
        raise SettingsError(f"--upsampler {upsampler!r} upsamples {cfg.get('in_channels')}-channel latents, but "
                            f"{model}'s transformer works on {channels}-channel latents: use the upsampler made for it")
    if cfg.get("spatial_upsample", True) is False:
        raise SettingsError(f"--upsampler {upsampler!r} is not a spatial upsampler (spatial_upsample=false)")
    multiple = math.lcm(PIPELINE_MULTIPLE, _vae_spatial_ratio(model, family))
    recipe = ltx2_distilled_recipe() if family == "ltx2" else RECIPE
    f, up = recipe["downscale_factor"], recipe["upsample_factor"]
    stage1 = tuple(int(v * f) - int(v * f) % multiple for v in (settings.height, settings.width))
    if min(stage1) < multiple:
        least = math.ceil(multiple / f / PIPELINE_MULTIPLE) * PIPELINE_MULTIPLE
        raise SettingsError(
            f"--upsampler: stage 1 runs at {'1/2' if family == 'ltx2' else '2/3'} of {settings.height}x"
            f"{settings.width} rounded down to a multiple of {multiple} (what the pipeline and the VAE accept), which "
            f"leaves {stage1[0]}x{stage1[1]}; --height and --width must be at least {least}")
    return UpsamplePlan(upsampler, sub, (settings.height, settings.width), stage1, (stage1[0] * up, stage1[1] * up),
                        family)


def load_upsampler(plan: UpsamplePlan, pipe):
    """``LTXLatentUpsamplePipeline`` (LTX-2: ``LTX2LatentUpsamplePipeline``) ``(vae=pipe.vae, latent_upsampler=...)``:
    the pipeline's own VAE (not a second copy from the upsampler repo), the upsampler on the pipeline's device in the
    VAE's dtype. ``ltx2-dev``: also the stage-2 LoRA onto ``pipe``'s transformer (adapter :data:`STAGE2_ADAPTER`,
    disabled until stage 2)."""
    from diffusers import LTX2LatentUpsamplePipeline, LTXLatentUpsamplePipeline

    if plan.family == "ltx2-dev":
        extra = {} if plan.stage2_lora_weight is None else dict(weight_name=plan.stage2_lora_weight)
        load_lora(pipe, plan.stage2_lora, adapter_name=STAGE2_ADAPTER, **extra)
        pipe.disable_lora()

    model = _upsampler_class(plan.family).from_pretrained(plan.upsampler, subfolder=plan.subfolder,
                                                          dtype=pipe.vae.dtype)
    model = model.to(pipe._execution_device).eval()
    cls = LTX2LatentUpsamplePipeline if plan.family.startswith("ltx2") else LTXLatentUpsamplePipeline
    return cls(vae=pipe.vae, latent_upsampler=model)


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    n, f = frames.shape[:2]
    out = torch.nn.functional.interpolate(frames.flatten(0, 1), size=size, mode="bicubic", antialias=True,
                                          align_corners=False)
    return out.clamp(0, 1).view(n, f, *out.shape[1:])


def run_two_stage(pipe, up, plan: UpsamplePlan, settings: GenerationSettings, embeds: dict, image=None,
                  progress: bool = True) -> dict:
    """One two-stage generation (the module's recipe), measured: :func:`~q8lib.app.measure.run_pipeline`'s result
    (frames at the requested size, ``audio`` ``None``) whose timings sum both stages and the upsampling and also
    hold each stage's own (``stage1_*``, ``upsample_s``, ``stage2_*``); ``latents`` gives the latent shapes. LTX-2
    (``plan.family`` ``ltx2``, ``ltx2-dev``): the distilled or the dev recipe, stage 1's audio latents carried into stage 2."""
    ltx2 = plan.family.startswith("ltx2")
    if ltx2:  # stage 1: the distilled recipe's, or (dev checkpoint) the run's own settings
        s1_extra = dict(distilled_stage(1) if plan.family == "ltx2" else {}, output_type="latent")
    else:
        both = RECIPE["both_stages"]
        s1_extra = dict(both, output_type="latent")
    s1 = dataclasses.replace(settings, height=plan.stage1[0], width=plan.stage1[1])
    first = run_pipeline(pipe, s1, embeds, image, progress, extra=s1_extra)
    latents = first["frames"].to(pipe._execution_device)
    start = time.perf_counter()
    with torch.no_grad():
        upsampled = up(latents=latents, output_type="latent").frames
    if latents.device.type == "cuda":
        torch.cuda.synchronize(latents.device)
    upsample_s = time.perf_counter() - start
    if ltx2:
        stage2 = distilled_stage(2)
        s2 = dataclasses.replace(settings, height=plan.stage2[0], width=plan.stage2[1],
                                 num_inference_steps=stage2["num_inference_steps"],
                                 guidance_scale=stage2["guidance_scale"])
        extra = dict(stage2, latents=upsampled, audio_latents=first["audio"].to(pipe._execution_device))
    else:
        s2 = dataclasses.replace(settings, height=plan.stage2[0], width=plan.stage2[1],
                                 num_inference_steps=RECIPE["stage2_steps"])
        extra = dict(both, latents=upsampled, denoise_strength=RECIPE["stage2_denoise_strength"])
    with _stage2_model(pipe, plan):
        second = run_pipeline(pipe, s2, embeds, image, progress, extra=extra)
    t1, t2 = first["timings"], second["timings"]
    timings = dict(end_to_end_s=t1["end_to_end_s"] + upsample_s + t2["end_to_end_s"],
                   transformer_s=t1["transformer_s"] + t2["transformer_s"],
                   transformer_forwards=t1["transformer_forwards"] + t2["transformer_forwards"],
                   vae_decode_s=t2["vae_decode_s"], upsample_s=upsample_s,
                   **{f"stage1_{k}": v for k, v in t1.items() if k != "vae_decode_s"},
                   **{f"stage2_{k}": v for k, v in t2.items()})
    memory = {f"stage{i}_{k}": v for i, r in ((1, first), (2, second)) for k, v in r["memory"].items()}
    return dict(second, frames=_resize(second["frames"], plan.target), timings=timings, memory=memory,
                latents=dict(stage1=list(latents.shape), upsampled=list(upsampled.shape)),
                stage2_frames_shape=list(second["frames"].shape))


def distilled_stage(stage: int) -> dict:
    """The LTX2Pipeline arguments of the distilled recipe's ``stage`` (1: also a one-stage distilled run; 2: the
    refinement of upsampled latents): sigmas, their number of steps, guidance 1 (and stage 2's re-noising)."""
    r = ltx2_distilled_recipe()
    sigmas = r["stage1_sigmas"] if stage == 1 else r["stage2_sigmas"]
    out = dict(r["guides"], sigmas=sigmas, num_inference_steps=len(sigmas))
    if stage == 2:
        out["noise_scale"] = r["stage2_noise_scale"]
    return out


@contextlib.contextmanager
def _stage2_model(pipe, plan: UpsamplePlan):
    """``ltx2-dev``: the distilled LoRA enabled and the example's stage-2 scheduler for the block; the adapter disabled
    and the pipeline's scheduler back after it, also when the stage fails. Other plans: nothing."""
    if plan.family != "ltx2-dev":
        yield
        return
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **STAGE2_SCHEDULER)
    pipe.enable_lora()
    try:
        yield
    finally:
        pipe.disable_lora()
        pipe.scheduler = scheduler
