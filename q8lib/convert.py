"""Converting an LTX-Video transformer to Q8: in place (:func:`quantize_`), as a state dict
(:func:`convert_state_dict`) or as an empty meta-device skeleton (:func:`build_q8_skeleton`).

Both diffusers transformers convert with the same recipe: ``LTXVideoTransformer3DModel`` (LTX-Video 0.9.x: 2B,
13B) and ``LTX2VideoTransformer3DModel`` (LTX-2, experimental: what differs is in :mod:`q8lib.ltx2`).

The flow follows gpt-fast: build the quantized state dict, swap modules to Q8 skeletons, then
``load_state_dict(assign=True)``. Saving and loading live in :mod:`q8lib.checkpoint`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import check_attention_mode, set_q8_attention
from .config import KEEP_HIGH_PRECISION, KEEP_HIGH_PRECISION_LTX2, Q8Config, Q8Runtime
from .errors import Q8CheckpointError, SettingsError, UnsupportedModelError
from .fused import install_if_fast
from .lora import check_no_adapters
from .ltx2 import LTX2_CLASS_NAME, class_name_for_config, transformer_classes
from .modules import Q8GELU, Q8Linear, Q8RMSNorm, quantize_weight

__all__ = [
    "check_ltx_transformer",
    "quantize_",
    "quantize_block_",
    "convert_state_dict",
    "is_quantized",
    "build_q8_skeleton",
    "activate_q8",
    "check_q8_config",
    "convertible_modules",
    "modules_to_convert",
    "check_state_keys",
    "ltx_classes",
    "transformer_class",
    "config_for",
]

FilterFn = Callable[[nn.Module, str], bool]


def ltx_classes():
    """diffusers' ``(LTXVideoTransformer3DModel, GELU, RMSNorm)``, imported on first use (diffusers loads slowly)."""
    from diffusers import LTXVideoTransformer3DModel
    from diffusers.models.activations import GELU
    from diffusers.models.normalization import RMSNorm

    return LTXVideoTransformer3DModel, GELU, RMSNorm


def check_ltx_transformer(model: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` (a ``TypeError``) unless ``model`` is a diffusers
    ``LTXVideoTransformer3DModel`` or ``LTX2VideoTransformer3DModel``."""
    if not isinstance(model, tuple(transformer_classes().values())):
        raise UnsupportedModelError("q8lib converts diffusers LTXVideoTransformer3DModel (LTX-Video 0.9.x) and "
                                    "LTX2VideoTransformer3DModel (LTX-2, experimental) only, got "
                                    f"{type(model).__name__}; pass pipe.transformer of an LTXPipeline or LTX2Pipeline")


def transformer_class(transformer_config: dict) -> type:
    """The diffusers class a transformer ``config.json`` dict describes (:func:`q8lib.ltx2.class_name_for_config`)."""
    return transformer_classes()[class_name_for_config(transformer_config)]


def config_for(config: Q8Config, class_name: str) -> Q8Config:
    """``config`` with the model's own keep list: a default list (:data:`~q8lib.config.KEEP_HIGH_PRECISION`)
    becomes :data:`~q8lib.config.KEEP_HIGH_PRECISION_LTX2` for LTX-2; anything else is returned as is."""
    if class_name != LTX2_CLASS_NAME or tuple(config.keep_high_precision) != KEEP_HIGH_PRECISION:
        return config
    return Q8Config(weight_dtype=config.weight_dtype, hadamard_block=config.hadamard_block,
                    keep_high_precision=KEEP_HIGH_PRECISION_LTX2)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Q8Linear) for m in model.modules())


def _kept(name: str, config: Q8Config) -> bool:
    parts = name.split(".")
    return any(k in parts or name == k or name.startswith(k + ".") for k in config.keep_high_precision)


def convertible_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(dotted name, module, kind)`` of every module of the transformer blocks q8lib can make Q8:
    kind ``"linear"`` (``nn.Linear``), ``"gelu"`` (diffusers' GELU with its ``proj``) or ``"norm"`` (RMSNorm)."""
    _, GELU, RMSNorm = ltx_classes()
    out = []
    for name, m in model.named_modules():
        if not name.startswith("transformer_blocks."):
            continue
        if isinstance(m, GELU):
            out.append((name, m, "gelu"))
        elif isinstance(m, nn.Linear) and not name.endswith(".proj"):  # GELU's proj goes with its GELU
            out.append((name, m, "linear"))
        elif isinstance(m, RMSNorm):
            out.append((name, m, "norm"))
    return out


def modules_to_convert(model: nn.Module, config: Q8Config) -> list[tuple[str, nn.Module, str]]:
    """``(dotted name, module, kind)`` for every module inside the blocks that becomes Q8 under ``config``."""
    return [t for t in convertible_modules(model) if not _kept(t[0], config)]


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _skeleton(m: nn.Module, kind: str, config: Q8Config, backend: str) -> nn.Module:
    """An empty Q8 module (meta device) with the right shapes for ``m``."""
    q = dict(qdtype=config.qdtype, hadamard_block=config.hadamard_block, backend=backend, device="meta")
    if kind == "linear":
        return Q8Linear(m.in_features, m.out_features, m.bias is not None, **q)
    if kind == "gelu":
        if m.approximate != "tanh":
            raise Q8CheckpointError(f"only tanh-GELU feed-forwards are supported, got approximate={m.approximate!r}")
        return Q8GELU(Q8Linear(m.proj.in_features, m.proj.out_features, m.proj.bias is not None,
                               activation="gelu_tanh", **q))
    return Q8RMSNorm.from_norm(m, backend=backend)


def _skeleton_named(name, m, kind, config, backend):
    try:
        return _skeleton(m, kind, config, backend)
    except Q8CheckpointError:
        raise
    except ValueError as e:
        raise SettingsError(f"cannot convert {name} ({type(m).__name__}) with hadamard_block={config.hadamard_block}: "
                            f"{e}") from None


def check_q8_config(transformer_config: dict, config: Q8Config, runtime: Q8Runtime | None = None) -> None:
    """Raise :class:`SettingsError` if ``config`` cannot convert a transformer with ``transformer_config``
    (a rotation block that does not divide a width, a head size FP8 attention cannot rotate).

    Builds the model on the meta device only: no memory, no weights, milliseconds.
    """
    build_q8_skeleton(transformer_config, config, runtime)


def _quantize_linear_state(prefix: str, linear: nn.Linear, config: Q8Config, out: dict) -> None:
    w_q, w_s = quantize_weight(linear.weight.detach(), config.qdtype, config.hadamard_block)
    out[prefix + "weight"], out[prefix + "scales"] = w_q, w_s
    if linear.bias is not None:
        out[prefix + "bias"] = linear.bias.detach().float()


@torch.no_grad()
def quantize_(model: nn.Module, config: Q8Config | None = None, filter_fn: FilterFn | None = None, *,
              backend: str | None = None, attention: str | None = None, progress: bool = True) -> nn.Module:
    """Quantize a loaded LTX transformer in place (block by block, so the extra memory is one block).

    Linears and the GELU projection of every block become :class:`Q8Linear` (8-bit, Hadamard-rotated),
    the blocks' RMSNorms (``norm1``/``norm2``; LTX-2: each stream's) become :class:`Q8RMSNorm`, and the
    attention processors are swapped for :class:`~q8lib.attention.Q8AttnProcessor` (LTX-2:
    :class:`~q8lib.attention.Q8LTX2AttnProcessor`) unless ``attention="keep"``. Returns ``model``.
    LTX-2 (``LTX2VideoTransformer3DModel``) is experimental: see :mod:`q8lib.ltx2`.
    A transformer holding LoRA adapter layers is refused: fuse and unload them first
    (``pipe.fuse_lora(); pipe.unload_lora_weights()``), or quantize the plain one and load the LoRA onto
    it with :func:`q8lib.load_lora`.

    Args:
        config: the weight format (:class:`Q8Config`); modules in ``config.keep_high_precision`` stay.
        filter_fn: like torchao's ``quantize_(model, config, filter_fn)``: ``filter_fn(module, fqn)``
            picks, among the convertible modules (:func:`convertible_modules`), those to convert.
            The modules it leaves out are added to the model's recorded ``keep_high_precision``, so
            :func:`~q8lib.checkpoint.save_q8` / ``load_q8`` round-trip the same layout.
        backend, attention: runtime choices (:class:`~q8lib.config.Q8Runtime`); default: those an
            earlier-style ``Q8Config(backend=, attention=)`` carries, else ``"auto"`` and ``"fp8"``.
    """
    check_ltx_transformer(model)
    if is_quantized(model):
        raise SettingsError("model is already quantized; quantize_ takes the unquantized transformer")
    check_no_adapters(model, "quantize_")
    config = config or Q8Config()
    if not isinstance(config, Q8Config):
        raise SettingsError(f"config must be a q8lib.Q8Config, got {type(config).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise SettingsError(f"filter_fn must be a function (module, fqn) -> bool, got {type(filter_fn).__name__}")
    runtime = config.runtime(backend, attention)
    config = config_for(config, type(model).__name__)
    check_attention_mode(model, runtime.attention)  # before any weight changes
    targets = modules_to_convert(model, config)
    if filter_fn is not None:
        left_out = tuple(name for name, m, _ in targets if not filter_fn(m, name))
        config = Q8Config(weight_dtype=config.weight_dtype, hadamard_block=config.hadamard_block,
                          keep_high_precision=config.keep_high_precision + left_out)
        targets = modules_to_convert(model, config)
    _convert_(model, targets, config, runtime.backend, progress)
    activate_q8(model, config, runtime)
    return model


def _convert_(model: nn.Module, targets, config: Q8Config, backend: str, progress: bool = False) -> None:
    """Swap each ``(name, module, kind)`` of ``targets`` for its filled Q8 module, one at a time (the extra
    memory is one module). Every meta-device skeleton is built first: an unsupported shape fails before
    anything changes."""
    from tqdm.auto import tqdm

    targets = [(name, m, kind, _skeleton_named(name, m, kind, config, backend)) for name, m, kind in targets]
    for name, m, kind, new in tqdm(targets, desc="q8lib quantize", unit="module", disable=not progress, leave=False):
        state = {}
        if kind == "linear":
            _quantize_linear_state("", m, config, state)
        elif kind == "gelu":
            _quantize_linear_state("proj.", m.proj, config, state)
        else:
            state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        new.load_state_dict(state, strict=True, assign=True)
        _set_submodule(model, name, new)


@torch.no_grad()
def quantize_block_(model: nn.Module, index: int, config: Q8Config, backend: str = "auto") -> None:
    """Quantize transformer block ``index`` of ``model`` in place, as :func:`quantize_` does for every block
    (same modules, same weights bit for bit), for a model built or loaded one block at a time: the other blocks
    may still be on the meta device or not yet filled, so the peak is the Q8 blocks done plus one unquantized
    block. Installs nothing at run time: once every block is done, call :func:`activate_q8` (attention
    processors, fused blocks). ``config``'s default keep list stands for the model's own, as in :func:`quantize_`;
    checks such as the attention mode are the caller's (:func:`check_q8_config` beforehand)."""
    check_ltx_transformer(model)
    if not 0 <= index < len(model.transformer_blocks):
        raise SettingsError(f"block index {index} out of range: the model has {len(model.transformer_blocks)} blocks")
    config = config_for(config, type(model).__name__)
    prefix = f"transformer_blocks.{index}."
    _convert_(model, [t for t in modules_to_convert(model, config) if t[0].startswith(prefix)], config, backend)


def build_q8_skeleton(transformer_config: dict, config: Q8Config | None = None,
                      runtime: Q8Runtime | None = None) -> nn.Module:
    """An LTX transformer on the meta device (no memory) whose blocks already hold empty Q8 modules.

    The class comes from ``transformer_config`` (its ``_class_name``, else its keys: :func:`transformer_class`).

    Fill it with ``load_state_dict(state, assign=True)`` (or assign tensors yourself), then call
    :func:`activate_q8` to install the Q8 attention and, where a fast backend runs, the fused blocks.
    ``runtime`` (default: ``config.runtime()``) gives the modules' backend and, with
    ``attention="fp8"``, checks that every head size can be rotated.
    """
    config = config or Q8Config()
    runtime = runtime or config.runtime()
    cls = transformer_class(transformer_config)
    config = config_for(config, cls.__name__)
    with torch.device("meta"):
        model = cls.from_config(_plain_config(transformer_config))
        check_attention_mode(model, runtime.attention)
        for name, m, kind in modules_to_convert(model, config):
            _set_submodule(model, name, _skeleton_named(name, m, kind, config, runtime.backend))
    return model


def activate_q8(model: nn.Module, config: Q8Config, runtime: Q8Runtime | None = None) -> None:
    """Record ``config`` (``model._q8_config``) and ``runtime`` (``model._q8_runtime``, default
    ``config.runtime()``) on a filled Q8 model and install its runtime pieces (attention, fused blocks).

    ``config`` also goes into the model's diffusers config as ``quantization_config``
    (:meth:`~q8lib.config.Q8Config.to_quantization_config`), as diffusers' own quantizers do: the
    ``config.json`` that ``save_pretrained`` writes then names q8lib, and a plain diffusers
    ``from_pretrained`` of that folder refuses it with a message naming the q8lib call to use."""
    runtime = runtime or config.runtime()
    config = config_for(config, type(model).__name__)
    model._q8_config, model._q8_runtime = config, runtime
    if hasattr(model, "register_to_config"):
        model.register_to_config(quantization_config=config.to_quantization_config())
    if runtime.attention != "keep":
        set_q8_attention(model, runtime.attention, backend=runtime.backend)
    # fused block forward (LTX-1's blocks only) and fused FFNs (the other blocks) where the triton backend runs
    install_if_fast(model, runtime)


@torch.no_grad()
def convert_state_dict(state_dict: dict, transformer_config: dict, config: Q8Config | None = None) -> dict:
    """Convert a bf16/fp32 LTX transformer state dict to the q8lib layout (no model weights materialised twice).

    ``transformer_config`` is the model's ``config.json`` dict. Raises :class:`Q8CheckpointError`
    naming missing or unexpected keys.
    """
    cls = transformer_class(transformer_config)
    config = config_for(config or Q8Config(), cls.__name__)
    with torch.device("meta"):
        model = cls.from_config(_plain_config(transformer_config))
    check_state_keys(set(model.state_dict()), set(state_dict), "bf16 LTX state dict")
    out = dict(state_dict)
    for name, m, kind in modules_to_convert(model, config):
        if kind == "norm":
            continue
        lin_name = name + ".proj" if kind == "gelu" else name
        w = state_dict[lin_name + ".weight"]
        b = state_dict.get(lin_name + ".bias")
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=False)
        if b is not None:
            lin.bias = nn.Parameter(b, requires_grad=False)
        _quantize_linear_state(lin_name + ".", lin, config, out)
    return out


def _plain_config(cfg: dict) -> dict:
    """The architecture part of a transformer config: no private keys, no ``quantization_config``."""
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "quantization_config"}


def check_state_keys(expected: set, found: set, what: str) -> None:
    """Raise :class:`Q8CheckpointError` naming missing and unexpected keys of ``what``."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        msg = [f"{what} does not match the LTX transformer layout."]
        if missing:
            msg.append(f"Missing {len(missing)} keys: {show(missing)}.")
        if unexpected:
            msg.append(f"Unexpected {len(unexpected)} keys: {show(unexpected)}.")
        raise Q8CheckpointError(" ".join(msg))


