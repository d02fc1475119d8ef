"""Building what runs: an LTX pipeline (or its transformer alone) with a Q8 or an unquantized transformer.

:func:`load_pipeline` builds the diffusers pipeline the model's ``model_index.json`` names
(:mod:`q8lib.app.pipelines`: ``LTXPipeline`` / ``LTXImageToVideoPipeline``, ``LTXConditionPipeline`` for
0.9.7/0.9.8, ``LTX2Pipeline`` / ``LTX2ImageToVideoPipeline`` for LTX-2) from

* ``"tiny"``: the embedded tiny default (:func:`q8lib.tiny.default_pipeline`), CPU, offline;
* a hub id or local directory in diffusers' layout (``"Lightricks/LTX-Video"``, the 13B
  ``"Lightricks/LTX-Video-0.9.7-dev"``, ``"Lightricks/LTX-2"``), whose bf16 transformer
  (``LTXVideoTransformer3DModel`` or ``LTX2VideoTransformer3DModel``, as its ``config.json`` says) is converted
  on the fly;
* ``"random-2b"`` / ``"random-13b"`` / ``"random-ltx2"``: full-size architectures with random weights and no text
  encoder, for speed and memory measurements (the 13B and LTX-2 Q8 transformers are built directly in 8 bits,
  never as a bf16 copy; LTX-2 with its video/audio VAEs, vocoder and text connectors);

with the transformer replaced by a q8lib checkpoint (or the earlier public Q8 layout) when
``checkpoint`` is given.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..checkpoint import load_q8
from ..config import Q8Config, Q8Runtime
from ..convert import activate_q8, build_q8_skeleton, check_q8_config, quantize_
from ..cudagraph import enable_cuda_graphs
from ..errors import SettingsError
from ..fused import install_if_fast
from ..ltx2 import class_name_for_config, transformer_classes
from ..models import T5_XXL_CONFIG
from ..modules import Q8Linear
from ..quant import QMAX
from ..text_encoder import quantize_text_encoder_
from ..tiny.components import SHAPES_DIR, default_pipeline, has_default_pipeline, make_tiny_tokenizer
from .pipelines import model_family, model_not_available, pipeline_class
from .prompts import text_encoder_id_of, text_encoder_suffix, weights_id
from .settings import (MODEL_ALIASES, RANDOM_MODELS, TINY, check_backend, check_cuda_graph, check_offload,
                       check_precision, resolve_device, resolve_dtype)

__all__ = ["load_pipeline", "load_transformer", "transformer_config", "random_q8_transformer", "placeholder_text_encoder",
           "model_not_available"]


def _ltx():
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel


def random_q8_transformer(config: dict, q8_config: Q8Config | None = None, device="cpu", dtype=torch.bfloat16,
                          seed: int = 0, runtime: Q8Runtime | None = None):
    """A Q8 LTX transformer (``LTXVideoTransformer3DModel`` or LTX-2's, as ``config`` says) with random weights
    built directly in 8 bits (no bf16 copy).

    The model is built on the meta device, its blocks swapped to Q8 skeletons, then every tensor is
    allocated on ``device``: 8-bit weights uniform over the code range with per-channel scales that
    give ``W`` a std of ``1/sqrt(K)``, other weights and tables random with the same std, norm
    weights one, biases zero. Peak memory is the Q8 model itself (13B: ~13 GB, not ~26 GB in bf16).
    """
    q8_config = q8_config or Q8Config()
    runtime = runtime or q8_config.runtime()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model = build_q8_skeleton(config, q8_config, runtime)

    def rand(shape, std):  # generated on the CPU in chunks of rows, so it is seed-stable and small
        return (torch.randn(shape, generator=gen) * std)

    for mod in model.modules():
        for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            if t is None or not t.is_meta:
                continue
            if isinstance(mod, Q8Linear) and name == "weight":
                qmax = int(QMAX[t.dtype])
                if t.dtype == torch.int8:
                    new = torch.randint(-qmax, qmax + 1, t.shape, dtype=torch.int8, device=device)
                else:
                    new = (torch.rand(t.shape, device=device) * 2 - 1).mul_(qmax).to(t.dtype)
            elif isinstance(mod, Q8Linear) and name == "scales":
                k, qmax = mod.in_features, QMAX[mod.qdtype]
                new = torch.full(t.shape, math.sqrt(3.0) / (qmax * math.sqrt(k)), dtype=t.dtype, device=device)
            elif name == "bias":
                new = torch.zeros(t.shape, dtype=t.dtype if isinstance(mod, Q8Linear) else dtype, device=device)
            elif t.ndim == 1 and name == "weight":
                new = torch.ones(t.shape, dtype=dtype, device=device)
            else:
                new = rand(t.shape, 1 / math.sqrt(t.shape[-1])).to(device=device, dtype=dtype)
            if isinstance(t, torch.nn.Parameter):
                mod._parameters[name] = torch.nn.Parameter(new, requires_grad=False)
            else:
                mod._buffers[name] = new
    model.eval()
    activate_q8(model, q8_config, runtime)
    return model


def placeholder_text_encoder(device="cpu", dtype=torch.bfloat16, seed: int = 0, max_length: int = 128):
    """``(tokenizer, text_encoder)``: a T5 encoder of LTX-Video's size (T5-XXL, :data:`~q8lib.models.T5_XXL_CONFIG`:
    4.76B parameters, 9.5 GB in bf16) with random weights, and a word-level tokenizer built in code.

    For measurements without downloads: the pipeline holds and runs a component of the real size (the CPU
    offloads move it), though its embeddings mean nothing. Built on the meta device, then allocated once on
    ``device`` in ``dtype``; linear weights have std ``1/sqrt(fan_in)``, norms are one.
    """
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        encoder = T5EncoderModel(T5Config(**T5_XXL_CONFIG)).to(dtype)
    encoder = encoder.to_empty(device=device).eval()
    encoder.encoder.embed_tokens = encoder.shared  # one embedding table, as in a loaded T5
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
    return make_tiny_tokenizer(max_length=max_length), encoder


def _random_components(name: str, precision: str, q8_config: Q8Config, runtime: Q8Runtime, device, dtype, seed: int,
                       need_others=True):
    """``(other components, transformer)`` of the catalogue model ``name`` at full size with random weights: the
    pipeline's other components (:func:`_random_others`) and the transformer (built directly in 8 bits where the
    catalogue says so)."""
    entry = RANDOM_MODELS[name]
    torch.manual_seed(seed)
    others = _random_others(entry, device, dtype, seed) if need_others else {}
    if precision == "q8" and entry.q8_directly:
        return others, random_q8_transformer(entry.transformer_config, q8_config, device, dtype, seed, runtime)
    cls = transformer_classes()[class_name_for_config(entry.transformer_config)]
    with torch.device(device):
        transformer = cls(**entry.transformer_config).to(dtype).eval()
    if precision == "q8":
        quantize_(transformer, q8_config, backend=runtime.backend, attention=runtime.attention)
    return others, transformer


def _random_others(entry, device, dtype, seed: int) -> dict:
    """The pipeline components besides the transformer and the text encoder, random: LTX-Video's VAE (diffusers'
    defaults), or LTX-2's video and audio VAEs, vocoder and text connectors (configs in the catalogue entry)."""
    if entry.family != "ltx2":
        return {"vae": _random_vae(device, dtype, seed)}
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    classes = dict(vae=AutoencoderKLLTX2Video, audio_vae=AutoencoderKLLTX2Audio, vocoder=LTX2Vocoder,
                   connectors=LTX2TextConnectors)
    torch.manual_seed(seed)
    with torch.device(device):
        return {k: _to(classes[k](**cfg), None, dtype).eval() for k, cfg in entry.components.items()}


def _ltx_scheduler():
    """The flow-matching scheduler with the settings of the LTX-Video hub repo."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                           base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


def transformer_config(model: str, subfolder: str | None = "transformer", local_files_only: bool | None = None) -> dict:
    """The transformer's ``config.json`` of ``model`` (tiny, random-*, hub id or folder) without loading weights."""
    model = MODEL_ALIASES.get(model, model)
    if model == TINY:
        if not has_default_pipeline():
            default_pipeline()  # raises TinyDefaultMissingError, which says what to do
        return json.loads((SHAPES_DIR / "transformer" / "config.json").read_text())
    if model in RANDOM_MODELS:
        return dict(RANDOM_MODELS[model].transformer_config)
    if Path(model).is_dir() and (Path(model) / "config.json").exists() and not (Path(model) / "model_index.json").exists():
        subfolder = None
    try:
        cfg = dict(_ltx().load_config(model, subfolder=subfolder, local_files_only=local_files_only))
    except OSError as e:
        raise model_not_available(model, e) from None
    if Q8Config.is_quantization_config(cfg.get("quantization_config")):  # saved after q8lib.quantize_
        sub = " --checkpoint-subfolder " + subfolder if subfolder else ""
        raise SettingsError(f"{model} holds a transformer that q8lib already quantized (its config.json names q8lib), "
                            f"which needs no conversion: run it with --checkpoint {model}{sub}, or load it in Python "
                            "with q8lib.load_pipeline_q8 / q8lib.load_q8")
    return cfg


def load_transformer(model: str, precision: str = "q8", checkpoint: str | None = None,
                     checkpoint_subfolder: str | None = None, q8_config: Q8Config | None = None,
                     device="cpu", dtype=torch.bfloat16, local_files_only: bool | None = None, seed: int = 0,
                     runtime: Q8Runtime | None = None, subfolder: str | None = "transformer"):
    """The transformer alone: a Q8 checkpoint, on-the-fly Q8 conversion of ``model``'s, or ``model``'s unquantized.

    ``runtime`` (default ``q8_config.runtime()``) gives the Q8 transformer's backend and attention;
    ``subfolder`` is where a hub/local pipeline keeps its transformer (``None``: ``model`` is the transformer folder).
    """
    q8_config = q8_config or Q8Config()
    runtime = runtime or q8_config.runtime()
    rt = dict(backend=runtime.backend, attention=runtime.attention)
    if checkpoint is not None:
        if precision != "q8":
            raise SettingsError("a Q8 --checkpoint was given with --precision bf16; drop one of them")
        return load_q8(checkpoint, subfolder=checkpoint_subfolder, device=device, torch_dtype=dtype,
                       local_files_only=local_files_only, **rt)
    if model == TINY:
        transformer = _to(default_pipeline().transformer, device, dtype)
        return quantize_(transformer, q8_config, progress=False, **rt) if precision == "q8" else transformer
    if model in RANDOM_MODELS:
        return _random_components(model, precision, q8_config, runtime, device, dtype, seed, need_others=False)[1]
    cls = transformer_classes()[class_name_for_config(transformer_config(model, subfolder, local_files_only))]
    try:  # LTXVideoTransformer3DModel or LTX2VideoTransformer3DModel, as its config.json says
        transformer = cls.from_pretrained(model, subfolder=subfolder, dtype=dtype, local_files_only=local_files_only)
    except OSError as e:
        raise model_not_available(model, e) from e
    transformer = transformer.to(device).eval()
    return quantize_(transformer, q8_config, **rt) if precision == "q8" else transformer


def load_pipeline(
    model: str = TINY,
    *,
    precision: str = "q8",
    checkpoint: str | None = None,
    checkpoint_subfolder: str | None = None,
    image_to_video: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    q8_config: Q8Config | None = None,
    runtime: Q8Runtime | None = None,
    load_text_encoder: bool = True,
    offload: str = "none",
    vae_tiling: bool = False,
    local_files_only: bool | None = None,
    seed: int = 0,
    compile: bool = False,
    cuda_graph: bool = False,
    full_size_text_encoder: bool = False,
    text_encoder_precision: str = "bf16",
):
    """Build an LTX pipeline whose transformer is Q8 (``precision="q8"``) or unquantized (``"bf16"``).

    The pipeline class follows the model's ``model_index.json`` and transformer ``config.json``
    (:func:`~q8lib.app.pipelines.model_family`): ``LTXPipeline`` / ``LTXImageToVideoPipeline`` for LTX-Video
    0.9.0-0.9.5, ``LTXConditionPipeline`` for 0.9.7 / 0.9.8, ``LTX2Pipeline`` / ``LTX2ImageToVideoPipeline`` (or
    ``LTX2ConditionPipeline`` for a folder saved from it) for LTX-2.

    Args:
        model: ``"tiny"``, ``"random-2b"``, ``"random-13b"``, an alias (``"ltx-2b"``, ``"ltx-13b"``),
            a hub id such as ``"Lightricks/LTX-Video"``, ``"Lightricks/LTX-Video-0.9.7-dev"``,
            ``"Lightricks/LTX-2"``, or a local diffusers pipeline directory.
        checkpoint: a q8lib checkpoint or the earlier public Q8 layout (local dir or hub id) that
            replaces ``model``'s transformer; without it a Q8 transformer is converted on the fly.
        q8_config, runtime: the weight format of an on-the-fly conversion and the Q8 transformer's
            backend/attention (default ``q8_config.runtime()``).
        image_to_video: the run conditions on a first-frame image (``LTXImageToVideoPipeline`` instead of
            ``LTXPipeline``, ``LTX2ImageToVideoPipeline`` instead of ``LTX2Pipeline``; condition pipelines take it).
        load_text_encoder: ``False`` skips T5 (use cached prompt embeddings, see :class:`PromptCache`).
        offload: ``"none"``, ``"model"`` (diffusers' ``enable_model_cpu_offload``: one component on the GPU at a
            time) or ``"sequential"`` (``enable_sequential_cpu_offload``: one module's weights at a time, the
            least memory and the slowest); the components are built on the CPU (:mod:`q8lib.offload`).
        vae_tiling: decode the video in tiles (less memory at large resolutions).
        compile: regional ``torch.compile`` of the transformer (fullgraph on the repeated block).
        cuda_graph: replay each transformer forward from one CUDA graph (:mod:`q8lib.cudagraph`;
            GPU only, not with offload): removes the host cost of launching the Q8 kernels, which
            otherwise leaves the GPU idle for a large share of each forward. LTX-2's pipelines call the
            transformer three times a step (CFG batch, STG pass, modality-isolation pass): three graphs, each
            captured once and replayed at every step.
        full_size_text_encoder: ``random-*`` models only: add a T5 encoder of the real size with random
            weights (:func:`placeholder_text_encoder`), so memory measurements see the component a real
            pipeline holds; without it they have no text encoder (random prompt embeddings).
        text_encoder_precision: ``"bf16"`` (the text encoder as loaded, in ``dtype``) or ``"q8"``: the linears of its
            layers in 8 bits (:func:`q8lib.text_encoder.quantize_text_encoder_`, ``q8_config.weight_dtype``), right
            after it loads; the prompt cache keys its embeddings apart from the unquantized encoder's.
    Returns:
        the pipeline, on ``device``, with ``pipe.q8lib_info`` describing what was loaded.
    """
    model = MODEL_ALIASES.get(model, model)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    check_precision(precision)
    check_offload(offload, device, compile)
    if text_encoder_precision not in ("bf16", "q8"):
        raise SettingsError(f"text_encoder_precision (--text-encoder-precision) must be 'bf16' or 'q8', got "
                            f"{text_encoder_precision!r}")
    if text_encoder_precision == "q8" and model in RANDOM_MODELS and not full_size_text_encoder:
        raise SettingsError(f"{model} has no text encoder (random prompt embeddings) to run in 8 bits; drop "
                            "--text-encoder-precision q8")
    if full_size_text_encoder and model not in RANDOM_MODELS:
        raise SettingsError(f"full_size_text_encoder is for the random-* models; {model!r} loads its own text encoder")
    if full_size_text_encoder and RANDOM_MODELS[model].family != "ltx":
        raise SettingsError(f"{model} has no stand-in for its text encoder (LTX-2's is Gemma-3 12B): drop "
                            "full_size_text_encoder (--full-size-text-encoder); its prompt embeddings are random")
    family = model_family(model, local_files_only)  # config files only: an unknown pipeline fails before any weight
    if cuda_graph:
        check_cuda_graph(device, offload)
    q8_config = q8_config or Q8Config()
    runtime = runtime or q8_config.runtime()
    backend = check_backend(precision, runtime.backend, device)
    if precision == "q8" and checkpoint is None:  # a conversion that cannot work fails before any download
        check_q8_config(transformer_config(model, local_files_only=local_files_only), q8_config, runtime)
    cls = pipeline_class(family, image_to_video)
    build_device = "cpu" if offload != "none" else device

    # Components other than the transformer first, so a missing model fails before any conversion.
    if model == TINY:
        comps = dict(default_pipeline().components)
        base_transformer = comps.pop("transformer")
        # in the model dtype, like from_pretrained(torch_dtype=...): the pipeline's own prompt encoding (pipe(prompt)
        # without embeddings) then gives latents the transformer takes; the id follows the cast weights
        comps["text_encoder"] = _to(comps["text_encoder"], None, dtype)
        text_encoder_id = "tiny:" + weights_id(comps["text_encoder"])
        if not load_text_encoder:
            comps.update(text_encoder=None, tokenizer=None)
        pipe = cls(transformer=None, **comps)
    elif model in RANDOM_MODELS:
        pipe = None  # built below, with its transformer
    else:
        extra = dict(text_encoder=None, tokenizer=None) if not load_text_encoder else {}
        try:
            pipe = cls.from_pretrained(model, transformer=None, dtype=dtype, local_files_only=local_files_only,
                                       **extra)
        except OSError as e:
            raise model_not_available(model, e) from e

    if model in RANDOM_MODELS:
        if checkpoint is None:
            others, transformer = _random_components(model, precision, q8_config, runtime, build_device, dtype, seed)
        else:
            others = _random_others(RANDOM_MODELS[model], build_device, dtype, seed)
            transformer = load_transformer(model, precision, checkpoint, checkpoint_subfolder, q8_config,
                                           build_device, dtype, local_files_only, seed, runtime)
        tokenizer, text_encoder = (placeholder_text_encoder(build_device, dtype, seed) if full_size_text_encoder
                                   else (None, None))
        # LTX-2's scheduler settings are not known here (its repo cannot be read offline): LTX-Video's
        pipe = cls(scheduler=_ltx_scheduler(), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                   **others)
    elif model == TINY and checkpoint is None:
        transformer = _to(base_transformer, build_device, dtype)
        if precision == "q8":
            quantize_(transformer, q8_config, backend=runtime.backend, attention=runtime.attention, progress=False)
        pipe.register_modules(transformer=transformer)
    else:
        transformer = load_transformer(model, precision, checkpoint, checkpoint_subfolder, q8_config, build_device,
                                       dtype, local_files_only, seed, runtime)
        if type(transformer).__name__ != family.transformer:
            raise SettingsError(f"the checkpoint {checkpoint} holds a {type(transformer).__name__}, but {model} runs a "
                                f"{family.transformer} ({family.pipeline}); pass a checkpoint converted from this model")
        pipe.register_modules(transformer=transformer)

    q8_text = text_encoder_precision == "q8"
    if q8_text and getattr(pipe, "text_encoder", None) is not None:  # before offload hooks and prompt encoding
        quantize_text_encoder_(pipe.text_encoder, weight_dtype=q8_config.weight_dtype, backend=runtime.backend,
                               progress=False)
    _to(pipe.vae, None, dtype)
    if precision == "q8" and offload != "none":  # built on the CPU: the fused blocks for the device that runs them
        install_if_fast(pipe.transformer, runtime, device=device)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    if cuda_graph:
        enable_cuda_graphs(pipe.transformer)
    if model != TINY:
        text_encoder_id = text_encoder_id_of(None, model)
    text_encoder_id += text_encoder_suffix(text_encoder_precision, q8_config.weight_dtype)
    weights = getattr(pipe.transformer, "_q8_config", None) or q8_config  # a checkpoint's own format
    pipe.q8lib_info = dict(model=model, text_encoder_id=text_encoder_id, precision=precision,
                           checkpoint=str(checkpoint) if checkpoint else None, backend=backend, device=str(device), dtype=str(dtype).replace("torch.", ""),
                           weight_dtype=weights.weight_dtype if precision == "q8" else None,
                           attention=runtime.attention if precision == "q8" else None,
                           offload=offload, vae_tiling=vae_tiling, image_to_video=image_to_video,
                           family=family.name, pipeline=type(pipe).__name__,
                           compile=compile, cuda_graph=cuda_graph, full_size_text_encoder=full_size_text_encoder,
                           text_encoder_precision=text_encoder_precision,
                           text_encoder_weight_dtype=q8_config.weight_dtype if q8_text else None)
    return pipe


def _to(module, device, dtype):
    """Move/cast only what differs (diffusers warns on every dtype cast of a loaded model)."""
    if device is not None:
        module = module.to(device)
    return module.to(dtype) if module.dtype != dtype else module


def _random_vae(device, dtype, seed):
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoencoderKLLTXVideo().to(dtype).eval()


