"""LoRA on an 8-bit transformer: one Q8 checkpoint, many LoRAs (needs peft: ``pip install 'q8lib[lora]'``).

Two ways, both with diffusers' LoRA files (the keys ``pipe.load_lora_weights`` takes for LTX-Video):

* fuse, then quantize: plain diffusers on the bf16 model (``pipe.load_lora_weights(...)``,
  ``pipe.fuse_lora()``, ``pipe.unload_lora_weights()``), then :func:`q8lib.quantize_`. The LoRA is part of
  the 8-bit weights, the fast fused path runs unchanged. :func:`q8lib.quantize_` refuses a transformer that
  still holds peft layers (:func:`check_no_adapters`).
* adapters on the Q8 transformer: :func:`load_lora` instead of ``pipe.load_lora_weights``; everything after
  it is diffusers' API (``pipe.set_adapters``, ``disable_lora``/``enable_lora``, ``delete_adapters``,
  ``unload_lora_weights``, ``fuse_lora``/``unfuse_lora``). The adapters run in the model's float dtype on
  each linear's float input, beside the 8-bit GEMM; ``fuse_lora`` on the 8-bit weights dequantizes, adds and
  requantizes them (lossy, with a :class:`~q8lib.errors.Q8Warning`; ``unfuse_lora`` rounds again).

Why a q8lib loader and not ``pipe.load_lora_weights`` itself: peft picks the LoRA layer for a module from a
fixed list of dispatchers (``torch.nn.Linear`` and a few quantization libraries' layers); its one extension
point is ``LoraConfig._register_custom_module``, and diffusers builds the ``LoraConfig`` inside
``load_lora_adapter`` with no way to pass one in, so on a Q8 transformer peft raises "Target module
Q8Linear(...) is not supported". Making :class:`~q8lib.modules.Q8Linear` an ``nn.Linear`` subclass would
get past the dispatch but give it peft's ``lora.Linear``, whose merge adds to ``weight`` in place (int8 or
float8 codes: silently wrong) and which casts the adapter to the base weight's dtype (float8). So
:func:`load_lora` does what ``load_lora_adapter`` does (diffusers' LTX key conversion, the same
``LoraConfig``, peft's ``inject_adapter_in_model`` and ``set_peft_model_state_dict``) with q8lib's layer
(:class:`q8lib.lora_layer.Q8LoraLinear`) registered for ``Q8Linear``. Nothing in diffusers or peft is patched.

With fused blocks installed (:mod:`q8lib.fused`, the fast GPU path, which quantizes once per block and
hands 8-bit rows to the linears), a block whose linears carry an active adapter runs diffusers' unfused
forward, where every linear, and so the adapter, gets its float input; blocks without one, and all blocks
once the adapters are disabled, merged or unloaded, keep the fused forward. ``torch.compile`` and
:func:`q8lib.enable_cuda_graphs` see the module graph of the moment: after loading, switching or removing
adapters, compile again (or recapture the graphs).
"""
from __future__ import annotations

import sys
import warnings

from torch import nn

from .errors import MissingPackageError, Q8Warning, SettingsError
from .modules import Q8Linear

__all__ = ["load_lora", "adapter_layers", "check_no_adapters"]


def adapter_layers(model: nn.Module) -> list[str]:
    """Names of the peft adapter layers (``BaseTunerLayer``) in ``model``; empty when peft was never imported."""
    tuners = sys.modules.get("peft.tuners.tuners_utils")
    layer = getattr(tuners, "BaseTunerLayer", None)
    return [] if layer is None else [n for n, m in model.named_modules() if isinstance(m, layer)]


def check_no_adapters(model: nn.Module, action: str) -> None:
    """Raise :class:`SettingsError` if ``model`` holds LoRA (peft) layers, naming what to do before ``action``."""
    names = adapter_layers(model)
    if names:
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
        raise SettingsError(
            f"{action}: the transformer holds LoRA adapter layers ({shown}). Fuse them into the weights and remove "
            "the adapter layers first: pipe.fuse_lora(); pipe.unload_lora_weights() (or just "
            "pipe.unload_lora_weights() to drop them); to keep adapters switchable on the 8-bit model, quantize "
            "the plain transformer and load the LoRA with q8lib.load_lora")


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingPackageError("LoRA needs the optional 'peft' package: pip install 'q8lib[lora]'") from None
    return peft


def _state_dict(pipeline_cls, lora, prefix: str, kwargs: dict):
    """diffusers' LTX LoRA reading and key conversion (``lora_state_dict``), then its prefix filter."""
    lora = dict(lora) if isinstance(lora, dict) else lora
    state, metadata = pipeline_cls.lora_state_dict(lora, return_lora_metadata=True, **kwargs)
    if not all("lora" in k for k in state):
        raise SettingsError("not a LoRA state dict: every key of a LoRA file names its lora_A/lora_B weights")
    if prefix:
        state = {k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")}
        if metadata is not None:
            metadata = {k.removeprefix(prefix + "."): v for k, v in metadata.items() if k.startswith(prefix + ".")}
    if not state:
        raise SettingsError(f"the LoRA has no weights for the transformer (no keys under {prefix + '.'!r})")
    return state, metadata or None


def load_lora(target, lora, adapter_name: str | None = None, *, prefix: str = "transformer", dtype=None,
              low_cpu_mem_usage: bool = False, **kwargs) -> str:
    """Load a LoRA in diffusers' format onto a q8lib-quantized LTX transformer, as peft adapter layers.

    Args:
        target: an ``LTXPipeline`` (or another LTX pipeline) or its transformer.
        lora: what ``pipe.load_lora_weights`` takes: a ``.safetensors`` file, a folder or hub id (with
            ``weight_name=``), or a state dict with keys such as
            ``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight`` (also the original LTX-Video
            format, ``diffusion_model.*``, which diffusers converts).
        adapter_name: as in diffusers (default ``default_<n>``); pass it to ``set_adapters`` and ``delete_adapters``.
        prefix: the state dict's transformer prefix (diffusers' ``prefix``).
        dtype: the adapter weights' dtype (default: the transformer's float dtype, bf16 for a bf16 model).
        kwargs: passed to diffusers' ``lora_state_dict`` (``weight_name``, ``local_files_only``, ...).

    Returns the adapter name. Works on an unquantized transformer too (then it is peft's own layers, as
    ``pipe.load_lora_weights`` gives). Load LoRAs before enabling model offloading, as with diffusers.
    """
    peft = _peft()
    from diffusers import LTXPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft, get_adapter_name, get_peft_kwargs

    from .lora_layer import Q8LoraLinear

    if kwargs.pop("hotswap", False):
        raise SettingsError("load_lora does not hotswap; load under a new adapter_name and delete_adapters the old one")
    transformer = getattr(target, "transformer", target)
    pipeline_cls = type(target) if hasattr(type(target), "lora_state_dict") else LTXPipeline
    state, metadata = _state_dict(pipeline_cls, lora, prefix, kwargs)
    adapter_name = adapter_name or get_adapter_name(transformer)
    if adapter_name in getattr(transformer, "peft_config", {}):
        raise SettingsError(f"adapter name {adapter_name!r} is already in use; pick another or delete_adapters it")
    if "lora_A" not in next(iter(state)):
        state = convert_unet_state_dict_to_peft(state)
    # the LoraConfig diffusers' load_lora_adapter builds (diffusers.utils.peft_utils._create_lora_config)
    if metadata is None:
        rank = {f"^{k}": v.shape[1] for k, v in state.items() if "lora_B" in k and v.ndim > 1}
        metadata = get_peft_kwargs(rank, None, state, model_state_dict=transformer.state_dict(),
                                   adapter_name=adapter_name)
    config = peft.LoraConfig(**metadata)
    config._register_custom_module({Q8Linear: Q8LoraLinear})
    try:
        peft.inject_adapter_in_model(config, transformer, adapter_name=adapter_name, state_dict=state,
                                     low_cpu_mem_usage=low_cpu_mem_usage)
        result = peft.set_peft_model_state_dict(transformer, state, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
    except Exception:
        for m in transformer.modules():  # leave no half-loaded adapter behind, as diffusers does
            if hasattr(m, "delete_adapter") and adapter_name in getattr(m, "lora_A", {}):
                m.delete_adapter(adapter_name)
        getattr(transformer, "peft_config", {}).pop(adapter_name, None)
        raise
    transformer._hf_peft_config_loaded = True
    dtype = dtype or transformer.dtype
    for m in transformer.modules():
        if isinstance(m, Q8LoraLinear) and adapter_name in m.lora_A:
            m.lora_A[adapter_name].to(dtype)
            m.lora_B[adapter_name].to(dtype)
    unexpected = [k for k in getattr(result, "unexpected_keys", None) or [] if ".lora_" in k]
    if unexpected:
        warnings.warn(f"LoRA weights that match no module of the transformer were ignored: {', '.join(unexpected[:5])}",
                      Q8Warning, stacklevel=2)
    return adapter_name
