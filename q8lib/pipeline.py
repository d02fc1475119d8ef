"""End-to-end generation: diffusers' LTX pipelines with a Q8 transformer.

:func:`load_pipeline` builds ``LTXPipeline`` (text-to-video) or ``LTXImageToVideoPipeline`` from

* ``"tiny"``: the embedded tiny default (:func:`default_pipeline`), CPU, offline;
* a hub id or local directory in diffusers' layout (``"Lightricks/LTX-Video"``, the 13B
  ``"Lightricks/LTX-Video-0.9.7-dev"``), whose bf16 transformer is converted on the fly;
* ``"random-2b"`` / ``"random-13b"``: full-size architectures with random weights and no text
  encoder, for speed and memory measurements (the 13B Q8 transformer is built directly in 8 bits,
  never as a bf16 copy);

with the transformer replaced by a q8lib checkpoint (or the earlier public Q8 layout) when
``checkpoint`` is given. :class:`PromptCache` stores T5 prompt embeddings on disk so repeated runs
skip the text encoder, which :func:`free_text_encoder` releases before denoising.
:func:`run_pipeline` generates and measures (transformer-only time with CUDA events, VAE decode,
end to end, peak memory).
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .backends import get_backend, list_backends, resolve_backend
from .config import Q8Config
from .errors import (
    BackendUnavailableError,
    GPUOutOfMemoryError,
    ModelUnavailableError,
    Q8FallbackWarning,
    Q8Warning,
    SettingsError,
)

__all__ = [
    "TINY", "RANDOM_MODELS", "MODEL_ALIASES", "DEFAULT_NEGATIVE_PROMPT",
    "SettingsError", "ModelUnavailableError", "GPUOutOfMemoryError", "Q8FallbackWarning",
    "default_pipeline", "GenerationSettings", "settings_for", "check_backend", "load_pipeline",
    "random_q8_transformer", "PromptCache", "encode_prompts", "free_text_encoder", "run_pipeline",
    "convert_checkpoint", "transformer_memory", "environment", "resolve_device", "resolve_dtype",
]

TINY = "tiny"
# name -> (transformer config, build the Q8 transformer directly in 8 bits)
RANDOM_MODELS = {"random-2b": ("LTX_2B_CONFIG", False), "random-13b": ("LTX_13B_CONFIG", True)}
MODEL_ALIASES = {"ltx-2b": "Lightricks/LTX-Video", "ltx-13b": "Lightricks/LTX-Video-0.9.7-dev"}
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
# Settings of the full-size models (the project's shape of record is 81 frames at 480x704).
FULL_SIZE_SETTINGS = dict(num_frames=81, height=480, width=704, num_inference_steps=50, guidance_scale=3.0,
                          negative_prompt=DEFAULT_NEGATIVE_PROMPT)


# ------------------------------------------------------------------------------------------------
# The tiny default: every "tiny" use goes through these two functions.
def default_pipeline(seed: int = 0):
    """The embedded tiny default ``LTXPipeline`` (CPU, offline, seconds per video): the tiny LTX-Video
    trained on moving shapes (:func:`q8lib.tiny.default_pipeline`). ``seed`` only matters for
    random-weight stand-ins (``q8lib.tiny.make_tiny_pipeline(seed)``); the trained weights ignore it."""
    from .tiny import default_pipeline as trained_tiny

    return trained_tiny()


def default_settings() -> dict:
    """Generation settings of the tiny default: what it was trained at (17 frames of 32x32, empty
    negative prompt) with 8 steps instead of 20, which q8lib.tiny measured as just as right (12/12
    held-out prompts) and which keeps the CPU reference Q8 path well under a minute."""
    from .tiny import SHAPES_GENERATION

    keys = ("num_frames", "height", "width", "guidance_scale", "negative_prompt")
    return dict({k: SHAPES_GENERATION[k] for k in keys}, num_inference_steps=8)


# ------------------------------------------------------------------------------------------------
@dataclass
class GenerationSettings:
    """What to generate. ``validate`` raises :class:`SettingsError` on values no LTX model accepts."""

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    num_frames: int = 81
    height: int = 480
    width: int = 704
    num_inference_steps: int = 50
    guidance_scale: float = 3.0
    seed: int = 0
    frame_rate: int = 25
    num_videos_per_prompt: int = 1
    max_sequence_length: int = 128

    def validate(self) -> "GenerationSettings":
        errors = []
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            errors.append("the prompt is empty: pass --prompt 'a description of the video'")
        if not isinstance(self.negative_prompt, str):
            errors.append(f"the negative prompt must be text, got {type(self.negative_prompt).__name__}")
        ints = ("num_frames", "height", "width", "num_inference_steps", "seed", "frame_rate", "num_videos_per_prompt",
                "max_sequence_length")
        wrong = [f"{k}={getattr(self, k)!r}" for k in ints
                 if not isinstance(getattr(self, k), int) or isinstance(getattr(self, k), bool)]
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)):
            wrong.append(f"guidance_scale={self.guidance_scale!r}")
        if wrong:  # the range checks below need numbers
            raise SettingsError("invalid generation settings: these must be numbers (whole numbers except "
                                f"guidance_scale): {', '.join(wrong)}.")
        if not 0 <= self.seed < 2**63:
            errors.append(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if self.max_sequence_length < 1:
            errors.append(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")
        if self.num_frames < 1 or (self.num_frames - 1) % 8:
            k = max(0, round((self.num_frames - 1) / 8))
            errors.append(f"frames must be 8k+1 (1, 9, 17, ..., 81, 121, 161), got {self.num_frames}; "
                          f"nearest: {8 * k + 1}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 32 or v % 32:
                errors.append(f"{name} must be a positive multiple of 32, got {v}; nearest: {max(32, 32 * round(v / 32))}")
        if self.num_inference_steps < 1:
            errors.append(f"steps must be >= 1, got {self.num_inference_steps}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            errors.append(f"guidance must be a finite number >= 0, got {self.guidance_scale}")
        if self.num_videos_per_prompt < 1:
            errors.append(f"videos per prompt must be >= 1, got {self.num_videos_per_prompt}")
        if self.frame_rate < 1:
            errors.append(f"frame rate must be >= 1, got {self.frame_rate}")
        if errors:
            raise SettingsError("invalid generation settings: " + "; ".join(errors) + ".")
        return self

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance doubles the transformer batch (diffusers: guidance_scale > 1)."""
        return self.guidance_scale > 1.0

    def shape(self, spatial: int = 32, temporal: int = 8) -> dict:
        """Video and latent shape (transformer batch counts the CFG copy)."""
        lf, lh, lw = (self.num_frames - 1) // temporal + 1, self.height // spatial, self.width // spatial
        batch = self.num_videos_per_prompt * (2 if self.cfg else 1)
        return dict(frames=self.num_frames, height=self.height, width=self.width, transformer_batch=batch,
                    latent=[lf, lh, lw], video_tokens=lf * lh * lw, text_tokens=self.max_sequence_length)


def settings_for(model: str, prompt: str, **overrides) -> GenerationSettings:
    """Settings with the model's defaults (tiny or full size) where ``overrides`` give ``None``; validated."""
    base = default_settings() if model == TINY else dict(FULL_SIZE_SETTINGS)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GenerationSettings)})
    if unknown:
        raise SettingsError(f"unknown generation settings {unknown}; known: "
                            f"{[f.name for f in dataclasses.fields(GenerationSettings) if f.name != 'prompt']}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return GenerationSettings(prompt=prompt, **base).validate()


# ------------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``.

    Raises :class:`SettingsError` for a string that names no device or a device q8lib does not run on
    (anything but ``cpu`` and ``cuda[:N]``), and :class:`BackendUnavailableError` for a CUDA device
    that is not visible here.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise SettingsError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {type(device).__name__}")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except RuntimeError:
        raise SettingsError(f"--device {str(device)!r} names no device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise SettingsError(f"--device {str(device)!r}: q8lib runs on cpu and cuda devices only; use auto, cpu, cuda or cuda:N")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise SettingsError(f"--device {str(device)!r}: there is one CPU device; use cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"--device {device} was requested but no CUDA GPU is visible to PyTorch "
                                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                                          "use --device cpu or auto.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SettingsError(f"--device {device}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> bfloat16 on GPUs, float32 on CPUs (CPU bf16 matmuls are slow)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if isinstance(dtype, torch.dtype):
        if dtype not in names.values():
            raise SettingsError(f"dtype {dtype} cannot hold the high-precision parts of the model; use bf16, fp16 or fp32")
        return dtype
    if dtype not in names:
        raise SettingsError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(names))}")
    return names[dtype]


def check_backend(precision: str, backend: str, device: torch.device) -> str:
    """Name of the backend the Q8 transformer will use on ``device``.

    ``"auto"`` without a fast backend warns (:class:`Q8FallbackWarning`, naming what is missing)
    and uses the reference math; an explicitly named backend that cannot run raises
    :class:`~q8lib.backends.BackendUnavailableError`.
    """
    if precision != "q8":
        return "none (unquantized transformer)"
    if backend == "auto":
        chosen = resolve_backend("auto", device)
        if chosen.name == "reference":
            missing = "; ".join(f"{n}: {r}" for n, r in list_backends().items() if r) or "none registered"
            warnings.warn(Q8FallbackWarning(
                f"no fast q8lib backend can run on {device} ({missing}); the Q8 transformer runs on the "
                "pure-PyTorch reference math (correct, slow on GPUs). Use --precision bf16 for the unquantized model."),
                stacklevel=2)
        return chosen.name
    b = get_backend(backend)  # raises with the reason
    if not b.supports_device(device):
        raise BackendUnavailableError(f"q8lib backend {backend!r} does not run on device {device}; "
                                      "use --backend auto or another --device.")
    return b.name


# ------------------------------------------------------------------------------------------------
def _ltx():
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel


def _pipeline_class(image_to_video: bool):
    from diffusers import LTXImageToVideoPipeline, LTXPipeline

    return LTXImageToVideoPipeline if image_to_video else LTXPipeline


def _not_available(model: str, err: Exception) -> ModelUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    how = ("HF_HUB_OFFLINE is set, so nothing is downloaded: unset it (with network access) or download first with "
           f"`huggingface-cli download {model}`" if offline else
           f"check the id and your network, or download with `huggingface-cli download {model}` and pass the folder")
    return ModelUnavailableError(
        f"could not load the LTX-Video model {model!r} ({type(err).__name__}: {str(err).splitlines()[0][:300]}). "
        f"{how}. Without weights, use --model tiny: the embedded tiny LTX default that runs offline on a CPU "
        "(or random-2b / random-13b for full-size random weights).")


def random_q8_transformer(config: dict, q8_config: Q8Config | None = None, device="cpu", dtype=torch.bfloat16,
                          seed: int = 0):
    """A Q8 ``LTXVideoTransformer3DModel`` with random weights built directly in 8 bits (no bf16 copy).

    The model is built on the meta device, its blocks swapped to Q8 skeletons, then every tensor is
    allocated on ``device``: 8-bit weights uniform over the code range with per-channel scales that
    give ``W`` a std of ``1/sqrt(K)``, other weights and tables random with the same std, norm
    weights one, biases zero. Peak memory is the Q8 model itself (13B: ~13 GB, not ~26 GB in bf16).
    """
    from . import ltx
    from .modules import Q8Linear
    from .quant import QMAX

    q8_config = q8_config or Q8Config()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model = ltx.build_q8_skeleton(config, q8_config)

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
    ltx.activate_q8(model, q8_config)
    return model


def _random_components(name: str, precision: str, q8_config: Q8Config, device, dtype, seed: int, need_vae=True):
    """Full-size random VAE (diffusers' default LTX VAE) and transformer for ``random-2b``/``random-13b``."""
    from . import ltx, tiny

    config_name, direct = RANDOM_MODELS[name]
    config = getattr(tiny, config_name)
    torch.manual_seed(seed)
    vae = _random_vae(device, dtype, seed) if need_vae else None
    if precision == "q8" and direct:
        return vae, random_q8_transformer(config, q8_config, device, dtype, seed)
    with torch.device(device):
        transformer = _ltx()(**config).to(dtype).eval()
    if precision == "q8":
        ltx.quantize_(transformer, q8_config)
    return vae, transformer


def _ltx_scheduler():
    """The flow-matching scheduler with the settings of the LTX-Video hub repo."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                           base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)


def transformer_config(model: str, subfolder: str | None = "transformer", local_files_only: bool | None = None) -> dict:
    """The transformer's ``config.json`` of ``model`` (tiny, random-*, hub id or folder) without loading weights."""
    from . import tiny

    model = MODEL_ALIASES.get(model, model)
    if model == TINY:
        if not tiny.has_default_pipeline():
            default_pipeline()  # raises TinyDefaultMissingError, which says what to do
        return json.loads((tiny.SHAPES_DIR / "transformer" / "config.json").read_text())
    if model in RANDOM_MODELS:
        return dict(getattr(tiny, RANDOM_MODELS[model][0]))
    if Path(model).is_dir() and (Path(model) / "config.json").exists() and not (Path(model) / "model_index.json").exists():
        subfolder = None
    try:
        return dict(_ltx().load_config(model, subfolder=subfolder, local_files_only=local_files_only))
    except OSError as e:
        raise _not_available(model, e) from None


def load_transformer(model: str, precision: str = "q8", checkpoint: str | None = None,
                     checkpoint_subfolder: str | None = None, q8_config: Q8Config | None = None,
                     device="cpu", dtype=torch.bfloat16, local_files_only: bool | None = None, seed: int = 0):
    """The transformer alone: a Q8 checkpoint, on-the-fly Q8 conversion of ``model``'s, or ``model``'s unquantized."""
    from . import ltx

    q8_config = q8_config or Q8Config()
    if checkpoint is not None:
        if precision != "q8":
            raise SettingsError("a Q8 --checkpoint was given with --precision bf16; drop one of them")
        return ltx.load_q8(checkpoint, subfolder=checkpoint_subfolder, device=device, torch_dtype=dtype,
                           backend=q8_config.backend, attention=q8_config.attention, local_files_only=local_files_only)
    if model == TINY:
        transformer = _to(default_pipeline(seed).transformer, device, dtype)
        return ltx.quantize_(transformer, q8_config, progress=False) if precision == "q8" else transformer
    if model in RANDOM_MODELS:
        return _random_components(model, precision, q8_config, device, dtype, seed, need_vae=False)[1]
    try:
        transformer = _ltx().from_pretrained(model, subfolder="transformer", torch_dtype=dtype,
                                             local_files_only=local_files_only)
    except OSError as e:
        raise _not_available(model, e) from e
    transformer = transformer.to(device).eval()
    return ltx.quantize_(transformer, q8_config) if precision == "q8" else transformer


def check_cuda_graph(device: torch.device, offload: str = "none") -> None:
    """Raise :class:`SettingsError` unless CUDA graphs can run the transformer here (before any loading)."""
    if device.type != "cuda" or offload != "none":
        raise SettingsError("--cuda-graph needs --device cuda and no --offload (the graph holds fixed GPU buffers)")


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
    load_text_encoder: bool = True,
    offload: str = "none",
    vae_tiling: bool = False,
    local_files_only: bool | None = None,
    seed: int = 0,
    compile: bool = False,
    cuda_graph: bool = False,
):
    """Build an LTX pipeline whose transformer is Q8 (``precision="q8"``) or unquantized (``"bf16"``).

    Args:
        model: ``"tiny"``, ``"random-2b"``, ``"random-13b"``, an alias (``"ltx-2b"``, ``"ltx-13b"``),
            a hub id such as ``"Lightricks/LTX-Video"`` or a local diffusers pipeline directory.
        checkpoint: a q8lib checkpoint or the earlier public Q8 layout (local dir or hub id) that
            replaces ``model``'s transformer; without it a Q8 transformer is converted on the fly.
        image_to_video: build ``LTXImageToVideoPipeline`` instead of ``LTXPipeline``.
        load_text_encoder: ``False`` skips T5 (use cached prompt embeddings, see :class:`PromptCache`).
        offload: ``"none"`` or ``"model"`` (diffusers' model CPU offload: one component on the GPU at a time).
        vae_tiling: decode the video in tiles (less memory at large resolutions).
        compile: regional ``torch.compile`` of the transformer (fullgraph on the repeated block).
        cuda_graph: replay each transformer forward from one CUDA graph (:mod:`q8lib.cudagraph`;
            GPU only, not with offload): removes the host cost of launching the Q8 kernels, which
            otherwise leaves the GPU idle for a large share of each forward.
    Returns:
        the pipeline, on ``device``, with ``pipe.q8lib_info`` describing what was loaded.
    """
    from . import ltx

    model = MODEL_ALIASES.get(model, model)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if precision not in ("q8", "bf16"):
        raise SettingsError(f"precision must be 'q8' or 'bf16', got {precision!r}")
    if offload not in ("none", "model"):
        raise SettingsError(f"offload must be 'none' or 'model', got {offload!r}")
    if cuda_graph:
        check_cuda_graph(device, offload)
    if offload == "model":
        if device.type != "cuda":
            raise SettingsError("--offload model moves components between the CPU and a GPU; it needs --device cuda")
        try:
            import accelerate  # noqa: F401
        except ImportError as e:
            raise ModelUnavailableError("--offload model needs the 'accelerate' package: pip install accelerate") from e
    q8_config = q8_config or Q8Config()
    backend = check_backend(precision, q8_config.backend, device)
    if precision == "q8" and checkpoint is None:  # a conversion that cannot work fails before any download
        ltx.check_q8_config(transformer_config(model, local_files_only=local_files_only), q8_config)
    cls = _pipeline_class(image_to_video)
    build_device = "cpu" if offload == "model" else device

    # Components other than the transformer first, so a missing model fails before any conversion.
    if model == TINY:
        comps = dict(default_pipeline(seed).components)
        base_transformer = comps.pop("transformer")
        text_encoder_id = "tiny:" + _weights_id(comps["text_encoder"])
        if not load_text_encoder:
            comps.update(text_encoder=None, tokenizer=None)
        pipe = cls(transformer=None, **comps)
    elif model in RANDOM_MODELS:
        pipe = None  # built below, with its transformer
    else:
        extra = dict(text_encoder=None, tokenizer=None) if not load_text_encoder else {}
        try:
            pipe = cls.from_pretrained(model, transformer=None, torch_dtype=dtype, local_files_only=local_files_only,
                                       **extra)
        except OSError as e:
            raise _not_available(model, e) from e

    if model in RANDOM_MODELS:
        if checkpoint is None:
            vae, transformer = _random_components(model, precision, q8_config, build_device, dtype, seed)
        else:
            vae = _random_vae(build_device, dtype, seed)
            transformer = load_transformer(model, precision, checkpoint, checkpoint_subfolder, q8_config,
                                           build_device, dtype, local_files_only, seed)
        pipe = cls(scheduler=_ltx_scheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    elif model == TINY and checkpoint is None:
        transformer = _to(base_transformer, build_device, dtype)
        if precision == "q8":
            ltx.quantize_(transformer, q8_config, progress=False)
        pipe.register_modules(transformer=transformer)
    else:
        transformer = load_transformer(model, precision, checkpoint, checkpoint_subfolder, q8_config, build_device,
                                       dtype, local_files_only, seed)
        pipe.register_modules(transformer=transformer)

    _to(pipe.vae, None, dtype)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    if cuda_graph:
        from .cudagraph import enable_cuda_graphs

        enable_cuda_graphs(pipe.transformer)
    if model != TINY:
        text_encoder_id = _text_encoder_id(None, model)
    pipe.q8lib_info = dict(model=model, text_encoder_id=text_encoder_id, precision=precision,
                           checkpoint=str(checkpoint) if checkpoint else None, backend=backend, device=str(device), dtype=str(dtype).replace("torch.", ""),
                           weight_dtype=q8_config.weight_dtype if precision == "q8" else None,
                           attention=q8_config.attention if precision == "q8" else None,
                           offload=offload, vae_tiling=vae_tiling, image_to_video=image_to_video,
                           compile=compile, cuda_graph=cuda_graph)
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


# ------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$Q8LIB_CACHE/prompt_embeds`` (default ``~/.cache/q8lib/prompt_embeds``)."""
    return Path(os.environ.get("Q8LIB_CACHE", Path.home() / ".cache" / "q8lib")) / "prompt_embeds"


class PromptCache:
    """Prompt embeddings on disk (one safetensors file per model/prompt/negative/length/CFG).

    Keyed by a hash of everything that changes the embeddings, so a hit never returns another
    model's or prompt's tensors. Files hold ``prompt_embeds [N, T, C]``, ``prompt_attention_mask [N, T]``
    and, with CFG, the ``negative_*`` pair.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(model_id: str, settings: GenerationSettings) -> str:
        parts = [model_id, settings.prompt, settings.negative_prompt if settings.cfg else None,
                 settings.max_sequence_length, settings.cfg]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> dict | None:
        """The cached tensors, or ``None`` on a miss; an unreadable file warns and counts as a miss."""
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.exists():
            return None
        try:
            return load_file(p)
        except Exception as e:  # truncated or foreign file: encode again (and overwrite it on save)
            warnings.warn(Q8Warning(f"prompt cache file {p} is unreadable ({type(e).__name__}); encoding the prompt "
                                    "again"), stacklevel=2)
            return None

    def save(self, key: str, tensors: dict, info: dict | None = None) -> Path | None:
        """Store ``tensors`` (atomically: a concurrent reader never sees half a file); a failure warns and
        returns ``None``, since a cache must never stop a run."""
        from safetensors.torch import save_file

        from .outputs import atomic_path

        p = self.path(key)
        try:
            with atomic_path(p) as tmp:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                          metadata={k: str(v) for k, v in (info or {}).items()})
        except OSError as e:
            warnings.warn(Q8Warning(f"could not write the prompt cache {p} ({e.strerror or e}); continuing without "
                                    "caching"), stacklevel=2)
            return None
        return p


def _weights_id(module) -> str:
    """A short hash of a (small) module's weights."""
    h = hashlib.sha256()
    for k, t in module.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _text_encoder_id(pipe, model: str, seed: int = 0) -> str:
    """What identifies the text encoder for the cache key (the same before and after it is freed)."""
    known = getattr(pipe, "q8lib_info", {}).get("text_encoder_id")
    if known:
        return known
    if model == TINY:  # the tiny default may change (trained weights): key on its weights
        enc = getattr(pipe, "text_encoder", None)
        return "tiny:" + _weights_id(enc if enc is not None else default_pipeline(seed).text_encoder)
    return str(Path(model).resolve()) if Path(model).is_dir() else model


def random_prompt_embeds(settings: GenerationSettings, dim: int, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in T5 output for random-weight models: ``[1, T, dim]`` unit-RMS noise and a right-padded mask.

    The kept length follows the prompt's word count (T5 gives ~1.3 tokens per word + EOS) so the
    attention sees real padding.
    """
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    gen = torch.Generator().manual_seed(seed)
    t = settings.max_sequence_length
    n = max(1, min(t, round(1.3 * len(text.split())) + 1))
    embeds = torch.randn(1, t, dim, generator=gen)
    mask = torch.zeros(1, t, dtype=torch.int64)
    mask[:, :n] = 1
    return embeds * mask[..., None], mask


def encode_prompts(pipe, settings: GenerationSettings, model: str = TINY, cache: PromptCache | None = None,
                   seed: int = 0) -> tuple[dict, dict]:
    """Prompt embeddings for ``settings`` from ``cache`` or the pipeline's T5, saved to ``cache`` on a miss.

    Returns ``(kwargs for the pipeline call, info)``; ``info`` says whether the cache hit and how
    long encoding took. Random-weight models (no text encoder) get :func:`random_prompt_embeds`.
    """
    key = PromptCache.key(_text_encoder_id(pipe, model, seed), settings) if cache is not None else None
    start = time.perf_counter()
    tensors = cache.load(key) if cache is not None else None
    hit = tensors is not None
    if not hit:
        if model in RANDOM_MODELS:
            dim = pipe.transformer.config.caption_channels
            pe, pm = random_prompt_embeds(settings, dim, settings.prompt)
            tensors = dict(prompt_embeds=pe, prompt_attention_mask=pm)
            if settings.cfg:
                ne, nm = random_prompt_embeds(settings, dim, "negative: " + settings.negative_prompt)
                tensors.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
        elif getattr(pipe, "text_encoder", None) is None:
            raise ModelUnavailableError(
                "the prompt embeddings are not cached and the text encoder was not loaded; "
                "run once with the text encoder (the default) to fill the cache")
        else:
            with torch.no_grad():
                pe, pm, ne, nm = pipe.encode_prompt(
                    settings.prompt, settings.negative_prompt, do_classifier_free_guidance=settings.cfg,
                    num_videos_per_prompt=1, max_sequence_length=settings.max_sequence_length,
                    device=pipe._execution_device)
            tensors = dict(prompt_embeds=pe, prompt_attention_mask=pm)
            if settings.cfg:
                tensors.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
        if cache is not None:
            cache.save(key, tensors, dict(model=model, prompt=settings.prompt[:200]))
    if not settings.cfg:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("negative_")}
    # The pipeline feeds embeddings to the transformer as they are: give them its device and dtype.
    dtype = pipe.transformer.proj_in.weight.dtype if getattr(pipe, "transformer", None) is not None else None
    tensors = {k: v.to(device=pipe._execution_device, dtype=dtype if v.is_floating_point() and dtype else v.dtype)
               for k, v in tensors.items()}
    info = dict(prompt_cache="hit" if hit else ("miss" if cache is not None else "off"),
                text_encode_s=round(time.perf_counter() - start, 4), prompt_cache_key=key)
    return tensors, info


def free_text_encoder(pipe) -> None:
    """Drop the T5 encoder (and its GPU memory) from ``pipe``; prompts must then come as embeddings."""
    if getattr(pipe, "text_encoder", None) is None:
        return
    pipe.register_modules(text_encoder=None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
class _Spans:
    """Start/stop spans timed with CUDA events on GPUs (no sync inside the loop), else wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list = []
        self._start = None

    def start(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans.append((self._start, end))
        else:
            self.spans.append((self._start, time.perf_counter()))

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.spans]
        return [(e - s) * 1e3 for s, e in self.spans]


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers (8-bit weights count one byte each)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def oom_message(settings: GenerationSettings | None, device) -> str:
    what = (f" generating {settings.num_frames} frames at {settings.height}x{settings.width}"
            if settings is not None else "")
    free = ""
    if torch.cuda.is_available():
        free_b, total_b = torch.cuda.mem_get_info()
        free = f" ({free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free now)"
    return (f"out of GPU memory on {device}{what}{free}. Memory options: a smaller --height/--width or fewer "
            "--frames; --offload model (keeps idle components on the CPU); --vae-tiling (decodes in tiles); "
            "--precision q8 (the 8-bit transformer needs about half the weight memory of bf16); "
            "--guidance 1 (no CFG halves the transformer batch).")


def run_pipeline(pipe, settings: GenerationSettings, embeds: dict, image=None, progress: bool = True) -> dict:
    """Generate with ``pipe`` and measure.

    Returns ``{"frames": [N, F, 3, H, W] float32 CPU in [0, 1], "timings": {...}, "memory": {...}}``
    where timings hold ``end_to_end_s`` (pipeline call: denoising + VAE decode, not loading),
    ``transformer_s`` (sum of transformer forwards, CUDA events on GPUs), ``transformer_forward_ms``
    (median per forward), ``vae_decode_s`` and the number of forwards.
    """
    device = pipe._execution_device
    gen = torch.Generator("cpu").manual_seed(settings.seed)  # the same noise on every device
    dtype = pipe.transformer.proj_in.weight.dtype  # kept in high precision in Q8 models too
    kwargs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in embeds.items()}
    kwargs.update(height=settings.height, width=settings.width, num_frames=settings.num_frames,
                  frame_rate=settings.frame_rate, num_inference_steps=settings.num_inference_steps,
                  guidance_scale=settings.guidance_scale, generator=gen, output_type="pt",
                  num_videos_per_prompt=settings.num_videos_per_prompt,
                  max_sequence_length=settings.max_sequence_length)
    if image is not None:
        kwargs["image"] = image
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", leave=False)
    spans, decode = _Spans(device), _Spans(device)
    hooks = [pipe.transformer.register_forward_pre_hook(lambda m, a: spans.start()),
             pipe.transformer.register_forward_hook(lambda m, a, o: spans.stop())]
    vae_decode = pipe.vae.decode
    mem = {}
    cuda = device.type == "cuda"

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
    return dict(frames=out.frames.float().cpu(), timings=timings,
                memory={k: round(v, 3) for k, v in mem.items()})


# ------------------------------------------------------------------------------------------------
def convert_checkpoint(source: str, output: str | os.PathLike, subfolder: str | None = "transformer",
                       q8_config: Q8Config | None = None, device="cpu", local_files_only: bool | None = None,
                       seed: int = 0) -> dict:
    """Convert a bf16 LTX transformer (hub id, local dir, ``"tiny"``) to a q8lib checkpoint in ``output``.

    ``subfolder`` is dropped automatically for a local transformer directory (``config.json`` at
    its root). Returns a size report: bf16 bytes of the source weights, bytes of the written
    safetensors, parameter counts of converted and kept tensors.
    """
    from . import ltx
    from .outputs import check_output_dir

    q8_config = q8_config or Q8Config()
    source = MODEL_ALIASES.get(source, source)
    check_output_dir(output, "output folder")
    if Path(source).is_dir() and (Path(source) / "config.json").exists():
        subfolder = None
    ltx.check_q8_config(transformer_config(source, subfolder, local_files_only), q8_config)
    start = time.perf_counter()
    if source == TINY:
        model = _to(default_pipeline(seed).transformer, None, torch.bfloat16)  # as hub checkpoints are stored
    elif source in RANDOM_MODELS:
        model = _random_components(source, "bf16", q8_config, device, torch.bfloat16, seed, need_vae=False)[1]
    else:
        try:
            model = _ltx().from_pretrained(source, subfolder=subfolder, torch_dtype=torch.bfloat16,
                                           local_files_only=local_files_only)
        except OSError as e:
            raise _not_available(source, e) from e
    bf16_bytes = sum(t.numel() * 2 for t in model.state_dict().values() if t.is_floating_point())
    params = sum(t.numel() for t in model.state_dict().values())
    model = ltx.quantize_(model.to(device).eval(), q8_config)
    path = ltx.save_q8(model, output)
    q8_bytes = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    converted = sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Q8Linear")
    return dict(source=source, output=str(path), weight_dtype=q8_config.weight_dtype,
                hadamard_block=q8_config.hadamard_block, params=params, params_8bit=converted,
                params_kept=params - converted, bf16_bytes=bf16_bytes, q8_bytes=q8_bytes,
                ratio=q8_bytes / bf16_bytes, seconds=time.perf_counter() - start)


def transformer_memory(model: str = "random-13b", num_frames: int = 81, height: int = 480, width: int = 704,
                       batch: int = 2, text_tokens: int = 128, repeats: int = 3, precision: str = "q8",
                       q8_config: Q8Config | None = None, device=None, seed: int = 0) -> dict:
    """Transformer-only peak memory and forward time at one shape (random inputs, no VAE/T5).

    ``batch`` is the transformer batch (2 = one video with CFG). On CUDA the peak is
    ``torch.cuda.max_memory_allocated`` over model build and ``repeats`` forwards; forward
    times are CUDA-event medians after one warm-up forward. On CPU no peak is reported.
    """
    for name, v in (("batch", batch), ("repeats", repeats), ("text_tokens", text_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise SettingsError(f"{name} must be a whole number >= 1, got {v!r}")
    if precision not in ("q8", "bf16"):
        raise SettingsError(f"precision must be 'q8' or 'bf16', got {precision!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(None, device)
    q8_config = q8_config or Q8Config()
    backend = check_backend(precision, q8_config.backend, device)
    spatial, temporal = (4, 4) if model == TINY else (32, 8)
    if model == TINY:
        vae = default_pipeline(seed).vae
        spatial, temporal = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    s = GenerationSettings(prompt="x", num_frames=num_frames, height=height, width=width,
                           max_sequence_length=text_tokens).validate()
    lf, lh, lw = s.shape(spatial, temporal)["latent"]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    transformer = load_transformer(model, precision, q8_config=q8_config, device=device, dtype=dtype, seed=seed)
    weights_gib = torch.cuda.memory_allocated(device) / 2**30 if cuda else None
    cfg = transformer.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, lf * lh * lw, cfg.in_channels, generator=gen).to(device, dtype)
    enc = torch.randn(batch, text_tokens, cfg.caption_channels, generator=gen).to(device, dtype)
    mask = torch.ones(batch, text_tokens, device=device)
    mask[:, text_tokens // 3:] = 0  # right padding, as T5 gives
    t = torch.full((batch,), 500.0, device=device)
    spans = _Spans(device)
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                if i:
                    spans.start()
                y = transformer(hidden_states=x, encoder_hidden_states=enc, timestep=t, encoder_attention_mask=mask,
                                num_frames=lf, height=lh, width=lw).sample
                if i:
                    spans.stop()
    except torch.OutOfMemoryError as e:
        raise GPUOutOfMemoryError(oom_message(s, device)) from e
    fwd = spans.ms()
    out = dict(model=model, precision=precision, backend=backend, weight_dtype=q8_config.weight_dtype,
               attention=q8_config.attention, device=str(device), dtype=str(dtype).replace("torch.", ""),
               shape=dict(frames=num_frames, height=height, width=width, transformer_batch=batch,
                          latent=[lf, lh, lw], video_tokens=lf * lh * lw, text_tokens=text_tokens),
               params=sum(t.numel() for t in list(transformer.parameters()) + list(transformer.buffers())),
               forward_ms=fwd, forward_ms_median=statistics.median(fwd) if fwd else None,
               output_finite=bool(torch.isfinite(y).all()))
    out["transformer_weights_gib"] = round(module_bytes(transformer) / 2**30, 3)
    if cuda:
        out.update(weights_gib=round(weights_gib, 3), peak_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
                   reserved_peak_gib=round(torch.cuda.max_memory_reserved(device) / 2**30, 3))
    return out


def environment(device: torch.device | str | None = None) -> dict:
    """``device``, ``date`` (UTC) and ``versions`` for result JSON."""
    import diffusers

    device = torch.device(device) if device is not None else resolve_device(None)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__)
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    from . import __version__

    versions["q8lib"] = __version__
    return dict(device=name, date=datetime.now(timezone.utc).isoformat(timespec="seconds"), versions=versions)

