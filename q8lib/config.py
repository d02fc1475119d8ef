"""What a Q8 checkpoint is (:class:`Q8Config`, saved as ``q8lib.json``) and how it runs (:class:`Q8Runtime`).

Split as in torchao: the config describes the weights; the runtime choices (backend, attention)
are arguments of :func:`q8lib.quantize_` / :func:`q8lib.load_q8`, since the same weights run on any of them.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

from .backends import ATTENTION_MODES
from .errors import SettingsError
from .quant import qdtype_from_name, qdtype_name
from .versions import __version__

FORMAT_VERSION = 1
# Q8Runtime's attention choices: the backends' modes, or "keep" (diffusers' processors stay)
RUNTIME_ATTENTION = ATTENTION_MODES + ("keep",)
# ``quant_method`` of the ``quantization_config`` entry q8lib writes into a Q8 transformer's ``config.json``.
# diffusers has no way to register a third-party quantizer, so its ``from_pretrained`` refuses such a folder
# with "Unknown quantization type, got <quant_method> - supported types are: [...]": this text is that
# message's middle, and says what to call instead. q8lib itself recognises its entry by ``format: "q8lib"``.
QUANT_METHOD = ("q8lib (a Q8 checkpoint saved by q8lib, which diffusers cannot load; load it with "
                "q8lib.load_pipeline_q8(pipeline_folder) or q8lib.load_q8(transformer_folder))")

# Modules of the LTX transformer that stay in high precision: they are small, run once per
# forward (or once per step) and are sensitive (the input/output projections and conditioning).
KEEP_HIGH_PRECISION = (
    "proj_in",
    "time_embed",
    "caption_projection",
    "proj_out",
    "norm_out",
    "scale_shift_table",
)
# LTX-2 (``LTX2VideoTransformer3DModel``, :mod:`q8lib.ltx2`): the same modules for its audio stream and its extra
# conditioning (cross-modal and prompt modulation embeddings) and, inside the blocks, the gated-attention gate
# linears (``query_dim -> heads``): measured on a tiny random LTX-2 (benchmarks/ltx2_keep_study.py), quantizing the
# gates alone adds 0.3% (int8) / 1.0% (fp8_e4m3) relative error to the outputs, a quarter to a fifth of what all the
# block linears add, for 0.15% of LTX-2.3's weights and a quantization pass over each gated attention's input. A
# ``Q8Config`` whose list is the default (:data:`KEEP_HIGH_PRECISION`) gets this list on an LTX-2 transformer.
KEEP_HIGH_PRECISION_LTX2 = KEEP_HIGH_PRECISION + (
    "audio_proj_in",
    "audio_time_embed",
    "audio_caption_projection",
    "av_cross_attn_video_scale_shift",
    "av_cross_attn_audio_scale_shift",
    "av_cross_attn_video_a2v_gate",
    "av_cross_attn_audio_v2a_gate",
    "prompt_adaln",
    "audio_prompt_adaln",
    "audio_proj_out",
    "audio_norm_out",
    "audio_scale_shift_table",
    "to_gate_logits",
)


def default_weight_dtype() -> str:
    """``"fp8_e4m3"`` when the current CUDA device is Hopper or newer (sm_90+: cuBLAS row-wise fp8 GEMMs
    measured fastest there), else ``"int8"`` (Ada's int8 rate is twice its fp8 rate; CPU; the legacy
    layout). Numbers: benchmarks/NOTES_linear.md."""
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9:
        return "fp8_e4m3"
    return "int8"


def default_hadamard_block(weight_dtype: str) -> int | None:
    """The rotation each 8-bit format gets by default: the full-width Hadamard for int8 (it spreads activation
    outliers over the row, which int8's uniform grid needs: 38-41 dB SQNR with it), none (``1``) for e4m3, whose
    floating-point grid already keeps small values: with per-token scales the rotation did not help e4m3 on
    LTX's linears and cost up to 5 dB where activation and weight outliers sit in different channels; end to
    end it changed nothing measurable (2B random weights: 0.0186 vs 0.0185 relative error; trained tiny model:
    84.7 vs 84.3 dB), and without it the 2B forward is 6-7% faster on an H200 (benchmarks/NOTES_linear.md)."""
    return 1 if weight_dtype == "fp8_e4m3" else None


RUNTIME_DEFAULTS = dict(backend="auto", attention="fp8")


@dataclass(frozen=True)
class Q8Runtime:
    """How a Q8 model runs: choices made at load time, never saved with the weights.

    Args:
        backend: ``"auto"`` (fastest available for the device), ``"reference"``, ``"triton"``, ...
        attention: ``"fp8"`` (FP8 attention with Hadamard-rotated q/k), ``"int8"`` (INT8 q·k after key
            smoothing and q/k channel balancing, bf16/fp16 P·V: more accurate than ``"fp8"``, see
            benchmarks/NOTES_attention.md), ``"sdpa"`` (bf16 SDPA through the Q8 processor), ``"fp8_tensor"``
            (cuDNN's FP8 attention engine, one scale per tensor after K smoothing: the fastest at head dim 128 on
            Hopper, coarser than ``"fp8"`` on outlier channels; needs ``nvidia-cudnn-frontend`` on a GPU) or
            ``"keep"`` (leave diffusers' processors alone).

    :func:`q8lib.quantize_` and :func:`q8lib.load_q8` take these as keyword arguments
    (``backend=``, ``attention=``); this object is what they record on the model (``model._q8_runtime``).
    """

    backend: str = "auto"
    attention: str = "fp8"

    def __post_init__(self):
        if not isinstance(self.attention, str) or self.attention not in RUNTIME_ATTENTION:
            names = ", ".join(map(repr, RUNTIME_ATTENTION[:-1])) + f" or {RUNTIME_ATTENTION[-1]!r}"
            raise SettingsError(f"attention must be {names}, got {self.attention!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise SettingsError(f"backend must be a name such as 'auto', 'reference' or 'triton', got {self.backend!r}")


@dataclass
class Q8Config:
    """The weight format of a Q8 LTX-Video transformer: everything ``q8lib.json`` records beside the weights.

    Args:
        weight_dtype: ``"int8"`` or ``"fp8_e4m3"``; activations use the same 8-bit type. Default:
            :func:`default_weight_dtype` (fp8 where a Hopper GPU is visible, else int8).
        hadamard_block: rotation block size; ``None`` rotates over each linear's full input dim
            (the layout of the earlier public Q8 checkpoint); ``1`` does not rotate. Default ``"auto"``:
            ``None`` for int8, ``1`` for fp8_e4m3 (:func:`default_hadamard_block`).
        keep_high_precision: module names left unconverted, matched on any dotted component
            (``"proj_in"``) or as a whole dotted name (``"transformer_blocks.0.attn1.to_q"``). The default,
            :data:`KEEP_HIGH_PRECISION`, stands for the model's own list: :data:`KEEP_HIGH_PRECISION_LTX2` on
            an LTX-2 transformer.

    Runtime choices are not part of the format: pass ``backend=`` / ``attention=`` to
    :func:`q8lib.quantize_` or :func:`q8lib.load_q8` (see :class:`Q8Runtime`). The keyword arguments
    ``Q8Config(backend=..., attention=...)`` of earlier versions still work, with a ``FutureWarning``
    naming the new place; they are used when ``quantize_`` is not given its own.
    """

    weight_dtype: str = field(default_factory=default_weight_dtype)
    hadamard_block: int | None | str = "auto"
    keep_high_precision: tuple[str, ...] = field(default_factory=lambda: KEEP_HIGH_PRECISION)
    backend: dataclasses.InitVar[str | None] = None
    attention: dataclasses.InitVar[str | None] = None

    def __post_init__(self, backend, attention):
        try:
            self.weight_dtype = qdtype_name(qdtype_from_name(self.weight_dtype))
        except ValueError as e:
            raise SettingsError(f"weight_dtype: {e}") from None
        if self.hadamard_block == "auto":
            self.hadamard_block = default_hadamard_block(self.weight_dtype)
        b = self.hadamard_block
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1 or b & (b - 1)):
            raise SettingsError(f"hadamard_block (--hadamard-block) must be a power of two (1, 2, 4, ..., 256, ...) "
                                f"or None for the full width or 'auto', got {b!r}")
        keep = self.keep_high_precision
        if isinstance(keep, str) or not all(isinstance(k, str) for k in keep):
            raise SettingsError("keep_high_precision must be a list of module names such as ['proj_in', 'proj_out'], "
                                f"got {keep!r}")
        self.keep_high_precision = tuple(keep)
        given = {k: v for k, v in (("backend", backend), ("attention", attention)) if v is not None}
        if given:
            warnings.warn(f"Q8Config({', '.join(f'{k}={v!r}' for k, v in given.items())}): runtime choices are no "
                          "longer part of Q8Config; pass them to q8lib.quantize_(model, config, "
                          + ", ".join(f"{k}={v!r}" for k, v in given.items()) + ") or q8lib.load_q8(...)",
                          FutureWarning, stacklevel=3)
        # Earlier versions' runtime keyword arguments, used by quantize_ when it is given none of its own.
        self._legacy_runtime = Q8Runtime(**{**RUNTIME_DEFAULTS, **given}) if given else None

    def runtime(self, backend: str | None = None, attention: str | None = None) -> Q8Runtime:
        """The :class:`Q8Runtime` from explicit choices, else the earlier ``Q8Config(backend=, attention=)``
        keyword arguments, else the defaults (``backend="auto"``, ``attention="fp8"``)."""
        base = self._legacy_runtime or Q8Runtime()
        return Q8Runtime(backend=base.backend if backend is None else backend,
                         attention=base.attention if attention is None else attention)

    @property
    def qdtype(self):
        return qdtype_from_name(self.weight_dtype)

    def to_metadata(self) -> dict:
        """The JSON written as ``q8lib.json`` beside the weights."""
        d = dataclasses.asdict(self)
        d["keep_high_precision"] = list(self.keep_high_precision)
        return {"format": "q8lib", "format_version": FORMAT_VERSION, **d}

    def to_quantization_config(self) -> dict:
        """The ``quantization_config`` entry of a Q8 transformer's diffusers config (``config.json``):
        :data:`QUANT_METHOD`, the q8lib version that wrote it and :meth:`to_metadata`. :func:`q8lib.quantize_` and
        :func:`q8lib.load_q8` register it on the model, so diffusers' ``save_pretrained`` marks what it saves."""
        return {"quant_method": QUANT_METHOD, "q8lib_version": __version__, **self.to_metadata()}

    @staticmethod
    def is_quantization_config(entry) -> bool:
        """Whether a ``quantization_config`` entry (a JSON object) was written by q8lib."""
        return isinstance(entry, dict) and (entry.get("format") == "q8lib"
                                            or str(entry.get("quant_method", "")).startswith("q8lib"))

    @classmethod
    def from_quantization_config(cls, entry: dict) -> "Q8Config":
        """Inverse of :meth:`to_quantization_config`; raises :class:`SettingsError` naming the key that is wrong."""
        return cls.from_metadata(entry)

    @classmethod
    def from_metadata(cls, meta: dict) -> "Q8Config":
        """Inverse of :meth:`to_metadata`; raises :class:`SettingsError` naming the key that is wrong."""
        if not isinstance(meta, dict):
            raise SettingsError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") != "q8lib":
            raise SettingsError(f"not a q8lib metadata file (key 'format' is {meta.get('format')!r}, expected 'q8lib')")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise SettingsError(
                f"key 'format_version' is {version!r}, which this q8lib does not read "
                f"(it reads {FORMAT_VERSION}); upgrade q8lib or re-convert the checkpoint."
            )
        stored = {"weight_dtype", "hadamard_block", "keep_high_precision"}
        missing = sorted(stored - set(meta))
        if missing:
            raise SettingsError(f"keys {missing} are missing")
        kwargs = {k: meta[k] for k in stored}
        if not isinstance(kwargs["keep_high_precision"], list):
            raise SettingsError(f"key 'keep_high_precision' must be a list of names, got {kwargs['keep_high_precision']!r}")
        for k in ("weight_dtype", "hadamard_block", "keep_high_precision"):
            try:
                cls(**{k: kwargs[k]})
            except SettingsError as e:
                raise SettingsError(f"key {k!r}: {e}") from None
        return cls(**kwargs)


# Read access for code written against earlier versions (``config.backend``): what quantize_ would use.
Q8Config.backend = property(lambda self: self.runtime().backend, doc="Deprecated: see :meth:`Q8Config.runtime`.")
Q8Config.attention = property(lambda self: self.runtime().attention, doc="Deprecated: see :meth:`Q8Config.runtime`.")
