"""Which diffusers pipeline runs a model, and what that pipeline needs beyond LTX-Video 0.9.x's arguments.

A model folder or hub repo names its pipeline in ``model_index.json`` (``_class_name``) and its transformer in
``transformer/config.json``; :func:`model_family` reads both (config files only, no weights) and returns a
:class:`Family`:

* ``"ltx"``: LTX-Video 0.9.0-0.9.5 (``LTXPipeline``): ``LTXPipeline``, or ``LTXImageToVideoPipeline`` with an image;
  also the tiny default and the ``random-2b`` / ``random-13b`` models;
* ``"ltx-condition"``: LTX-Video 0.9.7 / 0.9.8 (``LTXConditionPipeline``, diffusers' pipeline for them): the same
  pipeline with or without an image, which conditions frame 0; a latent upsampler ships separately
  (``Lightricks/ltxv-spatial-upscaler-0.9.7``), run in two stages by ``generate --upsampler``
  (:mod:`q8lib.app.upsample`);
* ``"ltx2"``: LTX-2 (``LTX2Pipeline``; video and audio): ``LTX2Pipeline``, or ``LTX2ImageToVideoPipeline`` with an
  image; a folder saved from ``LTX2ConditionPipeline`` keeps that pipeline (the image becomes an
  ``LTX2VideoCondition`` at frame 0). Its latent upsampler is the repo's ``latent_upsampler/`` folder. Also
  ``random-ltx2`` (full-size random components).

:func:`call_arguments` gives the per-family keyword arguments of one generation; :func:`check_family_packages`
raises, before anything loads, when a package the family's outputs need (PyAV for LTX-2's audio) is missing.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from ..errors import MissingPackageError, ModelUnavailableError, SettingsError
from ..ltx2 import LTX2_CLASS_NAME, LTX_CLASS_NAME
from .settings import MODEL_ALIASES, RANDOM_MODELS, TINY, GenerationSettings

__all__ = ["Family", "FAMILIES", "PIPELINE_FAMILIES", "model_family", "family_from_index", "pipeline_class",
           "call_arguments", "check_family_packages", "model_not_available"]


@dataclass(frozen=True)
class Family:
    """A kind of LTX model: the diffusers classes that run it and what its runs need.

    ``pipeline`` is the ``_class_name`` of the model's ``model_index.json`` (the pipeline it was saved from);
    ``transformer`` the transformer class it must hold; ``audio``: its pipeline returns a waveform too;
    ``upsampler``: the latent upsampler class the model is used with (``None``: none exists); ``defaults``:
    generation settings of its model card that differ from LTX-Video 0.9.x's."""

    name: str
    pipeline: str
    transformer: str
    audio: bool = False
    upsampler: str | None = None
    defaults: dict = field(default_factory=dict)


# The pipeline named in model_index.json -> the family of the model (what q8lib runs it with).
PIPELINE_FAMILIES = {"LTXPipeline": "ltx", "LTXImageToVideoPipeline": "ltx", "LTXConditionPipeline": "ltx-condition",
                     "LTX2Pipeline": "ltx2", "LTX2ImageToVideoPipeline": "ltx2", "LTX2ConditionPipeline": "ltx2"}
# LTX-2's model card: 121 frames at 512x768, 40 steps, guidance 4, 1024 prompt tokens (LTX2Pipeline's default).
_LTX2_DEFAULTS = dict(num_frames=121, height=512, width=768, num_inference_steps=40, guidance_scale=4.0,
                      max_sequence_length=1024)
FAMILIES = {
    "ltx": Family("ltx", "LTXPipeline", LTX_CLASS_NAME),
    "ltx-condition": Family("ltx-condition", "LTXConditionPipeline", LTX_CLASS_NAME, upsampler="LTXLatentUpsamplerModel"),
    "ltx2": Family("ltx2", "LTX2Pipeline", LTX2_CLASS_NAME, audio=True, upsampler="LTX2LatentUpsamplerModel",
                   defaults=_LTX2_DEFAULTS),
}


def model_not_available(model: str, err: Exception) -> ModelUnavailableError:
    """The error for a hub/local model that could not be loaded (``err``), saying how to get it or what to use offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    how = ("HF_HUB_OFFLINE is set, so nothing is downloaded: unset it (with network access) or download first with "
           f"`huggingface-cli download {model}`" if offline else
           f"check the id and your network, or download with `huggingface-cli download {model}` and pass the folder")
    return ModelUnavailableError(
        f"could not load the LTX-Video model {model!r} ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
        f"{how}. Without weights, use --model tiny: the embedded tiny LTX default that runs offline on a CPU "
        "(or random-2b / random-13b for full-size random weights).")


def family_from_index(model: str, pipeline_name: str | None, transformer_name: str | None) -> Family:
    """The family of a model whose ``model_index.json`` names ``pipeline_name`` and whose transformer
    ``config.json`` names ``transformer_name``; :class:`SettingsError` when q8lib runs no such pipeline or the two
    do not belong together. The returned family's ``pipeline`` is ``pipeline_name``."""
    if pipeline_name not in PIPELINE_FAMILIES:
        raise SettingsError(f"{model} holds a {pipeline_name or 'folder without model_index.json'}; q8lib runs "
                            f"{', '.join(PIPELINE_FAMILIES)} models (LTX-Video 0.9.x, 0.9.7/0.9.8 and LTX-2). A "
                            "transformer folder alone is converted with `q8lib convert`, not run")
    family = FAMILIES[PIPELINE_FAMILIES[pipeline_name]]
    if transformer_name != family.transformer:
        raise SettingsError(f"{model}: its model_index.json names {pipeline_name}, which runs a {family.transformer}, "
                            f"but transformer/config.json describes a {transformer_name}")
    return Family(family.name, pipeline_name, family.transformer, family.audio, family.upsampler, family.defaults)


def model_family(model: str, local_files_only: bool | None = None) -> Family:
    """The family of ``model`` (tiny, random-*, an alias, a hub id or a local pipeline folder), read from its
    ``model_index.json`` and ``transformer/config.json`` only. :class:`~q8lib.errors.ModelUnavailableError` when
    they cannot be read (offline and not downloaded, wrong id), :class:`SettingsError` for other pipelines."""
    model = MODEL_ALIASES.get(model, model)
    if model == TINY:
        return FAMILIES["ltx"]
    if model in RANDOM_MODELS:
        return FAMILIES[RANDOM_MODELS[model].family]
    from diffusers import DiffusionPipeline, LTXVideoTransformer3DModel

    try:
        index = DiffusionPipeline.load_config(model, local_files_only=local_files_only)
        transformer = LTXVideoTransformer3DModel.load_config(model, subfolder="transformer",
                                                             local_files_only=local_files_only)
    except OSError as e:
        raise model_not_available(model, e) from None
    return family_from_index(model, index.get("_class_name"), transformer.get("_class_name"))


def pipeline_class(family: Family, image_to_video: bool = False):
    """The diffusers pipeline class that generates with ``family``'s model (with a first-frame image or not)."""
    import diffusers

    if family.name == "ltx":
        return diffusers.LTXImageToVideoPipeline if image_to_video else diffusers.LTXPipeline
    if family.name == "ltx-condition":
        return diffusers.LTXConditionPipeline
    if family.pipeline == "LTX2ConditionPipeline":
        return diffusers.LTX2ConditionPipeline
    return diffusers.LTX2ImageToVideoPipeline if image_to_video else diffusers.LTX2Pipeline


def call_arguments(pipe, settings: GenerationSettings, image=None) -> dict:
    """What one generation passes to ``pipe`` besides the prompts, sizes, steps, guidance and generator, by pipeline:

    * the image: ``image=`` for ``LTXImageToVideoPipeline``, ``LTX2ImageToVideoPipeline`` and
      ``LTXConditionPipeline`` (which conditions frame 0 on it), ``conditions=[LTX2VideoCondition(image, index=0)]``
      for ``LTX2ConditionPipeline``;
    * LTX-2: ``audio_guidance_scale=1`` when ``settings`` turn classifier-free guidance off (diffusers' audio
      default, 7, would run the negative prompt anyway, and its embeddings were not computed); with guidance on,
      diffusers' LTX-2 defaults stay (audio guidance 7, STG and modality guidance).
    """
    name = type(pipe).__name__
    out = {}
    if image is not None:
        if name == "LTX2ConditionPipeline":
            from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

            out["conditions"] = [LTX2VideoCondition(frames=image, index=0)]
        elif name in ("LTXPipeline", "LTX2Pipeline"):
            raise SettingsError(f"{name} is text-to-video: load the pipeline with image_to_video=True for an image")
        else:
            out["image"] = image
    if name.startswith("LTX2") and not settings.cfg:
        out["audio_guidance_scale"] = 1.0
    return out


def check_family_packages(family: Family, write_video: bool, image: bool = False) -> None:
    """Raise :class:`MissingPackageError` (before any model loads) when ``family``'s run needs a package that is
    not installed: PyAV (``av``) writes LTX-2's audio into the mp4 (diffusers' ``encode_video``) and re-encodes an
    LTX-2 conditioning image the way the model was trained (H.264, diffusers' ``apply_image_conditioning_crf``)."""
    if not family.audio or importlib.util.find_spec("av") is not None:
        return
    needs = [w for w, on in (("writing the video with its audio track", write_video),
                             ("re-encoding the conditioning image", image)) if on]
    if needs:
        raise MissingPackageError(f"LTX-2 needs PyAV for {' and '.join(needs)}: pip install 'q8lib[ltx2]' (or pip "
                                  "install av)" + (", or pass --no-video to measure without writing the mp4"
                                                   if write_video and not image else ""))
