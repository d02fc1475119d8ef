"""What to generate and where: every check that needs no model, run before any model loads.

* model names: ``"tiny"`` (the embedded default), the catalogue's ``random-2b`` / ``random-13b`` / ``random-ltx2``
  and aliases ``ltx-2b`` / ``ltx-13b`` (:data:`q8lib.models.CATALOGUE`; LTX-2 by its hub id);
* :class:`GenerationSettings` / :func:`settings_for`: the video to make, validated;
* :func:`resolve_device`, :func:`resolve_dtype`, :func:`check_backend`, :func:`check_cuda_graph`,
  :func:`check_offload`.

Each raises a :class:`~q8lib.errors.Q8Error` subclass whose message says what to change.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import warnings
from dataclasses import dataclass

import torch

from ..backends import get_backend, list_backends, resolve_backend
from ..errors import BackendUnavailableError, MissingPackageError, Q8FallbackWarning, SettingsError
from ..models import CATALOGUE, latent_grid
from ..tiny.components import SHAPES_GENERATION

__all__ = ["TINY", "RANDOM_MODELS", "MODEL_ALIASES", "DEFAULT_NEGATIVE_PROMPT", "FULL_SIZE_SETTINGS",
           "default_settings", "GenerationSettings", "settings_for", "resolve_device", "resolve_dtype",
           "check_backend", "check_cuda_graph", "OFFLOAD_MODES", "check_offload", "check_precision"]

TINY = "tiny"
# The catalogue's models by their command-line names: random weights, and aliases of the hub ids.
RANDOM_MODELS = {f"random-{k}": m for k, m in CATALOGUE.items()}
MODEL_ALIASES = {f"ltx-{k}": m.hub_id for k, m in CATALOGUE.items() if m.family == "ltx"}  # LTX-2: its hub id
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
# Settings of the full-size models (the project's shape of record is 81 frames at 480x704).
FULL_SIZE_SETTINGS = dict(num_frames=81, height=480, width=704, num_inference_steps=50, guidance_scale=3.0,
                          negative_prompt=DEFAULT_NEGATIVE_PROMPT)


def default_settings() -> dict:
    """Generation settings of the tiny default: what it was trained at (17 frames of 32x32, empty
    negative prompt) with 8 steps instead of 20, which q8lib.tiny measured as just as right (12/12
    held-out prompts) and which keeps the CPU reference Q8 path well under a minute."""
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
        lf, lh, lw = latent_grid(self.num_frames, self.height, self.width, (temporal, spatial, spatial))
        batch = self.num_videos_per_prompt * (2 if self.cfg else 1)
        return dict(frames=self.num_frames, height=self.height, width=self.width, transformer_batch=batch,
                    latent=[lf, lh, lw], video_tokens=lf * lh * lw, text_tokens=self.max_sequence_length)


def settings_for(model: str, prompt: str, model_defaults: dict | None = None, **overrides) -> GenerationSettings:
    """Settings with the model's defaults (tiny or full size, updated with ``model_defaults``: a model family's own,
    such as LTX-2's 121 frames at 512x768) where ``overrides`` give ``None``; validated."""
    base = default_settings() if model == TINY else dict(FULL_SIZE_SETTINGS)
    base.update(model_defaults or {})
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


def check_cuda_graph(device: torch.device, offload: str = "none") -> None:
    """Raise :class:`SettingsError` unless CUDA graphs can run the transformer here (before any loading)."""
    if device.type != "cuda" or offload != "none":
        raise SettingsError("--cuda-graph needs --device cuda and no --offload (the graph holds fixed GPU buffers)")


OFFLOAD_MODES = ("none", "model", "sequential")


def check_offload(offload: str, device: torch.device, compile: bool = False) -> None:
    """Raise unless diffusers' CPU offload ``offload`` (``"model"``: one component on the GPU at a time;
    ``"sequential"``: one module's weights at a time) can run here: it needs a CUDA device and the
    ``accelerate`` package (:class:`MissingPackageError` naming the install), and sequential offload
    cannot be compiled (accelerate's per-module hooks are excluded from torch.compile's graphs)."""
    if offload not in OFFLOAD_MODES:
        raise SettingsError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    if offload == "none":
        return
    if device.type != "cuda":
        raise SettingsError(f"--offload {offload} moves weights between the CPU and a GPU; it needs --device cuda")
    if importlib.util.find_spec("accelerate") is None:
        raise MissingPackageError(f"--offload {offload} needs the 'accelerate' package: "
                                    "pip install 'q8lib[offload]' (or pip install accelerate)")
    if offload == "sequential" and compile:
        raise SettingsError("--compile with --offload sequential: torch.compile cannot trace accelerate's per-module "
                            "offload hooks; use --offload model with --compile, or drop --compile")


def check_precision(precision: str) -> None:
    """Raise :class:`SettingsError` unless ``precision`` is ``"q8"`` or ``"bf16"``."""
    if precision not in ("q8", "bf16"):
        raise SettingsError(f"precision must be 'q8' or 'bf16', got {precision!r}")
